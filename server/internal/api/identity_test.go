package api_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/aftercare/aftercare/server/internal/deviceca"
	"github.com/aftercare/aftercare/server/internal/problem"
	"github.com/aftercare/aftercare/server/internal/store"
)

// newCSR makes a device key and a PEM CSR naming cn, as the agent does.
func newCSR(t *testing.T, cn string) (*ecdsa.PrivateKey, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key, csrFor(t, key, cn)
}

func csrFor(t *testing.T, key crypto.Signer, cn string) string {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

// enrollDevice makes a site token and enrolls deviceID with a fresh key.
func (st *stack) enrollDevice(t *testing.T, deviceID string) tls.Certificate {
	t.Helper()
	token := st.token(t)
	key, csr := newCSR(t, deviceID)
	var out struct {
		Certificate string `json:"certificate"`
		CA          string `json:"ca"`
	}
	if code := st.postJSON(t, "/api/v1/enroll", "", st.enrollBody(token, deviceID, csr), &out); code != 201 {
		t.Fatalf("enroll %s = %d", deviceID, code)
	}
	return pair(t, key, out.Certificate)
}

func (st *stack) token(t *testing.T) string {
	t.Helper()
	ctx := context.Background()
	sites, _ := st.fleet.Sites(ctx)
	siteID := ""
	if len(sites) == 0 {
		s, err := st.fleet.CreateSite(ctx, "Radiology", "St. Mary")
		if err != nil {
			t.Fatal(err)
		}
		siteID = s.ID
	} else {
		siteID = sites[0].ID
	}
	toks, _, err := st.fleet.CreateEnrollmentTokens(ctx, siteID, 1)
	if err != nil {
		t.Fatal(err)
	}
	return toks[0]
}

func (st *stack) enrollBody(token, deviceID, csr string) map[string]string {
	return map[string]string{"token": token, "device_id": deviceID, "csr": csr, "model": "pump-x1", "installed_version": "1.0.0", "serial": "S-" + deviceID}
}

func pair(t *testing.T, key *ecdsa.PrivateKey, certPEM string) tls.Certificate {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.X509KeyPair([]byte(certPEM), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// deviceClient is an HTTPS client presenting cert, trusting the test server.
func (st *stack) deviceClient(cert tls.Certificate) *http.Client {
	tr := st.srv.Client().Transport.(*http.Transport).Clone()
	tr.TLSClientConfig.Certificates = []tls.Certificate{cert}
	return &http.Client{Transport: tr}
}

func (st *stack) deviceCall(t *testing.T, c *http.Client, method, path string, body any, out any) int {
	t.Helper()
	var rd *strings.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = strings.NewReader(string(b))
	} else {
		rd = strings.NewReader("")
	}
	req, _ := http.NewRequest(method, st.srv.URL+path, rd)
	req.Header.Set("Content-Type", "application/json")
	res, err := c.Do(req)
	if err != nil {
		// The TLS listener refused the handshake (a certificate that does
		// not verify): no request reached a handler.
		t.Logf("%s %s: %v", method, path, err)
		return 0
	}
	defer res.Body.Close()
	if out != nil {
		json.NewDecoder(res.Body).Decode(out)
	}
	return res.StatusCode
}

// TestEnrollmentRefusesBadCSRsWithoutSpendingTheToken sends one token with
// a bad request after another; each is refused, nothing is enrolled, and
// the token still enrolls the device at the end.
func TestEnrollmentRefusesBadCSRsWithoutSpendingTheToken(t *testing.T) {
	st := newStack(t)
	token := st.token(t)
	const id = "dev-0001"
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	_, good := newCSR(t, id)
	block, _ := pem.Decode([]byte(good))
	tampered := append([]byte(nil), block.Bytes...)
	tampered[len(tampered)-5] ^= 0x01 // inside the signature
	tests := []struct {
		name, deviceID, csr, want string
	}{
		{"rsa-key", id, csrFor(t, rsaKey, id), "ECDSA P-256"},
		{"p384-key", id, csrFor(t, p384, id), "ECDSA P-256"},
		{"ed25519-key", id, csrFor(t, edKey, id), "ECDSA P-256"},
		{"cn-of-another-device", id, func() string { _, c := newCSR(t, "dev-0002"); return c }(), `subject CN "dev-0002" is not the device ID`},
		{"bad-signature", id, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: tampered})), "signature"},
		{"oversized", id, good + strings.Repeat(" ", deviceca.MaxCSRBytes), "bytes, more than"},
		{"not-pem", id, "hello", "not a PEM"},
		{"certificate-not-csr", id, string(st.ca.CertificatePEM()), "not a PEM"},
		{"wildcard-plus-in-id", "dev+1", func() string { _, c := newCSR(t, "dev+1"); return c }(), "'+', '#' or '/'"},
		{"wildcard-hash-in-id", "dev#", func() string { _, c := newCSR(t, "dev#"); return c }(), "'+', '#' or '/'"},
		{"slash-in-id", "a/b", func() string { _, c := newCSR(t, "a/b"); return c }(), "'+', '#' or '/'"},
		{"server-identity", deviceca.ServerCN, func() string { _, c := newCSR(t, deviceca.ServerCN); return c }(), "device_id"},
		{"no-csr", id, "", "csr"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out struct {
				Problems []string `json:"problems"`
			}
			code := st.postJSON(t, "/api/v1/enroll", "", st.enrollBody(token, tt.deviceID, tt.csr), &out)
			if code != http.StatusBadRequest || !strings.Contains(strings.Join(out.Problems, " "), tt.want) {
				t.Fatalf("enroll = %d %q, want 400 mentioning %q", code, out.Problems, tt.want)
			}
			if d, _ := st.store.Devices(context.Background(), store.DeviceFilter{}); len(d) != 0 {
				t.Fatalf("a refused enrollment added %d devices", len(d))
			}
		})
	}
	if code := st.postJSON(t, "/api/v1/enroll", "", st.enrollBody(token, id, good), nil); code != http.StatusCreated {
		t.Fatalf("enroll with the token after the refusals = %d, want 201", code)
	}
	// The device ID is now taken: a second token cannot claim it.
	_, again := newCSR(t, id)
	if code := st.postJSON(t, "/api/v1/enroll", "", st.enrollBody(st.token(t), id, again), nil); code != http.StatusConflict {
		t.Fatalf("enroll a taken device ID = %d, want 409", code)
	}
}

// TestDeviceRoutesRenewalAndRevocation walks a device certificate's life
// over real TLS: the device routes want it, renewal issues a second one
// (the first still works), and revocation makes both 401 and puts both
// serials in the CRL.
func TestDeviceRoutesRenewalAndRevocation(t *testing.T) {
	st := newStack(t)
	certA := st.enrollDevice(t, "dev-a")
	certB := st.enrollDevice(t, "dev-b")
	a := st.deviceClient(certA)
	var who struct {
		DeviceID string `json:"device_id"`
	}
	if code := st.deviceCall(t, a, "GET", "/api/v1/device", nil, &who); code != 200 || who.DeviceID != "dev-a" {
		t.Fatalf("GET /api/v1/device as A = %d %+v, want 200 dev-a", code, who)
	}
	// A stranger CA's certificate with A's name is refused by the TLS
	// listener's verification: the route sees no verified chain.
	strangerDir := t.TempDir()
	stranger, err := deviceca.Open(strangerDir, "", "", certA.Leaf.NotBefore)
	if err != nil {
		t.Fatal(err)
	}
	skey, scsr := newCSR(t, "dev-a")
	parsed, _ := deviceca.ParseCSR([]byte(scsr), "dev-a")
	forged, _ := stranger.IssueDevice(parsed, "dev-a", certA.Leaf.NotBefore, 3600e9)
	for _, tt := range []struct {
		name   string
		client *http.Client
	}{
		{"no-certificate", st.srv.Client()},
		{"certificate-from-another-ca", st.deviceClient(pair(t, skey, string(forged.PEM)))},
	} {
		if code := st.deviceCall(t, tt.client, "GET", "/api/v1/device", nil, nil); code != http.StatusUnauthorized && code != 0 {
			t.Errorf("%s: GET /api/v1/device = %d, want 401 or a refused handshake", tt.name, code)
		}
	}

	// Renewal: a CSR for A's ID is signed; one for B's ID is refused.
	newKey, csr := newCSR(t, "dev-a")
	var renewed struct {
		Certificate string `json:"certificate"`
	}
	if code := st.deviceCall(t, a, "POST", "/api/v1/device/certificate", map[string]string{"csr": csr}, &renewed); code != 201 {
		t.Fatalf("renew = %d", code)
	}
	_, csrB := newCSR(t, "dev-b")
	if code := st.deviceCall(t, a, "POST", "/api/v1/device/certificate", map[string]string{"csr": csrB}, nil); code != 400 {
		t.Fatalf("renew A with a CSR naming B = %d, want 400", code)
	}
	a2 := st.deviceClient(pair(t, newKey, renewed.Certificate))
	for name, c := range map[string]*http.Client{"old": a, "renewed": a2} {
		if code := st.deviceCall(t, c, "GET", "/api/v1/device", nil, nil); code != 200 {
			t.Fatalf("GET /api/v1/device with the %s certificate = %d, want 200", name, code)
		}
	}

	// Revocation needs a reason and the admin token.
	if code := st.postJSON(t, "/api/v1/devices/dev-a/revoke", "", map[string]string{"reason": "stolen"}, nil); code != 401 {
		t.Fatalf("revoke without the admin token = %d, want 401", code)
	}
	if code := st.postJSON(t, "/api/v1/devices/dev-a/revoke", adminToken, map[string]string{"reason": " "}, nil); code != 400 {
		t.Fatalf("revoke without a reason = %d, want 400", code)
	}
	var revoked store.Device
	if code := st.postJSON(t, "/api/v1/devices/dev-a/revoke", adminToken, map[string]string{"reason": "stolen from ward 3"}, &revoked); code != 200 ||
		revoked.RevokedAt == nil || revoked.RevokedReason != "stolen from ward 3" {
		t.Fatalf("revoke = %d %+v", code, revoked)
	}
	for name, c := range map[string]*http.Client{"old": a, "renewed": a2} {
		if code := st.deviceCall(t, c, "GET", "/api/v1/device", nil, nil); code != http.StatusUnauthorized {
			t.Errorf("GET /api/v1/device with A's %s certificate after revocation = %d, want 401", name, code)
		}
	}
	_, csr = newCSR(t, "dev-a")
	if code := st.deviceCall(t, a2, "POST", "/api/v1/device/certificate", map[string]string{"csr": csr}, nil); code != http.StatusUnauthorized {
		t.Errorf("renew after revocation = %d, want 401", code)
	}
	if code := st.deviceCall(t, st.deviceClient(certB), "GET", "/api/v1/device", nil, nil); code != 200 {
		t.Errorf("device B after A's revocation = %d, want 200", code)
	}
	if _, err := st.fleet.AuthenticateCert(context.Background(), certA.Leaf); !errors.Is(err, problem.ErrUnauthorized) {
		t.Errorf("AuthenticateCert(revoked A) = %v, want ErrUnauthorized", err)
	}

	// The CRL for Mosquitto lists both of A's certificates, not B's.
	b, err := os.ReadFile(st.crlPath)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	crl, err := x509.ParseRevocationList(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if err := crl.CheckSignatureFrom(st.ca.Certificate()); err != nil {
		t.Fatalf("CRL signature: %v", err)
	}
	got := map[string]bool{}
	for _, e := range crl.RevokedCertificateEntries {
		got[e.SerialNumber.Text(16)] = true
	}
	a2Leaf := a2.Transport.(*http.Transport).TLSClientConfig.Certificates[0].Leaf
	if len(got) != 2 || !got[deviceca.SerialOf(certA.Leaf)] || !got[deviceca.SerialOf(a2Leaf)] || got[deviceca.SerialOf(certB.Leaf)] {
		t.Fatalf("CRL serials = %v, want exactly A's two certificates", got)
	}
}
