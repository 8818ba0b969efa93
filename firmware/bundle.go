package firmware

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
)

// Names of the entries in a bundle, in the order they must appear.
const (
	EntryManifest = "manifest.json"
	EntrySBOM     = "sbom.json"
	EntryImage    = "image"
)

// MaxSBOMBytes bounds the SBOM a bundle may carry.
const MaxSBOMBytes = 64 << 20 // 64 MiB

// ErrBadBundle is wrapped by every error that means the bundle itself is
// malformed, as opposed to an I/O failure while reading it.
var ErrBadBundle = errors.New("firmware: bad bundle")

// BundleSource names the files a bundle is built from.
type BundleSource struct {
	Image string // path of the image, already compressed as Manifest.Image.Compression says
	SBOM  string // path of the SBOM, or "" for none
}

// WriteBundle writes a bundle of m and the files in src to w. The manifest's
// digests must already describe the files (see DescribeImage).
func WriteBundle(w io.Writer, m *Manifest, src BundleSource) error {
	if err := m.Validate(); err != nil {
		return err
	}
	if (src.SBOM != "") != (m.SBOM != nil) {
		return errors.New("write bundle: the manifest and the sources disagree on whether there is an SBOM")
	}
	tw := tar.NewWriter(w)
	manifest := m.Marshal()
	if err := writeEntry(tw, EntryManifest, int64(len(manifest)), bytes.NewReader(manifest)); err != nil {
		return err
	}
	if src.SBOM != "" {
		if err := writeFileEntry(tw, EntrySBOM, src.SBOM, m.SBOM.Length); err != nil {
			return err
		}
	}
	if err := writeFileEntry(tw, EntryImage, src.Image, m.Image.Length); err != nil {
		return err
	}
	return tw.Close()
}

func writeFileEntry(tw *tar.Writer, name, path string, length int64) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open %s: %w", name, err)
	}
	defer f.Close()
	return writeEntry(tw, name, length, f)
}

func writeEntry(tw *tar.Writer, name string, length int64, r io.Reader) error {
	hdr := &tar.Header{Name: name, Mode: 0o644, Size: length, Typeflag: tar.TypeReg, Format: tar.FormatPAX}
	if err := tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("write bundle entry %s: %w", name, err)
	}
	n, err := io.Copy(tw, r)
	if err != nil {
		return fmt.Errorf("write bundle entry %s: %w", name, err)
	}
	if n != length {
		return fmt.Errorf("write bundle entry %s: the file has %d bytes but the manifest says %d", name, n, length)
	}
	return nil
}

// A BundleReader reads a bundle entry by entry, checking each against the
// manifest while it streams. It never holds more than the manifest in memory.
type BundleReader struct {
	tr       *tar.Reader
	Manifest *Manifest
}

// OpenBundle reads the bundle's manifest from r and validates it.
func OpenBundle(r io.Reader) (*BundleReader, error) {
	tr := tar.NewReader(r)
	hdr, err := nextEntry(tr)
	if err != nil {
		return nil, err
	}
	if hdr.Name != EntryManifest {
		return nil, fmt.Errorf("%w: first entry is %q, want %q", ErrBadBundle, hdr.Name, EntryManifest)
	}
	if hdr.Size > MaxManifestBytes {
		return nil, fmt.Errorf("%w: manifest is %d bytes, larger than the %d allowed", ErrBadBundle, hdr.Size, MaxManifestBytes)
	}
	b, err := io.ReadAll(io.LimitReader(tr, MaxManifestBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read manifest: %w", err)
	}
	m, err := ParseManifest(b)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadBundle, err)
	}
	return &BundleReader{tr: tr, Manifest: m}, nil
}

// Extract copies the SBOM (when the manifest has one) to sbom and the image
// to image, verifying each length and digest against the manifest. It fails
// on any missing, extra or out-of-order entry. sbom may be nil when the
// manifest has no SBOM.
func (b *BundleReader) Extract(sbom, image io.Writer) error {
	hdr, err := nextEntry(b.tr)
	if err != nil {
		return err
	}
	if b.Manifest.SBOM != nil {
		if hdr.Name != EntrySBOM {
			return fmt.Errorf("%w: entry %q found where the manifest's %q should be", ErrBadBundle, hdr.Name, EntrySBOM)
		}
		if err := copyVerified(sbom, b.tr, hdr, *b.Manifest.SBOM); err != nil {
			return err
		}
		if hdr, err = nextEntry(b.tr); err != nil {
			return err
		}
	}
	if hdr.Name != EntryImage {
		return fmt.Errorf("%w: entry %q found where %q should be", ErrBadBundle, hdr.Name, EntryImage)
	}
	img := Artifact{Length: b.Manifest.Image.Length, SHA256: b.Manifest.Image.SHA256}
	if err := copyVerified(image, b.tr, hdr, img); err != nil {
		return err
	}
	if hdr, err := b.tr.Next(); err != io.EOF {
		if err != nil {
			return fmt.Errorf("%w: after the image: %w", ErrBadBundle, err)
		}
		return fmt.Errorf("%w: unexpected entry %q after the image", ErrBadBundle, hdr.Name)
	}
	return nil
}

func nextEntry(tr *tar.Reader) (*tar.Header, error) {
	hdr, err := tr.Next()
	if err == io.EOF {
		return nil, fmt.Errorf("%w: the bundle ends early", ErrBadBundle)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadBundle, err)
	}
	if hdr.Typeflag != tar.TypeReg {
		return nil, fmt.Errorf("%w: entry %q is not a regular file", ErrBadBundle, hdr.Name)
	}
	return hdr, nil
}

func copyVerified(w io.Writer, r io.Reader, hdr *tar.Header, want Artifact) error {
	if hdr.Size != want.Length {
		return fmt.Errorf("%w: entry %q is %d bytes but the manifest says %d", ErrBadBundle, hdr.Name, hdr.Size, want.Length)
	}
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(w, h), r); err != nil {
		return fmt.Errorf("copy bundle entry %q: %w", hdr.Name, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want.SHA256 {
		return fmt.Errorf("%w: entry %q has sha256 %s but the manifest says %s", ErrBadBundle, hdr.Name, got, want.SHA256)
	}
	return nil
}
