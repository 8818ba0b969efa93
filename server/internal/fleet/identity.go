package fleet

import (
	"context"
	"crypto/x509"
	"fmt"
	"strings"
	"time"

	"github.com/aftercare/aftercare/firmware"
	"github.com/aftercare/aftercare/internal/atomicfile"
	"github.com/aftercare/aftercare/protocol"
	"github.com/aftercare/aftercare/server/internal/deviceca"
	"github.com/aftercare/aftercare/server/internal/problem"
	"github.com/aftercare/aftercare/server/internal/store"
)

// DefaultCertValidity is how long a device certificate is valid unless
// configured otherwise.
const DefaultCertValidity = 90 * 24 * time.Hour

// crlValidity is how long a written CRL is valid; the server rewrites it
// daily (RefreshCRL), so a broker never holds an expired one, which
// Mosquitto would take as a reason to refuse every client.
const crlValidity = 7 * 24 * time.Hour

// maxRevokeReasonLen bounds the reason given for a revocation.
const maxRevokeReasonLen = 512

// A Cutoff ends a device's live connections when it is revoked, e.g. the
// embedded broker.
type Cutoff interface {
	Disconnect(deviceID string)
}

// SetCutoff sets what Revoke disconnects; nil disconnects nothing (an
// external broker reads the CRL instead).
func (s *Service) SetCutoff(c Cutoff) {
	s.mu.Lock()
	s.cutoff = c
	s.mu.Unlock()
}

// CA returns the device CA.
func (s *Service) CA() *deviceca.CA { return s.opts.CA }

// Enroll turns a one-time token and a certificate signing request into an
// enrolled device and its certificate. Every check of the request and the
// CSR runs before the token is touched, so a refused request leaves the
// token usable.
func (s *Service) Enroll(ctx context.Context, req protocol.EnrollRequest) (protocol.EnrollResponse, error) {
	var problems []string
	if req.Token == "" {
		problems = append(problems, "token is required")
	}
	idErr := protocol.CheckDeviceID(req.DeviceID)
	if idErr != nil {
		problems = append(problems, idErr.Error())
	}
	if req.Model == "" || len(req.Model) > 64 || !firmware.ValidName(req.Model) {
		problems = append(problems, fmt.Sprintf("model %q must be 1-64 characters of a-z, 0-9, '.', '_', '-'", req.Model))
	}
	if req.HardwareRevision != "" && !firmware.ValidName(req.HardwareRevision) {
		problems = append(problems, fmt.Sprintf("hardware_revision %q must be characters of a-z, 0-9, '.', '_', '-'", req.HardwareRevision))
	}
	if !firmware.ValidVersion(req.InstalledVersion) {
		problems = append(problems, fmt.Sprintf("installed_version %q is not a semantic version such as 1.0.0", req.InstalledVersion))
	}
	if len(req.Serial) > 128 {
		problems = append(problems, "serial must be at most 128 characters")
	}
	var csr *x509.CertificateRequest
	if idErr == nil {
		var err error
		if csr, err = deviceca.ParseCSR([]byte(req.CSR), req.DeviceID); err != nil {
			problems = append(problems, "csr: "+err.Error())
		}
	}
	if err := problem.Invalid(problems...); err != nil {
		s.opts.Log.Warn("enrollment refused", "device_id", req.DeviceID, "err", err)
		return protocol.EnrollResponse{}, err
	}
	now := s.opts.Now()
	issued, err := s.opts.CA.IssueDevice(csr, req.DeviceID, now, s.opts.CertValidity)
	if err != nil {
		return protocol.EnrollResponse{}, err
	}
	d := store.Device{
		ID: req.DeviceID, Serial: req.Serial, Model: req.Model,
		HardwareRevision: req.HardwareRevision, InstalledVersion: req.InstalledVersion,
	}
	d, err = s.opts.Store.EnrollCertified(ctx, HashSecret(req.Token), now, d, certRow(issued, d.ID, now))
	if err != nil {
		return protocol.EnrollResponse{}, err
	}
	s.opts.Log.Info("device enrolled", "device_id", d.ID, "site_id", d.SiteID, "model", d.Model, "cert_serial", issued.Serial, "not_after", issued.NotAfter)
	s.mu.Lock()
	broker := s.deviceBroker
	s.mu.Unlock()
	return protocol.EnrollResponse{
		DeviceID: d.ID, Certificate: string(issued.PEM), CA: string(s.opts.CA.CertificatePEM()), SiteID: d.SiteID,
		BrokerURL: broker, TopicPrefix: s.opts.TopicPrefix,
	}, nil
}

func certRow(issued deviceca.Issued, deviceID string, now time.Time) store.DeviceCert {
	return store.DeviceCert{Serial: issued.Serial, DeviceID: deviceID, NotBefore: issued.NotBefore, NotAfter: issued.NotAfter, IssuedAt: now}
}

// AuthenticateCert returns the device a verified client certificate
// belongs to: its CN names an enrolled device, the certificate is one the
// CA issued to that device, and the device is not revoked. Otherwise it
// fails with problem.ErrUnauthorized. The caller has verified the chain.
func (s *Service) AuthenticateCert(ctx context.Context, cert *x509.Certificate) (store.Device, error) {
	if cert == nil {
		return store.Device{}, fmt.Errorf("no device certificate: %w", problem.ErrUnauthorized)
	}
	id := cert.Subject.CommonName
	if !protocol.ValidID(id) {
		return store.Device{}, fmt.Errorf("certificate CN %q is not a device ID: %w", id, problem.ErrUnauthorized)
	}
	return s.opts.Store.CertifiedDevice(ctx, id, deviceca.SerialOf(cert))
}

// DeviceCertValid reports whether a verified client certificate may
// connect as deviceID. The embedded broker calls it for every device
// connection.
func (s *Service) DeviceCertValid(ctx context.Context, deviceID string, cert *x509.Certificate) bool {
	d, err := s.AuthenticateCert(ctx, cert)
	if err != nil {
		s.opts.Log.Info("device certificate refused", "device_id", deviceID, "err", err)
		return false
	}
	return d.ID == deviceID
}

// RenewCertificate signs a new certificate for an authenticated device
// from a CSR for a new key with the device ID as CN. The old certificate
// stays valid until it expires, so the device keeps it until the new one
// works.
func (s *Service) RenewCertificate(ctx context.Context, d store.Device, csrPEM string) (protocol.RenewResponse, error) {
	csr, err := deviceca.ParseCSR([]byte(csrPEM), d.ID)
	if err != nil {
		return protocol.RenewResponse{}, problem.Invalid("csr: " + err.Error())
	}
	now := s.opts.Now()
	issued, err := s.opts.CA.IssueDevice(csr, d.ID, now, s.opts.CertValidity)
	if err != nil {
		return protocol.RenewResponse{}, err
	}
	if err := s.opts.Store.AddDeviceCert(ctx, certRow(issued, d.ID, now)); err != nil {
		return protocol.RenewResponse{}, err
	}
	s.opts.Log.Info("device certificate renewed", "device_id", d.ID, "cert_serial", issued.Serial, "not_after", issued.NotAfter)
	return protocol.RenewResponse{Certificate: string(issued.PEM)}, nil
}

// Revoke cuts a device off: it is marked revoked, so the API and the
// embedded broker refuse its certificates; its live broker connection is
// closed; and the CRL is rewritten for an external broker.
func (s *Service) Revoke(ctx context.Context, deviceID, reason string) (store.Device, error) {
	reason = strings.TrimSpace(reason)
	if reason == "" || len(reason) > maxRevokeReasonLen {
		return store.Device{}, problem.Invalid(fmt.Sprintf("reason must be 1-%d characters: say why the device is revoked", maxRevokeReasonLen))
	}
	if _, err := s.opts.Store.Device(ctx, deviceID); err != nil {
		return store.Device{}, err
	}
	d, err := s.opts.Store.RevokeDevice(ctx, deviceID, reason, s.opts.Now())
	if err != nil {
		return store.Device{}, err
	}
	s.opts.Log.Warn("device revoked", "device_id", d.ID, "site_id", d.SiteID, "reason", d.RevokedReason)
	s.mu.Lock()
	cut := s.cutoff
	s.mu.Unlock()
	if cut != nil {
		cut.Disconnect(d.ID)
	}
	if err := s.WriteCRL(ctx); err != nil {
		return d, fmt.Errorf("device %s is revoked, but the CRL for the external broker was not written: %w", d.ID, err)
	}
	return d, nil
}

// WriteCRL writes the CRL of every unexpired certificate of a revoked
// device to Options.CRLPath (temp file, fsync, rename). Mosquitto reads it
// at start and on reload.
func (s *Service) WriteCRL(ctx context.Context) error {
	if s.opts.CRLPath == "" {
		return nil
	}
	now := s.opts.Now()
	revoked, err := s.opts.Store.RevokedCerts(ctx, now)
	if err != nil {
		return fmt.Errorf("list revoked certificates: %w", err)
	}
	entries := make([]deviceca.Revoked, len(revoked))
	for i, r := range revoked {
		entries[i] = deviceca.Revoked{Serial: r.Serial, At: r.RevokedAt}
	}
	s.mu.Lock()
	// The CRL number must grow (RFC 5280 §5.2.3); the clock does, across
	// restarts too.
	n := now.Unix()
	if n <= s.crlNumber {
		n = s.crlNumber + 1
	}
	s.crlNumber = n
	s.mu.Unlock()
	b, err := s.opts.CA.CRL(entries, n, now, now.Add(crlValidity))
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(s.opts.CRLPath, b, 0o644); err != nil {
		return fmt.Errorf("write CRL: %w", err)
	}
	return nil
}
