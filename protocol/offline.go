package protocol

import (
	"encoding/json"
	"fmt"
	"path"
	"strings"
	"time"
)

// An offline bundle carries one device's update to a site without a
// network: a tar file holding
//
//	bundle.json                          OfflineManifest (unsigned, for messages)
//	tuf/release/metadata/<file>.json     every release metadata file the
//	tuf/rollout/metadata/<file>.json     device fetches, from version 1 of each root
//	tuf/release/targets/<dir>/<sha256>.<name>   the image
//
// The paths are those of the fleet server's static repository files
// (/tuf/...), so the agent reads the bundle through the same TUF client,
// size limits and image checks as a download: nothing in the bundle is
// trusted until the device's own roots verify it.
const (
	// OfflineFormat is the bundle format version.
	OfflineFormat = 1
	// OfflineManifestName is the bundle's first entry.
	OfflineManifestName = "bundle.json"
	// OfflineMaxEntries bounds the number of files in a bundle.
	OfflineMaxEntries = 4096
)

// OfflineManifest describes a bundle for people and for early, friendly
// errors ("this bundle is for another device"). It is not signed; the
// metadata in the bundle is what the device verifies.
type OfflineManifest struct {
	Format    int       `json:"format"`
	DeviceID  string    `json:"device_id"`
	ReleaseID string    `json:"release_id"`
	Target    string    `json:"target"` // release repository target path
	Version   string    `json:"version"`
	Created   time.Time `json:"created"`
	// Expires is the earliest expiry of the timestamp and snapshot metadata
	// inside: a device refuses the bundle after it.
	Expires time.Time `json:"expires"`
}

// ParseOfflineManifest decodes and validates a bundle's manifest.
func ParseOfflineManifest(b []byte) (OfflineManifest, error) {
	var m OfflineManifest
	if err := Decode(b, &m); err != nil {
		return m, fmt.Errorf("offline bundle manifest: %w", err)
	}
	if m.Format != OfflineFormat {
		return m, fmt.Errorf("offline bundle format %d is not supported (supported: %d)", m.Format, OfflineFormat)
	}
	if !ValidID(m.DeviceID) {
		return m, fmt.Errorf("offline bundle manifest device_id %q is not a valid ID", m.DeviceID)
	}
	return m, nil
}

// Marshal encodes the manifest.
func (m OfflineManifest) Marshal() []byte {
	b, _ := json.MarshalIndent(m, "", "  ")
	return b
}

// ValidOfflineEntry accepts the name of a file a bundle may hold: the
// manifest, or a clean relative path under tuf/release/ or tuf/rollout/.
func ValidOfflineEntry(name string) bool {
	if name == OfflineManifestName {
		return true
	}
	if name == "" || len(name) > 512 || path.Clean(name) != name || strings.HasPrefix(name, "/") ||
		strings.ContainsAny(name, "\\\x00") || strings.Contains(name, "..") {
		return false
	}
	return strings.HasPrefix(name, "tuf/release/metadata/") || strings.HasPrefix(name, "tuf/release/targets/") ||
		strings.HasPrefix(name, "tuf/rollout/metadata/")
}
