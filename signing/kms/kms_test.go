package kms_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	// sigstore's in-memory KMS provider, "fakekms://", stands in for a
	// cloud KMS: the same provider interface, no network.
	_ "github.com/sigstore/sigstore/pkg/signature/kms/fake"

	"github.com/aftercare/aftercare/signing"
	"github.com/aftercare/aftercare/signing/kms"
)

func TestKMSSignerSignsTUFMetadata(t *testing.T) {
	s, err := kms.LoadSigner(context.Background(), "fakekms://release-key", nil)
	if err != nil {
		t.Fatalf("LoadSigner(fakekms) = %v", err)
	}
	key, err := signing.TUFKey(s)
	if err != nil || key.Scheme != metadata.KeySchemeECDSA_SHA2_P256 {
		t.Fatalf("TUFKey(kms) = %+v, %v; want an ecdsa-sha2-nistp256 key", key, err)
	}
	root := metadata.Root()
	root.Signed.AddKey(key, metadata.ROOT)
	if _, err := root.Sign(s); err != nil {
		t.Fatal(err)
	}
	if err := root.VerifyDelegate(metadata.ROOT, root); err != nil {
		t.Fatalf("metadata signed through the KMS signer does not verify: %v", err)
	}
}

func TestKMSSchemesAreRouted(t *testing.T) {
	for _, ref := range []string{"awskms:///alias/x", "gcpkms://projects/p/locations/l/keyRings/r/cryptoKeys/k", "azurekms://v.vault.azure.net/k", "hashivault://k", "fakekms://k"} {
		if !kms.IsKMS(ref) {
			t.Errorf("IsKMS(%q) = false", ref)
		}
	}
	for _, ref := range []string{"keys/targets.key", "file:///keys/targets.key", "pkcs11:token=x"} {
		if kms.IsKMS(ref) {
			t.Errorf("IsKMS(%q) = true", ref)
		}
	}
}

func TestHashiVaultUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	t.Setenv("VAULT_ADDR", "http://"+addr)
	t.Setenv("VAULT_TOKEN", "test-token-not-a-secret")
	_, err = kms.LoadSigner(context.Background(), "hashivault://aftercare-release", nil)
	if err == nil || !strings.Contains(err.Error(), "hashivault://aftercare-release") {
		t.Fatalf("LoadSigner(hashivault, no vault) = %v, want an error naming the key", err)
	}
}

func TestFilesStillLoad(t *testing.T) {
	priv, _, err := signing.GenerateKey(signing.ECDSAP256, nil)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "k.key")
	os.WriteFile(p, priv, 0o600)
	if _, err := kms.LoadSigner(context.Background(), p, nil); err != nil {
		t.Fatalf("LoadSigner(file) = %v", err)
	}
}
