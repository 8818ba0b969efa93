package signing

import (
	"fmt"
	"regexp"
	"slices"
	"sort"

	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// holdersField is the field of a root's signed part that names who holds
// each key, by key ID. Because the root keys sign it, anyone with the root
// can tell who signed a piece of metadata and who has not yet. TUF clients
// ignore fields they do not know; go-tuf keeps them in the signed bytes.
const holdersField = "x-aftercare-holders"

// OnlineHolder is the holder name of keys the fleet server holds.
const OnlineHolder = "fleet-server"

var holderPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)

// ValidHolder reports whether name can name a key holder: 1-64 characters
// of a-z, 0-9, '.', '_' and '-', starting with a letter or digit, so it can
// be part of a file name.
func ValidHolder(name string) bool { return holderPattern.MatchString(name) }

// Holders returns the key holders a root names, by key ID.
func Holders(root *metadata.Metadata[metadata.RootType]) map[string]string {
	out := map[string]string{}
	m, _ := root.Signed.UnrecognizedFields[holdersField].(map[string]any)
	for id, v := range m {
		if name, ok := v.(string); ok {
			out[id] = name
		}
	}
	return out
}

// setHolder records who holds the key with the given ID in root.
func setHolder(root *metadata.Metadata[metadata.RootType], keyID, holder string) {
	if root.Signed.UnrecognizedFields == nil {
		root.Signed.UnrecognizedFields = map[string]any{}
	}
	m, _ := root.Signed.UnrecognizedFields[holdersField].(map[string]any)
	if m == nil {
		m = map[string]any{}
	}
	m[keyID] = holder
	root.Signed.UnrecognizedFields[holdersField] = m
}

// dropUnusedHolders forgets the holders of keys no role uses any more.
func dropUnusedHolders(root *metadata.Metadata[metadata.RootType]) {
	m, _ := root.Signed.UnrecognizedFields[holdersField].(map[string]any)
	for id := range m {
		if _, ok := root.Signed.Keys[id]; !ok {
			delete(m, id)
		}
	}
}

// holderName is the holder of keyID, or a short key ID when root does not
// name one.
func holderName(holders map[string]string, keyID string) string {
	if name, ok := holders[keyID]; ok {
		return name
	}
	return "key " + shortID(keyID)
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// checkHolders validates a list of holder names and a threshold over them.
func checkHolders(role string, holders []string, threshold int) error {
	var problems []string
	if len(holders) == 0 {
		problems = append(problems, fmt.Sprintf("%s needs at least one key holder", role))
	}
	seen := map[string]bool{}
	for _, h := range holders {
		if !ValidHolder(h) {
			problems = append(problems, fmt.Sprintf("%s key holder %q must be 1-64 characters of a-z, 0-9, '.', '_', '-'", role, h))
		}
		if seen[h] {
			problems = append(problems, fmt.Sprintf("%s key holder %q is listed twice", role, h))
		}
		seen[h] = true
	}
	if threshold < 1 || threshold > len(holders) {
		problems = append(problems, fmt.Sprintf("%s threshold %d must be between 1 and the number of holders (%d)", role, threshold, len(holders)))
	}
	if len(problems) > 0 {
		return &InvalidError{Problems: problems}
	}
	return nil
}

// An InvalidError lists every problem with a request to the signing
// package; nothing was written or signed.
type InvalidError struct {
	Problems []string
}

func (e *InvalidError) Error() string {
	msg := "invalid signing request"
	for _, p := range e.Problems {
		msg += "\n  - " + p
	}
	return msg
}

// roleHolders returns the holders of a role's keys in root, sorted.
func roleHolders(root *metadata.Metadata[metadata.RootType], role string) []string {
	holders := Holders(root)
	var out []string
	if r, ok := root.Signed.Roles[role]; ok {
		for _, id := range r.KeyIDs {
			out = append(out, holderName(holders, id))
		}
	}
	sort.Strings(out)
	return slices.Compact(out)
}
