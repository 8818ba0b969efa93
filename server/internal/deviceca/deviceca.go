// Package deviceca is the fleet server's device certificate authority: it
// signs the certificate each device gets at enrollment (and at renewal)
// from the device's own certificate signing request, the certificates the
// embedded broker and the server's own MQTT client present, and the
// certificate revocation list an external broker (Mosquitto's crlfile)
// reads.
//
// Keys and names:
//   - the CA key and certificate are ECDSA P-256, created at first start in
//     the data directory (device-ca.key mode 0600, device-ca.pem), or read
//     from files named in the configuration;
//   - a device certificate's subject CN is the device ID, its only
//     extended key usage client authentication; the device's key never
//     leaves the device;
//   - the server's own MQTT client has the CN ServerCN, which contains a
//     ':' so no device ID can ever equal it (protocol.ValidID refuses it).
//
// A CA is safe for concurrent use: it holds only read-only values.
package deviceca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/aftercare/aftercare/internal/atomicfile"
	"github.com/aftercare/aftercare/protocol"
)

// ServerCN is the subject CN of the fleet server's own MQTT client
// certificate. The ':' keeps it out of the device ID space.
const ServerCN = "aftercare:server"

// MaxCSRBytes bounds a PEM certificate signing request.
const MaxCSRBytes = 4 << 10 // 4 KiB

// Files the CA keeps in the data directory when none are configured.
const (
	KeyFile  = "device-ca.key"
	CertFile = "device-ca.pem"
	CRLFile  = "device-crl.pem"
)

// caValidity is how long a CA made at first start is valid.
const caValidity = 20 * 365 * 24 * time.Hour

// ErrInvalidCSR is wrapped by every refusal of a certificate signing request.
var ErrInvalidCSR = errors.New("deviceca: invalid certificate signing request")

// CA signs device and service certificates.
type CA struct {
	cert    *x509.Certificate
	certPEM []byte
	key     *ecdsa.PrivateKey
}

// Open loads the CA from certFile and keyFile when both are given, or else
// from dataDir, creating it there at first start.
func Open(dataDir, certFile, keyFile string, now time.Time) (*CA, error) {
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("deviceca: device_ca_cert and device_ca_key go together: set both or neither")
	}
	if certFile == "" {
		certFile, keyFile = filepath.Join(dataDir, CertFile), filepath.Join(dataDir, KeyFile)
		if _, err := os.Stat(keyFile); errors.Is(err, os.ErrNotExist) {
			if err := create(certFile, keyFile, now); err != nil {
				return nil, err
			}
		}
	}
	return load(certFile, keyFile)
}

func create(certFile, keyFile string, now time.Time) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("deviceca: generate CA key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          newSerial(),
		Subject:               pkix.Name{CommonName: "Aftercare device CA", Organization: []string{"Aftercare"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		SubjectKeyId:          keyID(&key.PublicKey),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("deviceca: create CA certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("deviceca: encode CA key: %w", err)
	}
	// The key goes first: a crash between the two leaves a key without a
	// certificate, which load reports, never a certificate without its key.
	if err := atomicfile.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return fmt.Errorf("deviceca: write CA key: %w", err)
	}
	if err := atomicfile.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return fmt.Errorf("deviceca: write CA certificate: %w", err)
	}
	return nil
}

func load(certFile, keyFile string) (*CA, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("deviceca: read CA certificate: %w", err)
	}
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("deviceca: %s holds no PEM certificate", certFile)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("deviceca: parse CA certificate %s: %w", certFile, err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("deviceca: read CA key: %w", err)
	}
	key, err := ParseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("deviceca: CA key %s: %w", keyFile, err)
	}
	if !cert.IsCA || !key.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("deviceca: %s is not a CA certificate for the key in %s", certFile, keyFile)
	}
	return &CA{cert: cert, certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), key: key}, nil
}

// ParseKey decodes a PEM ECDSA P-256 private key (PKCS #8 or SEC 1).
func ParseKey(b []byte) (*ecdsa.PrivateKey, error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, errors.New("no PEM private key")
	}
	var key any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("PEM block %q is not a private key", block.Type)
	}
	if err != nil {
		return nil, err
	}
	ec, ok := key.(*ecdsa.PrivateKey)
	if !ok || ec.Curve != elliptic.P256() {
		return nil, errors.New("the key is not ECDSA P-256")
	}
	return ec, nil
}

// Certificate returns the CA certificate.
func (c *CA) Certificate() *x509.Certificate { return c.cert }

// CertificatePEM returns the CA certificate, PEM encoded.
func (c *CA) CertificatePEM() []byte { return append([]byte(nil), c.certPEM...) }

// Pool returns a pool holding only the CA certificate.
func (c *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.cert)
	return p
}

// ParseCSR decodes a PEM certificate signing request and checks it for
// deviceID: at most MaxCSRBytes, a valid self-signature, an ECDSA P-256
// key, and the subject CN equal to deviceID. Every refusal wraps
// ErrInvalidCSR and names the problem.
func ParseCSR(b []byte, deviceID string) (*x509.CertificateRequest, error) {
	if len(b) > MaxCSRBytes {
		return nil, fmt.Errorf("%w: it is %d bytes, more than the %d allowed", ErrInvalidCSR, len(b), MaxCSRBytes)
	}
	block, rest := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		return nil, fmt.Errorf("%w: not a PEM \"CERTIFICATE REQUEST\"", ErrInvalidCSR)
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return nil, fmt.Errorf("%w: trailing data after the PEM block", ErrInvalidCSR)
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidCSR, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: its signature does not verify with its own key (the request was altered or not made with this key): %v", ErrInvalidCSR, err)
	}
	pub, ok := csr.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, fmt.Errorf("%w: the key is %s; devices must use ECDSA P-256", ErrInvalidCSR, keyKind(csr.PublicKey))
	}
	if csr.Subject.CommonName != deviceID {
		return nil, fmt.Errorf("%w: subject CN %q is not the device ID %q", ErrInvalidCSR, csr.Subject.CommonName, deviceID)
	}
	return csr, nil
}

func keyKind(k any) string {
	switch k := k.(type) {
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name
	case nil:
		return "unsupported"
	}
	return fmt.Sprintf("%T", k)
}

// An Issued certificate.
type Issued struct {
	DER       []byte
	PEM       []byte
	Serial    string // hex, lower case
	NotBefore time.Time
	NotAfter  time.Time
}

// IssueDevice signs a client certificate for deviceID with the key of a
// CSR that ParseCSR accepted. Nothing else of the request is copied: no
// extension, no other name.
func (c *CA) IssueDevice(csr *x509.CertificateRequest, deviceID string, now time.Time, validity time.Duration) (Issued, error) {
	if !protocol.ValidID(deviceID) {
		return Issued{}, fmt.Errorf("deviceca: %q is not a device ID", deviceID)
	}
	return c.issue(deviceID, csr.PublicKey, x509.ExtKeyUsageClientAuth, nil, now, validity)
}

// IssueService signs a certificate for one of the server's own parts: the
// server's MQTT client (cn ServerCN, client authentication) or a broker
// (server authentication for hosts, which are DNS names or IP addresses).
func (c *CA) IssueService(cn string, pub crypto.PublicKey, usage x509.ExtKeyUsage, hosts []string, now time.Time, validity time.Duration) (Issued, error) {
	return c.issue(cn, pub, usage, hosts, now, validity)
}

func (c *CA) issue(cn string, pub crypto.PublicKey, usage x509.ExtKeyUsage, hosts []string, now time.Time, validity time.Duration) (Issued, error) {
	notAfter := now.Add(validity)
	if notAfter.After(c.cert.NotAfter) {
		notAfter = c.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: newSerial(),
		Subject:      pkix.Name{CommonName: cn},
		// Device clocks drift; the backdating stays a small part of a
		// short life, so "the last third" stays near the end.
		NotBefore:             now.Add(-min(5*time.Minute, validity/20)),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{usage},
		BasicConstraintsValid: true,
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, pub, c.key)
	if err != nil {
		return Issued{}, fmt.Errorf("deviceca: sign certificate for %q: %w", cn, err)
	}
	return Issued{
		DER: der, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		Serial: tmpl.SerialNumber.Text(16), NotBefore: tmpl.NotBefore, NotAfter: notAfter,
	}, nil
}

// A Revoked certificate, for the CRL.
type Revoked struct {
	Serial string // hex, as in Issued
	At     time.Time
}

// CRL returns a PEM certificate revocation list of revoked, valid from now
// until next. Mosquitto refuses every client once next has passed, so the
// server writes a fresh one well before.
func (c *CA) CRL(revoked []Revoked, number int64, now, next time.Time) ([]byte, error) {
	tmpl := &x509.RevocationList{Number: big.NewInt(number), ThisUpdate: now, NextUpdate: next}
	for _, r := range revoked {
		serial, ok := new(big.Int).SetString(r.Serial, 16)
		if !ok {
			return nil, fmt.Errorf("deviceca: revoked serial %q is not hex", r.Serial)
		}
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, x509.RevocationListEntry{SerialNumber: serial, RevocationTime: r.At})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, c.cert, c.key)
	if err != nil {
		return nil, fmt.Errorf("deviceca: sign CRL: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), nil
}

// SerialOf returns a certificate's serial in the form Issued uses.
func SerialOf(cert *x509.Certificate) string { return cert.SerialNumber.Text(16) }

// newSerial is a random positive 128-bit serial (RFC 5280 §4.1.2.2 allows
// up to 20 octets).
func newSerial() *big.Int {
	b := make([]byte, 16)
	rand.Read(b)
	b[0] &= 0x7f
	b[0] |= 0x01 // never zero, never negative
	return new(big.Int).SetBytes(b)
}

func keyID(pub *ecdsa.PublicKey) []byte {
	b, _ := x509.MarshalPKIXPublicKey(pub)
	sum := sha256.Sum256(b)
	return sum[:20]
}
