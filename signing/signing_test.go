package signing_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/aftercare/aftercare/firmware"
	"github.com/aftercare/aftercare/signing"
)

func TestEncryptedKeys(t *testing.T) {
	for _, alg := range []signing.Algorithm{signing.Ed25519, signing.ECDSAP256} {
		t.Run(string(alg), func(t *testing.T) {
			priv, _, err := signing.GenerateKey(alg, []byte("correct horse battery"))
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(t.TempDir(), "k.key")
			os.WriteFile(path, priv, 0o600)
			pass := func(p string) signing.PassFunc { return func() ([]byte, error) { return []byte(p), nil } }
			if _, err := signing.LoadSigner(context.Background(), path, nil); !errors.Is(err, signing.ErrPassphraseRequired) {
				t.Fatalf("LoadSigner(no passphrase) = %v, want ErrPassphraseRequired", err)
			}
			if _, err := signing.LoadSigner(context.Background(), path, pass("wrong")); err == nil {
				t.Fatal("LoadSigner(wrong passphrase) succeeded")
			}
			s, err := signing.LoadSigner(context.Background(), "file://"+path, pass("correct horse battery"))
			if err != nil {
				t.Fatalf("LoadSigner(right passphrase) = %v", err)
			}
			if _, err := signing.TUFKey(s); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestLoadSignerRejects(t *testing.T) {
	dir := t.TempDir()
	big := filepath.Join(dir, "big")
	os.WriteFile(big, make([]byte, 1<<20), 0o600)
	junk := filepath.Join(dir, "junk")
	os.WriteFile(junk, []byte("-----BEGIN NONSENSE-----"), 0o600)
	for _, ref := range []string{big, junk, filepath.Join(dir, "missing"), "awskms:///alias/x"} {
		if _, err := signing.LoadSigner(context.Background(), ref, nil); err == nil {
			t.Errorf("LoadSigner(%s) succeeded", ref)
		}
	}
}

func TestInitAndSignRelease(t *testing.T) {
	dir := t.TempDir()
	res, err := signing.InitRepository(context.Background(), signing.InitOptions{Dir: dir, Passphrase: []byte("long enough passphrase")})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Offline) != 2 || len(res.Devices) != 1 {
		t.Fatalf("InitRepository() = %+v", res)
	}
	for _, p := range res.Offline {
		b, _ := os.ReadFile(p)
		if !strings.Contains(string(b), "ENCRYPTED") {
			t.Errorf("offline key %s is not encrypted", p)
		}
		if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
			t.Errorf("offline key %s has mode %v, want 0600", p, fi.Mode().Perm())
		}
	}
	if _, err := signing.InitRepository(context.Background(), signing.InitOptions{Dir: dir}); err == nil {
		t.Fatal("InitRepository overwrote an existing repository")
	}
	s, err := signing.LoadSigner(context.Background(), filepath.Join(dir, signing.TargetsKeyFile), func() ([]byte, error) { return []byte("long enough passphrase"), nil })
	if err != nil {
		t.Fatal(err)
	}
	cur, _ := os.ReadFile(filepath.Join(dir, signing.TargetsFile))
	h := strings.Repeat("ab", 32)
	m := &firmware.Manifest{Format: 1, Product: "pump", Version: "1.0.0", Models: []string{"x"},
		Image: firmware.Image{Compression: "zstd", Length: 10, SHA256: h, RawLength: 20, RawSHA256: h}}
	signed, err := signing.SignRelease(signing.SignReleaseOptions{Current: cur, Manifest: m, Signer: s})
	if err != nil {
		t.Fatal(err)
	}
	tm, _ := new(metadata.Metadata[metadata.TargetsType]).FromBytes(signed)
	root, _ := new(metadata.Metadata[metadata.RootType]).FromFile(filepath.Join(dir, signing.RootFile))
	if err := root.VerifyDelegate("targets", tm); err != nil || tm.Signed.Version != 2 {
		t.Fatalf("signed targets v%d does not verify against the root: %v", tm.Signed.Version, err)
	}
	// Re-signing the same version with other contents is refused.
	m2 := *m
	m2.Image.Length = 11
	if _, err := signing.SignRelease(signing.SignReleaseOptions{Current: signed, Manifest: &m2, Signer: s}); err == nil {
		t.Fatal("SignRelease accepted a different build under an existing version")
	}
}
