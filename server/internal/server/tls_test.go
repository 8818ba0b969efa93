package server

import (
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/aftercare/aftercare/server/internal/config"
	"github.com/aftercare/aftercare/server/internal/deviceca"
)

// TestHTTPSConfigVerifiesDeviceCertificatesWhenOffered serves the API's TLS
// configuration on loopback: a client without a certificate (a person with
// the admin token) gets through to the handler, a device certificate from
// the device CA arrives verified, and one from another CA is refused in
// the handshake.
func TestHTTPSConfigVerifiesDeviceCertificatesWhenOffered(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	ca, err := deviceca.Open(dir, "", "", now)
	if err != nil {
		t.Fatal(err)
	}
	// The HTTPS certificate: here from the same CA for brevity; in
	// production usually from a public or company CA.
	srvCert, err := serviceCert(ca, "api", x509.ExtKeyUsageServerAuth, []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	cfg := config.Config{TLSCertFile: filepath.Join(dir, "api.pem"), TLSKeyFile: filepath.Join(dir, "api.key")}
	writePair(t, cfg.TLSCertFile, cfg.TLSKeyFile, srvCert)
	tc, err := httpsConfig(cfg, ca)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.TLS.VerifiedChains) > 0 {
			w.Write([]byte(r.TLS.VerifiedChains[0][0].Subject.CommonName))
			return
		}
		w.Write([]byte("anonymous"))
	}), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(tls.NewListener(ln, tc))
	t.Cleanup(func() { srv.Close() })

	device, err := serviceCert(ca, "dev-1", x509.ExtKeyUsageClientAuth, nil)
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := deviceca.Open(t.TempDir(), "", "", now)
	if err != nil {
		t.Fatal(err)
	}
	forged, err := serviceCert(stranger, "dev-1", x509.ExtKeyUsageClientAuth, nil)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		certs []tls.Certificate
		want  string // body, or "" for a refused handshake
	}{
		{"no-certificate", nil, "anonymous"},
		{"device-certificate", []tls.Certificate{device}, "dev-1"},
		{"certificate-from-another-ca", []tls.Certificate{forged}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
				RootCAs: ca.Pool(), Certificates: tt.certs, MinVersion: tls.VersionTLS12}}}
			res, err := c.Get("https://" + ln.Addr().String() + "/")
			if tt.want == "" {
				if err == nil {
					res.Body.Close()
					t.Fatal("the handshake with a certificate from another CA succeeded")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			b := make([]byte, 64)
			n, _ := res.Body.Read(b)
			if string(b[:n]) != tt.want {
				t.Fatalf("handler saw %q, want %q", b[:n], tt.want)
			}
		})
	}
}

func writePair(t *testing.T, certPath, keyPath string, c tls.Certificate) {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}), 0o644)
	os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}
