package signing

import (
	"errors"
	"fmt"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/aftercare/aftercare/firmware"
)

// SignReleaseOptions says how to sign a release into targets metadata.
type SignReleaseOptions struct {
	// Current is the repository's current targets metadata, which the new
	// version extends; required.
	Current []byte
	// Manifest describes the release; its image digests become the signed
	// targets entry.
	Manifest *firmware.Manifest
	// AllowRollback lets devices that run a newer version install this
	// release (see firmware.TargetCustom).
	AllowRollback bool
	Signer        signature.Signer
	Expires       time.Time // expiry of the new targets metadata; default one year from now
}

// SignRelease returns the next version of the targets metadata: Current
// with the release added, its version increased by one, and signed by
// opts.Signer alone. When the release keys have a threshold above one, the
// other holders add their signatures with Approve. It refuses a release
// whose target path is already listed with different contents.
func SignRelease(opts SignReleaseOptions) ([]byte, error) {
	if opts.Manifest == nil {
		return nil, errors.New("sign release: a manifest is required")
	}
	if err := opts.Manifest.Validate(); err != nil {
		return nil, err
	}
	entry, err := TargetEntry(opts.Manifest, opts.AllowRollback)
	if err != nil {
		return nil, err
	}
	return nextTargets(opts.Current, opts.Signer, opts.Expires, func(t *metadata.TargetsType) error {
		if old, ok := t.Targets[entry.Path]; ok && !old.Equal(*entry) {
			return fmt.Errorf("sign release: %s is already released with different contents; give the new build a new version (or use allow-rollback to change its rollback flag)", entry.Path)
		}
		t.Targets[entry.Path] = entry
		return nil
	})
}

// SetRollbackOptions says which released target to flag.
type SetRollbackOptions struct {
	Current       []byte // current targets metadata; required
	Target        string // target path of a release already listed; required
	AllowRollback bool
	Signer        signature.Signer
	Expires       time.Time // default one year from now
}

// SetRollback returns the next version of the targets metadata with the
// rollback flag of an already released target set or cleared: the way to
// let devices go back to an older release. The image's length and hashes
// do not change.
func SetRollback(opts SetRollbackOptions) ([]byte, error) {
	return nextTargets(opts.Current, opts.Signer, opts.Expires, func(t *metadata.TargetsType) error {
		tf, ok := t.Targets[opts.Target]
		if !ok {
			return fmt.Errorf("set rollback: target %q is not in the current targets metadata; it must be released first", opts.Target)
		}
		custom, err := firmware.ParseTargetCustom(tf.Custom)
		if err != nil {
			return fmt.Errorf("set rollback: %s: %w", opts.Target, err)
		}
		if custom.AllowRollback == opts.AllowRollback {
			return fmt.Errorf("set rollback: %s already has allow_rollback=%t", opts.Target, opts.AllowRollback)
		}
		custom.AllowRollback = opts.AllowRollback
		tf.Custom = custom.RawMessage()
		return nil
	})
}

// Resign returns the next version of the targets metadata with the same
// targets and a new expiry, signed by signer: to extend the validity of
// the releases, or to sign them with new release keys after a rotation.
func Resign(current []byte, signer signature.Signer, expires time.Time) ([]byte, error) {
	return nextTargets(current, signer, expires, func(*metadata.TargetsType) error { return nil })
}

// nextTargets parses current, applies change, increments the version, sets
// the expiry, drops every signature and signs with signer.
func nextTargets(current []byte, signer signature.Signer, expires time.Time, change func(*metadata.TargetsType) error) ([]byte, error) {
	if signer == nil {
		return nil, errors.New("sign targets: a signer is required")
	}
	cur, err := new(metadata.Metadata[metadata.TargetsType]).FromBytes(current)
	if err != nil {
		return nil, fmt.Errorf("parse current targets metadata: %w", err)
	}
	if expires.IsZero() {
		expires = time.Now().Add(365 * 24 * time.Hour)
	}
	if err := change(&cur.Signed); err != nil {
		return nil, err
	}
	cur.Signed.Version++
	cur.Signed.Expires = expires.UTC()
	cur.ClearSignatures()
	if _, err := cur.Sign(signer); err != nil {
		return nil, fmt.Errorf("sign targets metadata: %w", err)
	}
	return cur.ToBytes(true)
}

// Approve adds signer's signature to targets metadata another holder
// signed, changing nothing else: a second person's approval of a release.
// It refuses a key that already signed.
func Approve(signed []byte, signer signature.Signer) ([]byte, error) {
	t, err := new(metadata.Metadata[metadata.TargetsType]).FromBytes(signed)
	if err != nil {
		return nil, fmt.Errorf("parse targets metadata: %w", err)
	}
	if err := addSignature(t, signer); err != nil {
		return nil, fmt.Errorf("approve: %w", err)
	}
	return t.ToBytes(true)
}

// TargetEntry is the signed targets entry of a release's image.
func TargetEntry(m *firmware.Manifest, allowRollback bool) (*metadata.TargetFiles, error) {
	digest, err := firmware.DecodeSHA256(m.Image.SHA256)
	if err != nil {
		return nil, err
	}
	tf := metadata.TargetFile()
	tf.Path = m.TargetPath()
	tf.Length = m.Image.Length
	tf.Hashes = metadata.Hashes{"sha256": digest}
	tf.Custom = (&firmware.TargetCustom{Manifest: *m, AllowRollback: allowRollback}).RawMessage()
	return tf, nil
}
