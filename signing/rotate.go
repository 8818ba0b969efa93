package signing

import (
	"crypto"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// A NewKey is a public key joining a role, with its holder.
type NewKey struct {
	Holder string
	Public crypto.PublicKey
}

// RotateOptions describes the next root: which roles change keys.
type RotateOptions struct {
	Current []byte // the current root metadata, signed; required
	// Roles whose keys change, e.g. ["targets"], or ["targets",
	// "snapshot", "timestamp"] to replace the rollout repository's online
	// key. Empty re-signs the root unchanged with a new expiry.
	Roles []string
	// Remove names holders, or key IDs (at least 8 hex digits of the
	// start), whose keys leave Roles: a retired person or a compromised key.
	Remove []string
	Add    []NewKey // keys that join Roles
	// Threshold is the new threshold of Roles; 0 keeps each role's own.
	Threshold int
	Expires   time.Time // default one year from now
	// Signers sign the new root at once; TUF requires a threshold of the
	// old root keys and a threshold of the new ones. Holders elsewhere
	// add theirs with SignRoot.
	Signers []signature.Signer
}

// RotateRoot returns the next version of a root with the keys of
// opts.Roles changed. Keys no role uses any more are dropped from the root,
// which revokes them: a device that has seen the new root no longer trusts
// anything they sign.
func RotateRoot(opts RotateOptions) ([]byte, error) {
	root, err := new(metadata.Metadata[metadata.RootType]).FromBytes(opts.Current)
	if err != nil {
		return nil, fmt.Errorf("parse current root: %w", err)
	}
	if err := root.VerifyDelegate(metadata.ROOT, root); err != nil {
		return nil, fmt.Errorf("the current root is not signed by its own root keys to threshold: %w", err)
	}
	var problems []string
	holders := Holders(root)
	for _, role := range opts.Roles {
		if _, ok := root.Signed.Roles[role]; !ok {
			problems = append(problems, fmt.Sprintf("role %q is not in the root (roles: root, targets, snapshot, timestamp)", role))
		}
	}
	if len(problems) == 0 {
		problems = append(problems, rotateRoles(root, holders, opts)...)
	}
	if len(problems) > 0 {
		return nil, &InvalidError{Problems: problems}
	}
	dropUnusedHolders(root)
	if opts.Expires.IsZero() {
		opts.Expires = time.Now().Add(365 * 24 * time.Hour)
	}
	root.Signed.Version++
	root.Signed.Expires = opts.Expires.UTC()
	root.ClearSignatures()
	for _, s := range opts.Signers {
		if err := addSignature(root, s); err != nil {
			return nil, err
		}
	}
	return root.ToBytes(true)
}

// rotateRoles applies the removals, additions and threshold to each role
// and returns every problem found.
func rotateRoles(root *metadata.Metadata[metadata.RootType], holders map[string]string, opts RotateOptions) []string {
	var problems []string
	for _, r := range opts.Remove {
		found := false
		for _, role := range opts.Roles {
			for _, id := range slices.Clone(root.Signed.Roles[role].KeyIDs) {
				if holders[id] == r || (len(r) >= 8 && strings.HasPrefix(id, r)) {
					if err := root.Signed.RevokeKey(id, role); err != nil {
						problems = append(problems, fmt.Sprintf("remove %s from %s: %v", r, role, err))
					}
					found = true
				}
			}
		}
		if !found {
			problems = append(problems, fmt.Sprintf("remove %q: no key of that holder or ID in roles %s", r, strings.Join(opts.Roles, ", ")))
		}
	}
	for _, k := range opts.Add {
		if !ValidHolder(k.Holder) {
			problems = append(problems, fmt.Sprintf("new key holder %q must be 1-64 characters of a-z, 0-9, '.', '_', '-'", k.Holder))
			continue
		}
		key, err := metadata.KeyFromPublicKey(k.Public)
		if err != nil {
			problems = append(problems, fmt.Sprintf("key of %s: %v", k.Holder, err))
			continue
		}
		id, err := key.ID()
		if err != nil {
			problems = append(problems, err.Error())
			continue
		}
		for _, role := range opts.Roles {
			if slices.Contains(root.Signed.Roles[role].KeyIDs, id) {
				problems = append(problems, fmt.Sprintf("key of %s is already a %s key", k.Holder, role))
				continue
			}
			if err := root.Signed.AddKey(key, role); err != nil {
				problems = append(problems, fmt.Sprintf("add key of %s to %s: %v", k.Holder, role, err))
			}
		}
		setHolder(root, id, k.Holder)
	}
	for _, role := range opts.Roles {
		r := root.Signed.Roles[role]
		if opts.Threshold > 0 {
			r.Threshold = opts.Threshold
		}
		if len(r.KeyIDs) < r.Threshold {
			problems = append(problems, fmt.Sprintf("role %s would have %d keys for a threshold of %d", role, len(r.KeyIDs), r.Threshold))
		}
	}
	return problems
}

// SignRoot adds signer's signature to a new root, changing nothing else.
func SignRoot(next []byte, signer signature.Signer) ([]byte, error) {
	root, err := new(metadata.Metadata[metadata.RootType]).FromBytes(next)
	if err != nil {
		return nil, fmt.Errorf("parse root: %w", err)
	}
	if err := addSignature(root, signer); err != nil {
		return nil, fmt.Errorf("sign root: %w", err)
	}
	return root.ToBytes(true)
}

// RootStatus says who has signed a new root: TUF accepts it only when a
// threshold of the previous root's root keys and a threshold of its own
// root keys signed it.
func RootStatus(previous, next []byte) (byPrevious, byNext SignatureStatus, err error) {
	prev, err := new(metadata.Metadata[metadata.RootType]).FromBytes(previous)
	if err != nil {
		return byPrevious, byNext, fmt.Errorf("parse previous root: %w", err)
	}
	nxt, err := new(metadata.Metadata[metadata.RootType]).FromBytes(next)
	if err != nil {
		return byPrevious, byNext, fmt.Errorf("parse new root: %w", err)
	}
	if nxt.Signed.Version != prev.Signed.Version+1 {
		return byPrevious, byNext, fmt.Errorf("the new root is version %d; it must follow the previous root's version %d", nxt.Signed.Version, prev.Signed.Version)
	}
	byPrevious = Status(prev, metadata.ROOT, nxt)
	byPrevious.Role = fmt.Sprintf("root keys of v%d", prev.Signed.Version)
	byNext = Status(nxt, metadata.ROOT, nxt)
	byNext.Role = fmt.Sprintf("root keys of v%d", nxt.Signed.Version)
	return byPrevious, byNext, nil
}

// TargetsStatus says who has signed targets metadata for the release keys
// of root.
func TargetsStatus(rootJSON, targetsJSON []byte) (SignatureStatus, error) {
	root, err := new(metadata.Metadata[metadata.RootType]).FromBytes(rootJSON)
	if err != nil {
		return SignatureStatus{}, fmt.Errorf("parse root: %w", err)
	}
	t, err := new(metadata.Metadata[metadata.TargetsType]).FromBytes(targetsJSON)
	if err != nil {
		return SignatureStatus{}, fmt.Errorf("parse targets: %w", err)
	}
	if t.Signed.Type != metadata.TARGETS {
		return SignatureStatus{}, errors.New("the file is not targets metadata")
	}
	return Status(root, metadata.TARGETS, t), nil
}
