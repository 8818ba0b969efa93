package deviceca_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aftercare/aftercare/server/internal/deviceca"
)

func csrPEM(t testing.TB, cn string) []byte {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func TestOpenCreatesTheCAOnceWithAPrivateKey(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	ca, err := deviceca.Open(dir, "", "", now)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, deviceca.KeyFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("CA key mode = %v, %v; want 0600", st, err)
	}
	again, err := deviceca.Open(dir, "", "", now.Add(time.Hour))
	if err != nil || !bytes.Equal(again.CertificatePEM(), ca.CertificatePEM()) {
		t.Fatalf("second Open made another CA: %v", err)
	}
	// Given files: both or neither, and the key must match the certificate.
	other := t.TempDir()
	if _, err := deviceca.Open(other, "", "", now); err != nil {
		t.Fatal(err)
	}
	tests := []struct{ name, cert, key string }{
		{"cert-without-key", filepath.Join(dir, deviceca.CertFile), ""},
		{"key-of-another-ca", filepath.Join(dir, deviceca.CertFile), filepath.Join(other, deviceca.KeyFile)},
		{"missing-files", filepath.Join(dir, "nope.pem"), filepath.Join(dir, "nope.key")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := deviceca.Open(t.TempDir(), tt.cert, tt.key, now); err == nil {
				t.Fatal("Open() accepted a bad CA configuration")
			}
		})
	}
	if c, err := deviceca.Open(t.TempDir(), filepath.Join(dir, deviceca.CertFile), filepath.Join(dir, deviceca.KeyFile), now); err != nil || !bytes.Equal(c.CertificatePEM(), ca.CertificatePEM()) {
		t.Fatalf("Open(configured files) = %v", err)
	}
}

func TestIssuedDeviceCertificate(t *testing.T) {
	ca, err := deviceca.Open(t.TempDir(), "", "", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	csr, err := deviceca.ParseCSR(csrPEM(t, "dev-1"), "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	iss, err := ca.IssueDevice(csr, "dev-1", time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(iss.DER)
	if cert.Subject.CommonName != "dev-1" || cert.IsCA || len(cert.ExtKeyUsage) != 1 || cert.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth {
		t.Fatalf("certificate = CN %q, CA %v, EKU %v", cert.Subject.CommonName, cert.IsCA, cert.ExtKeyUsage)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("certificate does not verify: %v", err)
	}
	if _, err := ca.IssueDevice(csr, deviceca.ServerCN, time.Now(), time.Hour); err == nil {
		t.Fatal("IssueDevice issued a device certificate with the server's CN")
	}
}

func TestParseCSRRefusals(t *testing.T) {
	good := csrPEM(t, "dev-1")
	tests := []struct {
		name string
		b    []byte
		id   string
		want string
	}{
		{"wrong-cn", good, "dev-2", "is not the device ID"},
		{"trailing-data", append(append([]byte(nil), good...), "x"...), "dev-1", "trailing"},
		{"oversized", append(good, bytes.Repeat([]byte("\n"), deviceca.MaxCSRBytes)...), "dev-1", "more than"},
		{"empty", nil, "dev-1", "not a PEM"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := deviceca.ParseCSR(tt.b, tt.id)
			if !errors.Is(err, deviceca.ErrInvalidCSR) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("ParseCSR() = %v, want ErrInvalidCSR mentioning %q", err, tt.want)
			}
		})
	}
}

// FuzzParseCSR feeds arbitrary bytes to the CSR parser: it must never
// panic, and what it accepts names the device and holds a P-256 key.
func FuzzParseCSR(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/csr/*")
	for _, p := range seeds {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		csr, err := deviceca.ParseCSR(b, "dev-fuzz")
		if err != nil {
			return
		}
		if csr.Subject.CommonName != "dev-fuzz" || csr.CheckSignature() != nil {
			t.Fatalf("ParseCSR accepted a CSR for %q", csr.Subject.CommonName)
		}
		if k, ok := csr.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
			t.Fatalf("ParseCSR accepted a %T key", csr.PublicKey)
		}
	})
}
