// Package firmware defines the Aftercare release bundle and how its image is
// streamed into a slot.
//
// A release bundle is a tar file holding, in this order:
//
//	manifest.json   the Manifest: product, version, hardware models, and the
//	                lengths and SHA-256 digests of everything else
//	sbom.json       optional: the release's SBOM (CycloneDX or SPDX JSON)
//	image           the slot image, stored as-is or compressed (zstd, gzip)
//
// The release engineer signs a TUF targets entry whose length and hashes are
// those of the image as stored and whose custom field is the manifest, so the
// device learns the version, models and raw image digest from signed metadata,
// never from the bundle itself. This package imports only the standard
// library and compression code; the server, the agent and the signing CLI all
// share it.
package firmware

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
)

// ManifestFormat is the manifest format this package writes and accepts.
const ManifestFormat = 1

// Limits on manifest fields. The manifest travels inside signed TUF metadata,
// so it stays small.
const (
	MaxManifestBytes = 64 << 10 // 64 KiB
	maxNotesBytes    = 16 << 10 // 16 KiB
	maxModels        = 64
	maxNameLen       = 64
)

// Compression names an image encoding.
type Compression string

// The image encodings a bundle may use.
const (
	CompressionNone Compression = "none"
	CompressionZstd Compression = "zstd"
	CompressionGzip Compression = "gzip"
)

// A Manifest describes one release. It is embedded in the signed TUF targets
// entry of the release's image.
type Manifest struct {
	Format  int    `json:"format"`
	Product string `json:"product"` // product line, e.g. "infusion-pump"
	Version string `json:"version"` // semantic version, e.g. "2.1.0"
	// Models lists the hardware models this release installs on.
	Models []string `json:"models"`
	// HardwareRevisions narrows Models to these revisions; empty means all.
	HardwareRevisions []string `json:"hardware_revisions,omitempty"`
	Image             Image    `json:"image"`
	// SBOM describes the bundle's sbom.json; nil when the bundle has none.
	SBOM  *Artifact `json:"sbom,omitempty"`
	Notes string    `json:"notes,omitempty"` // release notes, plain text
}

// An Image describes the slot image: as stored in the bundle and on the
// server (Length, SHA256) and as written to the slot (RawLength, RawSHA256).
type Image struct {
	Compression Compression `json:"compression"`
	Length      int64       `json:"length"`     // bytes as stored
	SHA256      string      `json:"sha256"`     // hex digest as stored
	RawLength   int64       `json:"raw_length"` // bytes written to the slot
	RawSHA256   string      `json:"raw_sha256"` // hex digest of the slot contents
}

// An Artifact is a file carried beside the image, bound by its digest.
type Artifact struct {
	Length int64  `json:"length"` // bytes
	SHA256 string `json:"sha256"` // hex digest
}

var (
	namePattern    = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*$`)
	versionPattern = regexp.MustCompile(`^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$`)
	hexSHA256      = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// ParseManifest decodes and validates a manifest. It rejects unknown fields,
// trailing data and manifests larger than MaxManifestBytes.
func ParseManifest(b []byte) (*Manifest, error) {
	if len(b) > MaxManifestBytes {
		return nil, fmt.Errorf("manifest is %d bytes, larger than the %d allowed", len(b), MaxManifestBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var m Manifest
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("decode manifest: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("decode manifest: trailing data after the JSON object")
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// Validate reports every invalid field of m at once.
func (m *Manifest) Validate() error {
	var errs []error
	if m.Format != ManifestFormat {
		errs = append(errs, fmt.Errorf("manifest format %d is not supported (want %d)", m.Format, ManifestFormat))
	}
	if !ValidName(m.Product) {
		errs = append(errs, fmt.Errorf("manifest product %q must be 1-%d characters of a-z, 0-9, '.', '_', '-'", m.Product, maxNameLen))
	}
	if !versionPattern.MatchString(m.Version) {
		errs = append(errs, fmt.Errorf("manifest version %q is not a semantic version such as 2.1.0", m.Version))
	}
	errs = append(errs, validNames("models", m.Models, true)...)
	errs = append(errs, validNames("hardware_revisions", m.HardwareRevisions, false)...)
	switch m.Image.Compression {
	case CompressionNone, CompressionZstd, CompressionGzip:
	default:
		errs = append(errs, fmt.Errorf("manifest image compression %q is not one of none, zstd, gzip", m.Image.Compression))
	}
	errs = append(errs, validDigest("image", m.Image.Length, m.Image.SHA256)...)
	errs = append(errs, validDigest("image raw", m.Image.RawLength, m.Image.RawSHA256)...)
	if m.Image.Compression == CompressionNone && (m.Image.Length != m.Image.RawLength || m.Image.SHA256 != m.Image.RawSHA256) {
		errs = append(errs, errors.New("manifest image is uncompressed but its raw length or digest differs from the stored one"))
	}
	if m.SBOM != nil {
		errs = append(errs, validDigest("sbom", m.SBOM.Length, m.SBOM.SHA256)...)
	}
	if len(m.Notes) > maxNotesBytes {
		errs = append(errs, fmt.Errorf("manifest notes are %d bytes, more than the %d allowed", len(m.Notes), maxNotesBytes))
	}
	return errors.Join(errs...)
}

// ValidName reports whether s can name a product, model or hardware
// revision: 1-64 characters of a-z, 0-9, '.', '_' and '-'.
func ValidName(s string) bool {
	return len(s) > 0 && len(s) <= maxNameLen && namePattern.MatchString(s)
}

func validNames(field string, names []string, required bool) []error {
	var errs []error
	if required && len(names) == 0 {
		errs = append(errs, fmt.Errorf("manifest %s must list at least one entry", field))
	}
	if len(names) > maxModels {
		errs = append(errs, fmt.Errorf("manifest %s lists %d entries, more than the %d allowed", field, len(names), maxModels))
	}
	for i, n := range names {
		if !ValidName(n) {
			errs = append(errs, fmt.Errorf("manifest %s[%d] %q must be 1-%d characters of a-z, 0-9, '.', '_', '-'", field, i, n, maxNameLen))
		}
		if slices.Index(names, n) != i {
			errs = append(errs, fmt.Errorf("manifest %s[%d] %q is listed twice", field, i, n))
		}
	}
	return errs
}

func validDigest(what string, length int64, digest string) []error {
	var errs []error
	if length <= 0 {
		errs = append(errs, fmt.Errorf("manifest %s length %d must be positive", what, length))
	}
	if !hexSHA256.MatchString(digest) {
		errs = append(errs, fmt.Errorf("manifest %s sha256 %q is not 64 lower-case hex digits", what, digest))
	}
	return errs
}

// Marshal encodes m as compact JSON; ParseManifest(m.Marshal()) returns m.
func (m *Manifest) Marshal() []byte {
	b, err := json.Marshal(m)
	if err != nil {
		// Every field is a plain string, number or slice of them.
		panic("firmware: marshal manifest: " + err.Error())
	}
	return b
}

// AppliesTo reports whether the release installs on a device of this model
// and hardware revision.
func (m *Manifest) AppliesTo(model, hardwareRevision string) bool {
	if !slices.Contains(m.Models, model) {
		return false
	}
	return len(m.HardwareRevisions) == 0 || slices.Contains(m.HardwareRevisions, hardwareRevision)
}

// TargetPath is the TUF target path of the release's image, unique per
// product and version.
func (m *Manifest) TargetPath() string {
	return m.Product + "/" + m.Version + "/image" + m.Image.Compression.suffix()
}

func (c Compression) suffix() string {
	switch c {
	case CompressionZstd:
		return ".zst"
	case CompressionGzip:
		return ".gz"
	}
	return ".img"
}

// DecodeSHA256 decodes a hex digest validated by Manifest.Validate.
func DecodeSHA256(s string) ([]byte, error) {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != 32 {
		return nil, fmt.Errorf("sha256 %q is not 64 hex digits", s)
	}
	return b, nil
}
