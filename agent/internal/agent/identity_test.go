package agent

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/aftercare/aftercare/protocol"
)

// caServer stands in for the fleet server's device endpoints over real
// TLS: it signs CSRs with a CA made for the test (no key here is a
// secret), checks client certificates on the device routes, and can be
// told to misbehave.
type caServer struct {
	srv    *httptest.Server
	caCert *x509.Certificate
	caKey  *ecdsa.PrivateKey
	caPEM  string
	// otherCert and otherKey are a CA the device does not trust.
	otherCert *x509.Certificate
	otherKey  *ecdsa.PrivateKey

	mu       sync.Mutex
	validity time.Duration                                        // guarded by mu
	tamper   func(csr *x509.CertificateRequest) *x509.Certificate // guarded by mu; nil: honest
	probeOK  bool                                                 // guarded by mu
	issued   int                                                  // guarded by mu
}

func newCAServer(t *testing.T) *caServer {
	t.Helper()
	s := &caServer{validity: 90 * 24 * time.Hour, probeOK: true}
	s.caKey, s.caCert, s.caPEM = newTestCA(t)
	s.otherKey, s.otherCert, _ = newTestCA(t)
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/v1/enroll", func(w http.ResponseWriter, r *http.Request) {
		var req protocol.EnrollRequest
		json.NewDecoder(r.Body).Decode(&req)
		cert, ok := s.sign(req.CSR)
		if !ok {
			http.Error(w, `{"error":"bad csr"}`, http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusCreated)
		json.NewEncoder(w).Encode(protocol.EnrollResponse{DeviceID: req.DeviceID, Certificate: cert, CA: s.caPEM, SiteID: "site-1",
			BrokerURL: "ssl://127.0.0.1:1", TopicPrefix: protocol.DefaultTopicPrefix})
	})
	mux.HandleFunc("POST /api/v1/device/certificate", func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
			http.Error(w, "{}", http.StatusUnauthorized)
			return
		}
		var req protocol.RenewRequest
		json.NewDecoder(r.Body).Decode(&req)
		cert, ok := s.sign(req.CSR)
		if !ok {
			http.Error(w, "{}", http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusCreated)
		json.NewEncoder(w).Encode(protocol.RenewResponse{Certificate: cert})
	})
	mux.HandleFunc("GET /api/v1/device", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		ok := s.probeOK
		s.mu.Unlock()
		if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || !ok {
			http.Error(w, "{}", http.StatusUnauthorized)
			return
		}
		w.Write([]byte(`{}`))
	})
	s.srv = httptest.NewUnstartedServer(mux)
	pool := x509.NewCertPool()
	pool.AddCert(s.caCert)
	s.srv.TLS = &tls.Config{ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: pool}
	s.srv.StartTLS()
	t.Cleanup(s.srv.Close)
	return s
}

func newTestCA(t *testing.T) (*ecdsa.PrivateKey, *x509.Certificate, string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test device CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return key, cert, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

func (s *caServer) sign(csrPEM string) (string, bool) {
	block, _ := pem.Decode([]byte(csrPEM))
	if block == nil {
		return "", false
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil || csr.CheckSignature() != nil {
		return "", false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.issued++
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(int64(s.issued) + 1), Subject: csr.Subject,
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(s.validity),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	pub, signer, parent := csr.PublicKey, any(s.caKey), s.caCert
	if s.tamper != nil {
		if c := s.tamper(csr); c != nil {
			tmpl.Subject = c.Subject
			if c.PublicKey != nil {
				pub = c.PublicKey
			}
			if c.Issuer.CommonName == "other" {
				signer, parent = s.otherKey, s.otherCert
			}
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		return "", false
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})), true
}

func (s *caServer) setProbeOK(ok bool) {
	s.mu.Lock()
	s.probeOK = ok
	s.mu.Unlock()
}

func (s *caServer) issuedCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.issued
}

func (s *caServer) enroll(t *testing.T, dir string) Identity {
	t.Helper()
	id, err := Enroll(context.Background(), s.srv.Client(), s.srv.URL, dir, protocol.EnrollRequest{Token: "tok", Model: "pump-x1", InstalledVersion: "1.0.0"})
	if err != nil {
		t.Fatalf("Enroll() = %v", err)
	}
	return id
}

func TestEnrollMakesItsOwnKeyAndKeepsItPrivate(t *testing.T) {
	s := newCAServer(t)
	dir := filepath.Join(t.TempDir(), "state")
	id := s.enroll(t, dir)
	if err := protocol.CheckDeviceID(id.DeviceID); err != nil {
		t.Fatalf("device ID: %v", err)
	}
	st, err := os.Stat(filepath.Join(dir, credsFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("device.pem mode = %v, %v; want 0600", st, err)
	}
	creds, err := LoadCredentials(dir, id.DeviceID)
	if err != nil {
		t.Fatal(err)
	}
	leaf := creds.Leaf()
	if leaf.Subject.CommonName != id.DeviceID {
		t.Fatalf("certificate CN = %q, want %q", leaf.Subject.CommonName, id.DeviceID)
	}
	if k, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
		t.Fatalf("device key is %T, want ECDSA P-256", leaf.PublicKey)
	}
	if _, err := Enroll(context.Background(), s.srv.Client(), s.srv.URL, dir, protocol.EnrollRequest{Token: "tok2"}); err == nil {
		t.Fatal("a second enrollment of an enrolled device succeeded")
	}
}

func TestEnrollRefusesABadCertificate(t *testing.T) {
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tests := []struct {
		name   string
		tamper func(*x509.CertificateRequest) *x509.Certificate
	}{
		{"certificate-for-another-key", func(*x509.CertificateRequest) *x509.Certificate {
			return &x509.Certificate{PublicKey: &otherKey.PublicKey}
		}},
		{"certificate-for-another-device", func(*x509.CertificateRequest) *x509.Certificate {
			return &x509.Certificate{Subject: pkix.Name{CommonName: "dev-other"}}
		}},
		{"certificate-from-another-ca", func(csr *x509.CertificateRequest) *x509.Certificate {
			return &x509.Certificate{Subject: csr.Subject, Issuer: pkix.Name{CommonName: "other"}}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newCAServer(t)
			s.tamper = tt.tamper
			dir := t.TempDir()
			if _, err := Enroll(context.Background(), s.srv.Client(), s.srv.URL, dir, protocol.EnrollRequest{Token: "tok"}); err == nil {
				t.Fatal("Enroll() accepted a bad certificate")
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Fatalf("a refused enrollment left %d files in the state directory", len(entries))
			}
		})
	}
}

// TestRenewalSwapsOnlyAfterTheNewCertificateWorks renews a certificate in
// the last third of its life. While the server refuses the new one, the
// old pair stays in device.pem, byte for byte; once it works, the pending
// pair is promoted without a second issuance.
func TestRenewalSwapsOnlyAfterTheNewCertificateWorks(t *testing.T) {
	s := newCAServer(t)
	s.validity = 3 * time.Hour
	dir := t.TempDir()
	id := s.enroll(t, dir)
	creds, err := LoadCredentials(dir, id.DeviceID)
	if err != nil {
		t.Fatal(err)
	}
	leaf := creds.Leaf()
	if creds.RenewDue(leaf.NotBefore.Add(time.Hour)) {
		t.Fatal("RenewDue in the first third of the life")
	}
	now := leaf.NotBefore.Add(2*time.Hour + 10*time.Minute)
	if !creds.RenewDue(now) {
		t.Fatal("RenewDue false in the last third of the life")
	}
	pool := x509.NewCertPool()
	pool.AddCert(s.srv.Certificate())
	httpc := NewHTTPClientTLS(creds.HTTPTLS(pool))
	before, _ := os.ReadFile(filepath.Join(dir, credsFile))

	s.setProbeOK(false)
	if err := creds.Renew(context.Background(), httpc, s.srv.URL, pool, time.Now()); err == nil {
		t.Fatal("Renew() succeeded although the new certificate does not work")
	}
	after, _ := os.ReadFile(filepath.Join(dir, credsFile))
	if !bytes.Equal(before, after) || creds.Leaf().SerialNumber.Cmp(leaf.SerialNumber) != 0 {
		t.Fatal("a failed renewal changed device.pem or the certificate in use")
	}
	if _, err := os.Stat(filepath.Join(dir, nextCredsFile)); err != nil {
		t.Fatalf("the issued certificate was not kept for the next try: %v", err)
	}

	s.setProbeOK(true)
	if err := creds.Renew(context.Background(), httpc, s.srv.URL, pool, time.Now()); err != nil {
		t.Fatalf("Renew() = %v", err)
	}
	if n := s.issuedCount(); n != 2 {
		t.Fatalf("certificates issued = %d, want 2 (enrollment, one renewal)", n)
	}
	if creds.Leaf().SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Fatal("the renewed certificate is not in use")
	}
	if _, err := os.Stat(filepath.Join(dir, nextCredsFile)); !os.IsNotExist(err) {
		t.Fatalf("device-next.pem still exists after the swap: %v", err)
	}
	reloaded, err := LoadCredentials(dir, id.DeviceID)
	if err != nil || reloaded.Leaf().SerialNumber.Cmp(creds.Leaf().SerialNumber) != 0 {
		t.Fatalf("after a restart the device would use another certificate: %v", err)
	}
}
