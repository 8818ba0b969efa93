// Package kms loads signing keys that live in a key management service,
// through sigstore's KMS providers, so a private key never has to sit in a
// file. It is a separate package so that programs which only verify (the
// device agent) link none of the cloud SDKs.
//
// A key reference is one of:
//
//	path/to/key, file://path/to/key     an encrypted or plain PEM key file
//	awskms://[ENDPOINT]/KEY-ID-OR-ARN   AWS KMS (credentials from the AWS SDK's usual chain)
//	gcpkms://projects/P/locations/L/keyRings/R/cryptoKeys/K[/cryptoKeyVersions/V]
//	                                    Google Cloud KMS (Application Default Credentials)
//	azurekms://VAULT.vault.azure.net/KEY  Azure Key Vault (azidentity's default credential chain)
//	hashivault://KEY                    HashiCorp Vault transit engine (VAULT_ADDR, VAULT_TOKEN)
//
// KMS keys must be ECDSA P-256 (ecdsa-sha2-nistp256 in TUF): the one key
// type every provider offers. Credentials come from each provider's own
// environment, never from Aftercare's configuration or flags.
package kms

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"fmt"
	"strings"

	"github.com/sigstore/sigstore/pkg/signature"
	sigkms "github.com/sigstore/sigstore/pkg/signature/kms"
	"github.com/sigstore/sigstore/pkg/signature/options"

	// The providers register their URI schemes with sigkms.
	_ "github.com/sigstore/sigstore/pkg/signature/kms/aws"
	_ "github.com/sigstore/sigstore/pkg/signature/kms/azure"
	_ "github.com/sigstore/sigstore/pkg/signature/kms/gcp"
	_ "github.com/sigstore/sigstore/pkg/signature/kms/hashivault"

	"github.com/aftercare/aftercare/signing"
)

// IsKMS reports whether ref names a key in a registered KMS provider rather
// than a file.
func IsKMS(ref string) bool {
	for _, prefix := range sigkms.SupportedProviders() {
		if strings.HasPrefix(ref, prefix) {
			return true
		}
	}
	return false
}

// LoadSigner loads the signing key named by ref: a KMS key when ref has a
// KMS scheme, otherwise a key file (see signing.LoadSigner, which uses
// pass for encrypted files).
func LoadSigner(ctx context.Context, ref string, pass signing.PassFunc) (signature.Signer, error) {
	if !IsKMS(ref) {
		return signing.LoadSigner(ctx, ref, pass)
	}
	sv, err := sigkms.Get(ctx, ref, crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("load KMS key %s: %w", ref, err)
	}
	pub, err := sv.PublicKey(options.WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("load KMS key %s: read its public key: %w", ref, err)
	}
	if k, ok := pub.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
		return nil, fmt.Errorf("KMS key %s is a %T; Aftercare signs with ECDSA P-256 KMS keys", ref, pub)
	}
	return sv, nil
}
