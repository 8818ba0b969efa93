package agent

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/aftercare/aftercare/internal/atomicfile"
	"github.com/aftercare/aftercare/protocol"
)

// identityFormat is the format of identity.json. Format 1 held a shared
// credential; format 2 devices hold a key and certificate.
const identityFormat = 2

// Files of the identity in the state directory. The key and certificate
// share one file so that a renewal replaces both with one rename.
const (
	identityFile  = "identity.json"
	credsFile     = "device.pem"      // key and certificate, mode 0600
	nextCredsFile = "device-next.pem" // a renewed pair not yet proven to work
	caFile        = "device-ca.pem"   // the device CA: verifies the broker
)

// Identity is the device's enrolled identity, kept in the state directory.
// It holds no secret: the key is in device.pem (mode 0600).
type Identity struct {
	Format      int    `json:"format"`
	DeviceID    string `json:"device_id"`
	SiteID      string `json:"site_id"`
	BrokerURL   string `json:"broker_url"`
	TopicPrefix string `json:"topic_prefix"`
}

// LogValue names the device.
func (id Identity) LogValue() slog.Value { return slog.StringValue("device " + id.DeviceID) }

func identityPath(stateDir string) string { return filepath.Join(stateDir, identityFile) }

// LoadIdentity reads the identity saved in stateDir; ok is false when the
// device has not enrolled yet.
func LoadIdentity(stateDir string) (id Identity, ok bool, err error) {
	b, err := os.ReadFile(identityPath(stateDir))
	if errors.Is(err, os.ErrNotExist) {
		return Identity{}, false, nil
	}
	if err != nil {
		return Identity{}, false, err
	}
	if err := json.Unmarshal(b, &id); err != nil || !protocol.ValidID(id.DeviceID) {
		return Identity{}, false, fmt.Errorf("identity %s is damaged", identityPath(stateDir))
	}
	if id.Format != identityFormat {
		return Identity{}, false, fmt.Errorf("identity %s has format %d; this agent needs %d (a certificate): enroll the device again", identityPath(stateDir), id.Format, identityFormat)
	}
	return id, true, nil
}

// enrollTimeout bounds one enrollment or renewal request.
const enrollTimeout = 30 * time.Second

// maxCertBytes bounds a PEM certificate or CA from the server.
const maxCertBytes = 16 << 10 // 16 KiB

// newDeviceID is a random device ID: 128 bits, hex, which protocol.ValidID
// accepts and no other device will pick.
func newDeviceID() string {
	b := make([]byte, 16)
	rand.Read(b)
	return "dev-" + hex.EncodeToString(b)
}

// newKeyAndCSR makes an ECDSA P-256 key and a CSR for it naming deviceID.
func newKeyAndCSR(deviceID string) (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate device key: %w", err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: deviceID}}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("make CSR: %w", err)
	}
	return key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// Enroll trades a one-time enrollment token for an identity: the device
// makes its key and ID (unless req.DeviceID is set) and sends a CSR; the
// server's device CA signs it. The key, the certificate, the CA and then
// the identity are saved in stateDir; the identity is written last, so a
// crash before leaves the device not enrolled. It refuses to enroll a
// device that already has an identity.
func Enroll(ctx context.Context, httpc *http.Client, serverURL, stateDir string, req protocol.EnrollRequest) (Identity, error) {
	if _, ok, err := LoadIdentity(stateDir); err != nil || ok {
		if err == nil {
			err = fmt.Errorf("already enrolled: %s exists", identityPath(stateDir))
		}
		return Identity{}, err
	}
	if req.DeviceID == "" {
		req.DeviceID = newDeviceID()
	}
	key, csr, err := newKeyAndCSR(req.DeviceID)
	if err != nil {
		return Identity{}, err
	}
	req.CSR = string(csr)
	var er protocol.EnrollResponse
	if err := postJSON(ctx, httpc, serverURL+"/api/v1/enroll", req, &er); err != nil {
		return Identity{}, fmt.Errorf("enroll: %w", err)
	}
	if er.DeviceID != req.DeviceID {
		return Identity{}, fmt.Errorf("enroll: the server answered for device %q, not %q", er.DeviceID, req.DeviceID)
	}
	ca, err := parseCA([]byte(er.CA))
	if err != nil {
		return Identity{}, fmt.Errorf("enroll: %w", err)
	}
	leaf, err := checkIssued([]byte(er.Certificate), key, req.DeviceID, ca, time.Now())
	if err != nil {
		return Identity{}, fmt.Errorf("enroll: %w", err)
	}
	id := Identity{Format: identityFormat, DeviceID: er.DeviceID, SiteID: er.SiteID, BrokerURL: er.BrokerURL, TopicPrefix: er.TopicPrefix}
	if !protocol.ValidTopicPrefix(id.TopicPrefix) {
		return Identity{}, fmt.Errorf("enroll: server gave an invalid topic prefix %q", id.TopicPrefix)
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return Identity{}, err
	}
	pair, err := encodePair(key, leaf)
	if err != nil {
		return Identity{}, err
	}
	if err := atomicfile.WriteFile(filepath.Join(stateDir, credsFile), pair, 0o600); err != nil {
		return Identity{}, fmt.Errorf("save device key: %w", err)
	}
	if err := atomicfile.WriteFile(filepath.Join(stateDir, caFile), []byte(er.CA), 0o644); err != nil {
		return Identity{}, fmt.Errorf("save device CA: %w", err)
	}
	b, err := json.MarshalIndent(id, "", "  ")
	if err != nil {
		return Identity{}, err
	}
	if err := atomicfile.WriteFile(identityPath(stateDir), b, 0o600); err != nil {
		return Identity{}, err
	}
	return id, nil
}

// postJSON posts v and decodes a 201 answer of at most
// protocol.MaxPayloadBytes into out.
func postJSON(ctx context.Context, httpc *http.Client, url string, v, out any) error {
	body, err := json.Marshal(v)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, enrollTimeout)
	defer cancel()
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	hr.Header.Set("Content-Type", "application/json")
	res, err := httpc.Do(hr)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(io.LimitReader(res.Body, protocol.MaxPayloadBytes+1))
	if err != nil {
		return err
	}
	if res.StatusCode != http.StatusCreated {
		return fmt.Errorf("server answered %s: %s", res.Status, strings.TrimSpace(string(b)))
	}
	if len(b) > protocol.MaxPayloadBytes {
		return errors.New("the server's answer is too large")
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("malformed answer from the server: %w", err)
	}
	return nil
}

func parseCA(b []byte) (*x509.Certificate, error) {
	if len(b) > maxCertBytes {
		return nil, errors.New("the device CA certificate is too large")
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("the server sent no PEM device CA certificate")
	}
	ca, err := x509.ParseCertificate(block.Bytes)
	if err != nil || !ca.IsCA {
		return nil, fmt.Errorf("the device CA certificate is not a CA: %v", err)
	}
	return ca, nil
}

// checkIssued parses a certificate the server issued and checks it is for
// this key and device, for client authentication, and chains to ca.
func checkIssued(certPEM []byte, key *ecdsa.PrivateKey, deviceID string, ca *x509.Certificate, now time.Time) (*x509.Certificate, error) {
	if len(certPEM) > maxCertBytes {
		return nil, errors.New("the certificate is too large")
	}
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("the server sent no PEM certificate")
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse certificate: %w", err)
	}
	var problems []error
	if !key.PublicKey.Equal(leaf.PublicKey) {
		problems = append(problems, errors.New("the certificate is not for this device's key"))
	}
	if leaf.Subject.CommonName != deviceID {
		problems = append(problems, fmt.Errorf("the certificate names %q, not this device (%q)", leaf.Subject.CommonName, deviceID))
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		problems = append(problems, fmt.Errorf("the certificate does not verify against the device CA: %w", err))
	}
	if err := errors.Join(problems...); err != nil {
		return nil, err
	}
	return leaf, nil
}

func encodePair(key *ecdsa.PrivateKey, leaf *x509.Certificate) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode device key: %w", err)
	}
	out := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	return append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Raw})...), nil
}
