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
	"sync/atomic"
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

// Credentials are the device's key, certificate and device CA, loaded from
// the state directory. The certificate a TLS handshake presents is read at
// each handshake, so a renewal takes effect on the next connection. It is
// safe for concurrent use.
type Credentials struct {
	dir      string
	deviceID string
	ca       *x509.CertPool
	current  atomic.Pointer[tls.Certificate]
}

// LoadCredentials reads device.pem and device-ca.pem from stateDir.
func LoadCredentials(stateDir, deviceID string) (*Credentials, error) {
	pair, err := loadPair(filepath.Join(stateDir, credsFile))
	if err != nil {
		return nil, err
	}
	if pair.Leaf.Subject.CommonName != deviceID {
		return nil, fmt.Errorf("device certificate names %q, not this device (%q)", pair.Leaf.Subject.CommonName, deviceID)
	}
	caPEM, err := os.ReadFile(filepath.Join(stateDir, caFile))
	if err != nil {
		return nil, fmt.Errorf("read device CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%s holds no PEM certificate", filepath.Join(stateDir, caFile))
	}
	c := &Credentials{dir: stateDir, deviceID: deviceID, ca: pool}
	c.current.Store(pair)
	return c, nil
}

func loadPair(path string) (*tls.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read device key and certificate: %w", err)
	}
	pair, err := tls.X509KeyPair(b, b)
	if err != nil {
		return nil, fmt.Errorf("device key and certificate %s: %w", path, err)
	}
	return &pair, nil
}

// Leaf returns the current certificate.
func (c *Credentials) Leaf() *x509.Certificate { return c.current.Load().Leaf }

func (c *Credentials) clientCert(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return c.current.Load(), nil
}

// MQTTTLS is the TLS configuration of the broker connection: the device's
// certificate, and the device CA as the only root, which signs the
// embedded broker's certificate. roots replaces it when not nil (an
// external broker with a certificate from another CA).
func (c *Credentials) MQTTTLS(roots *x509.CertPool) *tls.Config {
	if roots == nil {
		roots = c.ca
	}
	return &tls.Config{RootCAs: roots, GetClientCertificate: c.clientCert, MinVersion: tls.VersionTLS12}
}

// HTTPTLS is the TLS configuration of the API client: the device's
// certificate, presented when the server asks, and roots (nil: the
// system's) to verify the server.
func (c *Credentials) HTTPTLS(roots *x509.CertPool) *tls.Config {
	return &tls.Config{RootCAs: roots, GetClientCertificate: c.clientCert, MinVersion: tls.VersionTLS12}
}

// RenewDue reports whether the certificate is in the last third of its
// life at now.
func (c *Credentials) RenewDue(now time.Time) bool {
	leaf := c.Leaf()
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	return !now.Before(leaf.NotBefore.Add(life * 2 / 3))
}

// Renew gets a new certificate for a new key over HTTPS, authenticated by
// the current certificate, and switches to it once it works:
//
//  1. the new key and certificate are written to device-next.pem (temp
//     file, fsync, rename); device.pem is untouched;
//  2. the new pair is tried: GET /api/v1/device with it must answer 200;
//  3. device-next.pem is renamed over device.pem, and later handshakes
//     present the new certificate.
//
// A crash at any step leaves device.pem with a working pair. A
// device-next.pem left from an earlier attempt is tried first, so a
// certificate the server already issued is not wasted. httpc must present
// these credentials (HTTPTLS); rootsHTTP verifies the server (nil: the
// system's roots).
func (c *Credentials) Renew(ctx context.Context, httpc *http.Client, serverURL string, rootsHTTP *x509.CertPool, now time.Time) error {
	next := filepath.Join(c.dir, nextCredsFile)
	if pair, err := loadPair(next); err == nil && pair.Leaf.Subject.CommonName == c.deviceID && pair.Leaf.NotAfter.After(now) {
		if err := c.tryAndSwitch(ctx, pair, serverURL, rootsHTTP); err == nil {
			return nil
		}
	}
	key, csr, err := newKeyAndCSR(c.deviceID)
	if err != nil {
		return err
	}
	var rr protocol.RenewResponse
	if err := postJSON(ctx, httpc, serverURL+"/api/v1/device/certificate", protocol.RenewRequest{CSR: string(csr)}, &rr); err != nil {
		return fmt.Errorf("renew certificate: %w", err)
	}
	caPEM, err := os.ReadFile(filepath.Join(c.dir, caFile))
	if err != nil {
		return fmt.Errorf("renew certificate: read device CA: %w", err)
	}
	ca, err := parseCA(caPEM)
	if err != nil {
		return fmt.Errorf("renew certificate: %w", err)
	}
	leaf, err := checkIssued([]byte(rr.Certificate), key, c.deviceID, ca, now)
	if err != nil {
		return fmt.Errorf("renew certificate: %w", err)
	}
	b, err := encodePair(key, leaf)
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(next, b, 0o600); err != nil {
		return fmt.Errorf("renew certificate: save new key: %w", err)
	}
	pair, err := loadPair(next)
	if err != nil {
		return err
	}
	return c.tryAndSwitch(ctx, pair, serverURL, rootsHTTP)
}

// tryAndSwitch proves pair works with the server, then makes it current.
func (c *Credentials) tryAndSwitch(ctx context.Context, pair *tls.Certificate, serverURL string, roots *x509.CertPool) error {
	probe := NewHTTPClientTLS(&tls.Config{RootCAs: roots, Certificates: []tls.Certificate{*pair}, MinVersion: tls.VersionTLS12})
	defer probe.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, enrollTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, serverURL+"/api/v1/device", nil)
	if err != nil {
		return err
	}
	res, err := probe.Do(req)
	if err != nil {
		return fmt.Errorf("try renewed certificate: %w", err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("try renewed certificate: server answered %s; keeping the current one", res.Status)
	}
	if err := os.Rename(filepath.Join(c.dir, nextCredsFile), filepath.Join(c.dir, credsFile)); err != nil {
		return fmt.Errorf("switch to renewed certificate: %w", err)
	}
	if err := atomicfile.SyncDir(c.dir); err != nil {
		return fmt.Errorf("switch to renewed certificate: %w", err)
	}
	c.current.Store(pair)
	return nil
}
