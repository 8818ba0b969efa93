package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/aftercare/aftercare/internal/atomicfile"
	"github.com/aftercare/aftercare/protocol"
)

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
