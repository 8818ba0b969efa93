package signing

import (
	"fmt"
	"sort"
	"strings"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// A SignatureStatus says who has signed a piece of metadata for a role, who
// has not, and whether the role's threshold is met.
type SignatureStatus struct {
	Role      string
	Threshold int
	Signed    []string // holders whose signature is present and valid
	Missing   []string // holders of the role's other keys
	// Foreign lists signatures that count for nothing: by keys the role
	// does not list, or that do not verify (the metadata changed after
	// they were made).
	Foreign []string
}

// Met reports whether enough holders signed.
func (s SignatureStatus) Met() bool { return len(s.Signed) >= s.Threshold }

// String reads e.g. "targets: 1 of 2 required signatures (signed: alice;
// missing: bob)".
func (s SignatureStatus) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d of %d required signatures", s.Role, len(s.Signed), s.Threshold)
	var parts []string
	if len(s.Signed) > 0 {
		parts = append(parts, "signed: "+strings.Join(s.Signed, ", "))
	}
	if len(s.Missing) > 0 {
		parts = append(parts, "not yet signed: "+strings.Join(s.Missing, ", "))
	}
	if len(s.Foreign) > 0 {
		parts = append(parts, "not counted: "+strings.Join(s.Foreign, ", "))
	}
	if len(parts) > 0 {
		b.WriteString(" (" + strings.Join(parts, "; ") + ")")
	}
	return b.String()
}

// Status checks each signature on md against the keys root gives role,
// using go-tuf's own verification one key at a time.
func Status[T metadata.Roles](root *metadata.Metadata[metadata.RootType], role string, md *metadata.Metadata[T]) SignatureStatus {
	st := SignatureStatus{Role: role}
	r, ok := root.Signed.Roles[role]
	if !ok {
		return st
	}
	st.Threshold = r.Threshold
	holders := Holders(root)
	valid := map[string]bool{}
	for _, id := range r.KeyIDs {
		one := *root
		one.Signed.Roles = map[string]*metadata.Role{role: {KeyIDs: []string{id}, Threshold: 1}}
		if one.VerifyDelegate(role, md) == nil {
			valid[id] = true
			st.Signed = append(st.Signed, holderName(holders, id))
		} else {
			st.Missing = append(st.Missing, holderName(holders, id))
		}
	}
	for _, sig := range md.Signatures {
		if !valid[sig.KeyID] {
			st.Foreign = append(st.Foreign, holderName(holders, sig.KeyID))
		}
	}
	sort.Strings(st.Signed)
	sort.Strings(st.Missing)
	sort.Strings(st.Foreign)
	return st
}

// addSignature signs md with signer unless that key already signed it.
func addSignature[T metadata.Roles](md *metadata.Metadata[T], signer signature.Signer) error {
	key, err := TUFKey(signer)
	if err != nil {
		return err
	}
	id, err := key.ID()
	if err != nil {
		return err
	}
	for _, sig := range md.Signatures {
		if sig.KeyID == id {
			return fmt.Errorf("key %s has already signed this metadata", shortID(id))
		}
	}
	if _, err := md.Sign(signer); err != nil {
		return fmt.Errorf("sign: %w", err)
	}
	return nil
}
