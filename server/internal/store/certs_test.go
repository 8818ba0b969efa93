package store_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/aftercare/aftercare/server/internal/problem"
	"github.com/aftercare/aftercare/server/internal/store"
	"github.com/aftercare/aftercare/server/internal/store/storetest"
)

func cert(serial, deviceID string, notAfter time.Time) store.DeviceCert {
	return store.DeviceCert{Serial: serial, DeviceID: deviceID, NotBefore: t0, NotAfter: notAfter, IssuedAt: t0}
}

func TestDeviceCertificatesAndRevocation(t *testing.T) {
	storetest.ForEach(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		site := mustSite(t, s, "site-1", "Radiology")
		for _, tok := range []string{"tok-a", "tok-b", "tok-dup"} {
			if err := s.CreateEnrollmentToken(ctx, site.ID, tok, t0, t0.Add(time.Hour)); err != nil {
				t.Fatal(err)
			}
		}
		day := t0.Add(24 * time.Hour)
		if _, err := s.EnrollCertified(ctx, "tok-a", t0, store.Device{ID: "dev-a", Model: "pump-x1", InstalledVersion: "1.0.0"}, cert("a1", "dev-a", day)); err != nil {
			t.Fatalf("EnrollCertified(dev-a) = %v", err)
		}
		if _, err := s.EnrollCertified(ctx, "tok-b", t0, store.Device{ID: "dev-b", Model: "pump-x1", InstalledVersion: "1.0.0"}, cert("b1", "dev-b", day)); err != nil {
			t.Fatal(err)
		}
		// A taken device ID is a conflict and leaves the token unused.
		_, err := s.EnrollCertified(ctx, "tok-dup", t0, store.Device{ID: "dev-a", Model: "pump-x1", InstalledVersion: "1.0.0"}, cert("a9", "dev-a", day))
		if !errors.Is(err, problem.ErrConflict) {
			t.Fatalf("EnrollCertified(taken ID) = %v, want ErrConflict", err)
		}
		if _, err := s.EnrollCertified(ctx, "tok-dup", t0, store.Device{ID: "dev-c", Model: "pump-x1", InstalledVersion: "1.0.0"}, cert("c1", "dev-c", day)); err != nil {
			t.Fatalf("the token refused for a taken ID was spent: %v", err)
		}
		if err := s.AddDeviceCert(ctx, cert("a2", "dev-a", day.Add(time.Hour))); err != nil {
			t.Fatal(err)
		}
		// A certificate of one device does not authenticate another.
		for _, tt := range []struct{ id, serial string }{{"dev-a", "b1"}, {"dev-b", "a1"}, {"dev-a", "zz"}, {"nobody", "a1"}} {
			if _, err := s.CertifiedDevice(ctx, tt.id, tt.serial); !errors.Is(err, problem.ErrUnauthorized) {
				t.Errorf("CertifiedDevice(%s, %s) = %v, want ErrUnauthorized", tt.id, tt.serial, err)
			}
		}
		for _, serial := range []string{"a1", "a2"} {
			if d, err := s.CertifiedDevice(ctx, "dev-a", serial); err != nil || d.ID != "dev-a" {
				t.Fatalf("CertifiedDevice(dev-a, %s) = %v, %v", serial, d.ID, err)
			}
		}
		d, err := s.RevokeDevice(ctx, "dev-a", "stolen", t0.Add(time.Hour))
		if err != nil || d.RevokedAt == nil || !d.RevokedAt.Equal(t0.Add(time.Hour)) || d.RevokedReason != "stolen" {
			t.Fatalf("RevokeDevice = %+v, %v", d, err)
		}
		// A second revocation keeps the first time and reason.
		if d, _ := s.RevokeDevice(ctx, "dev-a", "again", t0.Add(2*time.Hour)); d.RevokedReason != "stolen" {
			t.Fatalf("second RevokeDevice changed the reason to %q", d.RevokedReason)
		}
		if _, err := s.CertifiedDevice(ctx, "dev-a", "a2"); !errors.Is(err, problem.ErrUnauthorized) {
			t.Fatalf("CertifiedDevice(revoked) = %v, want ErrUnauthorized", err)
		}
		if err := s.AddDeviceCert(ctx, cert("a3", "dev-a", day)); !errors.Is(err, problem.ErrUnauthorized) {
			t.Fatalf("AddDeviceCert(revoked) = %v, want ErrUnauthorized", err)
		}
		// The CRL lists the revoked device's certificates until they expire.
		got, err := s.RevokedCerts(ctx, t0.Add(2*time.Hour))
		if err != nil || len(got) != 2 || got[0].Serial != "a1" || got[1].Serial != "a2" {
			t.Fatalf("RevokedCerts = %+v, %v; want a1, a2", got, err)
		}
		if got, _ := s.RevokedCerts(ctx, day.Add(30*time.Minute)); len(got) != 1 || got[0].Serial != "a2" {
			t.Fatalf("RevokedCerts after a1 expired = %+v, want a2", got)
		}
		if certs, _ := s.DeviceCerts(ctx, "dev-a"); len(certs) != 2 {
			t.Fatalf("DeviceCerts(dev-a) = %d, want 2", len(certs))
		}
	})
}
