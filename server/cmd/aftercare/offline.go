package main

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/theupdateframework/go-tuf/v2/metadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/fetcher"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"

	"github.com/aftercare/aftercare/firmware"
	"github.com/aftercare/aftercare/protocol"
)

// maxOfflineMetadataBytes bounds one metadata file the CLI collects.
const maxOfflineMetadataBytes = 8 << 20 // 8 MiB

func offlineBundleCmd(e *env) *cobra.Command {
	var deviceID, out string
	cmd := &cobra.Command{
		Use:   "offline-bundle RELEASE --device ID -o FILE",
		Short: "Write one device's update (image and both repositories' metadata) into a file for an air-gapped site",
		Long: `Collects everything the device's agent fetches to install RELEASE: every
metadata file of the rollout and release repositories from version 1 of each
root, and the image. The device must already be assigned RELEASE by a
rollout. Install it on the device with

    aftercare-agent install-bundle FILE

The device verifies the bundle with its own trusted roots, exactly as an
online update; install it before the earliest metadata expiry printed here.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !protocol.ValidID(deviceID) || out == "" {
				return errors.New("--device ID and -o FILE are required")
			}
			c, err := e.client()
			if err != nil {
				return err
			}
			m, err := writeOfflineBundle(cmd.Context(), c, args[0], deviceID, out)
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "wrote %s: %s (%s) for device %s; install it before %s\n",
				out, m.Target, m.Version, m.DeviceID, m.Expires.Format(time.RFC3339))
			return nil
		},
	}
	cmd.Flags().StringVar(&deviceID, "device", "", "device ID the bundle is for (required)")
	cmd.Flags().StringVarP(&out, "output", "o", "", "bundle file to write (required)")
	return cmd
}

// writeOfflineBundle collects the bundle through the server's public /tuf/
// files, checks it as the device will, and writes it atomically to out.
func writeOfflineBundle(ctx context.Context, c *client, releaseID, deviceID, out string) (protocol.OfflineManifest, error) {
	var rel struct {
		ID         string `json:"id"`
		Version    string `json:"version"`
		TargetPath string `json:"target_path"`
	}
	if err := c.getJSON(ctx, "/api/v1/releases/"+url.PathEscape(releaseID), &rel); err != nil {
		return protocol.OfflineManifest{}, fmt.Errorf("release %s: %w", releaseID, err)
	}
	col := &collector{ctx: ctx, base: c.base, http: &http.Client{Transport: &http.Transport{
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
		ResponseHeaderTimeout: time.Minute,
	}}, files: map[string][]byte{}}

	entry, err := col.lookup("rollout", protocol.AssignmentPath(deviceID))
	if err != nil {
		return protocol.OfflineManifest{}, err
	}
	if entry == nil || entry.Custom == nil {
		return protocol.OfflineManifest{}, fmt.Errorf("the rollout repository assigns nothing to device %s; create a rollout of release %s that includes it first", deviceID, rel.ID)
	}
	custom, err := protocol.ParseAssignmentCustom(*entry.Custom)
	if err != nil {
		return protocol.OfflineManifest{}, fmt.Errorf("device %s's assignment: %w", deviceID, err)
	}
	if custom.Target != rel.TargetPath {
		return protocol.OfflineManifest{}, fmt.Errorf("device %s is assigned %s, not release %s (%s); roll release %s out to it first",
			deviceID, custom.Target, rel.ID, rel.TargetPath, rel.ID)
	}
	tf, err := col.lookup("release", custom.Target)
	if err != nil {
		return protocol.OfflineManifest{}, err
	}
	if tf == nil || tf.Length != entry.Length || !maps.EqualFunc(tf.Hashes, entry.Hashes, func(a, b metadata.HexBytes) bool { return bytes.Equal(a, b) }) {
		return protocol.OfflineManifest{}, fmt.Errorf("the release repository does not sign the image the rollout repository assigns to %s; the device would refuse it", deviceID)
	}
	digest := tf.Hashes["sha256"]
	if len(digest) != sha256.Size {
		return protocol.OfflineManifest{}, fmt.Errorf("target %s has no sha256 hash", custom.Target)
	}
	dir, name := path.Split(custom.Target)
	image := path.Join("tuf/release/targets", dir, hex.EncodeToString(digest)+"."+name)
	m := protocol.OfflineManifest{Format: protocol.OfflineFormat, DeviceID: deviceID, ReleaseID: rel.ID, Target: custom.Target,
		Version: rel.Version, Created: time.Now().UTC(), Expires: col.expires}
	if err := col.write(out, m, image, tf.Length, digest); err != nil {
		return protocol.OfflineManifest{}, err
	}
	return m, nil
}

// collector runs go-tuf against the server's repositories and keeps every
// metadata file it fetched, by its path under the server ("tuf/..."). It
// carries the command's context because go-tuf's Fetcher takes none.
type collector struct {
	ctx     context.Context
	base    string
	http    *http.Client
	files   map[string][]byte
	expires time.Time // earliest expiry of the collected timestamps and snapshots
}

var _ fetcher.Fetcher = (*collector)(nil)

// lookup refreshes one repository from version 1 of its root, as a device
// that never updated would, and returns targetPath's entry or nil.
func (col *collector) lookup(repo, targetPath string) (*metadata.TargetFiles, error) {
	repoURL := col.base + "/tuf/" + repo
	root, err := col.DownloadFile(repoURL+"/metadata/1.root.json", maxOfflineMetadataBytes, 0)
	if err != nil {
		return nil, fmt.Errorf("%s repository root: %w", repo, err)
	}
	work, err := os.MkdirTemp("", "aftercare-offline-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	cfg, err := config.New(repoURL+"/metadata", root)
	if err != nil {
		return nil, err
	}
	cfg.LocalMetadataDir, cfg.LocalTargetsDir = work, filepath.Join(work, "targets")
	cfg.RemoteTargetsURL = repoURL + "/targets"
	cfg.Fetcher = col
	up, err := updater.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("%s repository: %w", repo, err)
	}
	if err := up.Refresh(); err != nil {
		return nil, fmt.Errorf("%s repository does not verify: %w", repo, err)
	}
	tf, err := up.GetTargetInfo(targetPath)
	if err != nil {
		if err.Error() == fmt.Sprintf("target %s not found", targetPath) {
			return nil, nil
		}
		return nil, fmt.Errorf("%s repository: %w", repo, err)
	}
	trusted := up.GetTrustedMetadataSet()
	for _, exp := range []time.Time{trusted.Timestamp.Signed.Expires, trusted.Snapshot.Signed.Expires} {
		if col.expires.IsZero() || exp.Before(col.expires) {
			col.expires = exp
		}
	}
	return tf, nil
}

// DownloadFile is go-tuf's fetcher: a bounded GET whose answer is kept.
func (col *collector) DownloadFile(rawURL string, maxLength int64, _ time.Duration) ([]byte, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(col.ctx, 2*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return nil, err
	}
	res, err := col.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return nil, &metadata.ErrDownloadHTTP{StatusCode: res.StatusCode, URL: rawURL}
	}
	b, err := io.ReadAll(io.LimitReader(res.Body, maxLength+1))
	if err != nil {
		return nil, fmt.Errorf("download %s: %w", rawURL, err)
	}
	if int64(len(b)) > maxLength {
		return nil, &metadata.ErrDownloadLengthMismatch{Msg: fmt.Sprintf("%s is more than the %d bytes allowed", rawURL, maxLength)}
	}
	name := strings.TrimPrefix(u.Path, "/")
	if !protocol.ValidOfflineEntry(name) {
		return nil, fmt.Errorf("metadata path %q cannot go into a bundle", name)
	}
	col.files[name] = b
	return b, nil
}

// write streams the bundle into a temporary file next to out, hashing the
// image on the way, and renames it into place once complete and synced.
func (col *collector) write(out string, m protocol.OfflineManifest, image string, length int64, digest []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(out), ".offline-bundle-*")
	if err != nil {
		return fmt.Errorf("create bundle: %w", err)
	}
	done := false
	defer func() {
		if !done {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	tw := tar.NewWriter(tmp)
	add := func(name string, size int64, r io.Reader) error {
		h := &tar.Header{Name: name, Mode: 0o644, Size: size, ModTime: m.Created, Typeflag: tar.TypeReg, Format: tar.FormatPAX}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		_, err := io.Copy(tw, r)
		return err
	}
	mb := m.Marshal()
	if err := add(protocol.OfflineManifestName, int64(len(mb)), bytes.NewReader(mb)); err != nil {
		return err
	}
	for _, name := range slices.Sorted(maps.Keys(col.files)) {
		if err := add(name, int64(len(col.files[name])), bytes.NewReader(col.files[name])); err != nil {
			return err
		}
	}
	if err := col.addImage(add, image, length, digest); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return err
	}
	done = true
	return nil
}

// addImage streams the image from the server into the bundle and checks it
// against the signed digest, so a bad copy fails here rather than on site.
func (col *collector) addImage(add func(string, int64, io.Reader) error, image string, length int64, digest []byte) error {
	req, err := http.NewRequestWithContext(col.ctx, http.MethodGet, col.base+"/"+image, nil)
	if err != nil {
		return err
	}
	res, err := col.http.Do(req)
	if err != nil {
		return fmt.Errorf("download image: %w", err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("download image %s: status %s", image, res.Status)
	}
	h := sha256.New()
	// The tar entry has the signed length; a short body fails the copy.
	if err := add(image, length, io.TeeReader(io.LimitReader(res.Body, length), h)); err != nil {
		return fmt.Errorf("download image %s: %w", image, err)
	}
	if !bytes.Equal(h.Sum(nil), digest) {
		return fmt.Errorf("image %s from the server does not match its signed sha256: %w", image, firmware.ErrMismatch)
	}
	return nil
}
