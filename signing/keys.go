// Package signing holds Aftercare's keys and what is signed with them: key
// generation and loading (every key is a sigstore signature.Signer), the TUF
// release repository's offline roles (root and targets), and the release
// engineer's signing workflow.
//
// Who holds which key:
//
//	root       offline, the manufacturer; signs the list of trusted keys
//	targets    offline, release engineering; signs which images exist
//	snapshot   online, the fleet server; signs the repository's consistency
//	timestamp  online, the fleet server; signs freshness, re-signed daily
//
// A device trusts an image only when the targets role signed its length and
// hashes, so a server that holds only the online keys can withhold or delay
// a release but never make a device install one of its own.
package signing

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
)

// Algorithm names a key type.
type Algorithm string

// The key types Aftercare generates and accepts.
const (
	Ed25519   Algorithm = "ed25519"
	ECDSAP256 Algorithm = "ecdsa-p256"
)

// maxKeyFileBytes bounds a key file; a PEM key is a few hundred bytes.
const maxKeyFileBytes = 64 << 10 // 64 KiB

// ErrPassphraseRequired is returned when a key file is encrypted and no
// passphrase was supplied.
var ErrPassphraseRequired = errors.New("signing: key is encrypted and needs a passphrase")

// GenerateKey makes a new private key of the given algorithm and returns it
// PEM-encoded, encrypted with passphrase unless passphrase is nil, together
// with its PEM-encoded public key.
func GenerateKey(alg Algorithm, passphrase []byte) (privPEM, pubPEM []byte, err error) {
	_, privPEM, pubPEM, err = generateKey(alg, passphrase)
	return privPEM, pubPEM, err
}

// generateKey is GenerateKey that also returns the key itself, so a caller
// that signs with it at once need not decrypt what it just encrypted.
func generateKey(alg Algorithm, passphrase []byte) (priv crypto.Signer, privPEM, pubPEM []byte, err error) {
	switch alg {
	case Ed25519:
		_, priv, err = ed25519.GenerateKey(rand.Reader)
	case ECDSAP256:
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	default:
		return nil, nil, nil, fmt.Errorf("key algorithm %q is not one of %s, %s", alg, Ed25519, ECDSAP256)
	}
	if err != nil {
		return nil, nil, nil, fmt.Errorf("generate %s key: %w", alg, err)
	}
	privPEM, pubPEM, err = encodeKey(priv, passphrase)
	return priv, privPEM, pubPEM, err
}

// encodeKey PEM-encodes a private key, encrypted unless passphrase is nil,
// and its public key.
func encodeKey(priv crypto.Signer, passphrase []byte) (privPEM, pubPEM []byte, err error) {
	pubPEM, err = cryptoutils.MarshalPublicKeyToPEM(priv.Public())
	if err != nil {
		return nil, nil, err
	}
	if passphrase == nil {
		privPEM, err = cryptoutils.MarshalPrivateKeyToPEM(priv)
		return privPEM, pubPEM, err
	}
	der, err := cryptoutils.MarshalPrivateKeyToEncryptedDER(priv, cryptoutils.StaticPasswordFunc(passphrase))
	if err != nil {
		return nil, nil, fmt.Errorf("encrypt key: %w", err)
	}
	return cryptoutils.PEMEncode(cryptoutils.EncryptedSigstorePrivateKeyPEMType, der), pubPEM, nil
}

// A PassFunc returns the passphrase of an encrypted key. It is called only
// for encrypted keys. Implementations read it from a prompt or an
// environment variable, never from a command-line flag.
type PassFunc func() ([]byte, error)

// LoadSigner loads the signing key file named by ref: a file path,
// optionally written "file://path". Encrypted key files are decrypted with
// the passphrase from pass; pass may be nil when no key is encrypted. Keys
// in a KMS are loaded by package signing/kms, which programs that sign
// (the aftercare CLI and server) use.
func LoadSigner(_ context.Context, ref string, pass PassFunc) (signature.Signer, error) {
	path, ok := strings.CutPrefix(ref, "file://")
	if !ok && strings.Contains(ref, "://") {
		return nil, fmt.Errorf("key reference %q: this program loads only key files (a path or file://path); KMS keys are loaded by the aftercare CLI and server", ref)
	}
	b, err := readBounded(path)
	if err != nil {
		return nil, fmt.Errorf("load key: %w", err)
	}
	var pf cryptoutils.PassFunc
	if pass != nil {
		pf = func(bool) ([]byte, error) { return pass() }
	}
	if strings.Contains(string(b), "ENCRYPTED") && pass == nil {
		return nil, fmt.Errorf("load key %s: %w", path, ErrPassphraseRequired)
	}
	priv, err := cryptoutils.UnmarshalPEMToPrivateKey(b, pf)
	if err != nil {
		return nil, fmt.Errorf("load key %s: %w (a wrong passphrase also shows as a decryption failure)", path, err)
	}
	return SignerFromKey(priv)
}

// SignerFromKey wraps a private key in a sigstore signer with the hash its
// TUF scheme requires.
func SignerFromKey(priv crypto.PrivateKey) (signature.Signer, error) {
	switch k := priv.(type) {
	case ed25519.PrivateKey:
		return signature.LoadSigner(k, crypto.Hash(0))
	case *ecdsa.PrivateKey:
		if k.Curve != elliptic.P256() {
			return nil, fmt.Errorf("ecdsa key on curve %s is not supported; use P-256", k.Curve.Params().Name)
		}
		return signature.LoadSigner(k, crypto.SHA256)
	}
	return nil, fmt.Errorf("private key type %T is not supported; use ed25519 or ecdsa P-256", priv)
}

// PassphraseFromEnv returns a PassFunc reading the named environment
// variable, failing when it is unset or empty.
func PassphraseFromEnv(getenv func(string) string, name string) PassFunc {
	return func() ([]byte, error) {
		v := getenv(name)
		if v == "" {
			return nil, fmt.Errorf("%w: set %s", ErrPassphraseRequired, name)
		}
		return []byte(v), nil
	}
}

func readBounded(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxKeyFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(b) > maxKeyFileBytes {
		return nil, fmt.Errorf("%s is larger than %d bytes; it is not a key file", path, maxKeyFileBytes)
	}
	return b, nil
}
