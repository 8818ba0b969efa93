// Package update decides whether the device may install an assignment.
//
// The server's assignment only names a target path. The release repository
// (TUF, refreshed with go-tuf's updater) is what vouches for it: the target
// must be listed in targets metadata signed by the release keys, through a
// snapshot and timestamp that verify and have not expired. The signed entry
// gives the image's length and hashes and, in its custom field, the
// manifest with the version and models. go-tuf is used for metadata only;
// images are streamed by the installer, which enforces the signed length and
// hashes while it writes.
package update

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"

	"github.com/aftercare/aftercare/firmware"
)

// ErrRefused is wrapped by every VerifyError: the device will not install
// the assignment because the signed metadata does not allow it.
var ErrRefused = errors.New("update: assignment refused")

// A VerifyError reports why the agent refused an assignment.
// errors.Is(err, ErrRefused) holds for every VerifyError.
type VerifyError struct {
	Target string
	Reason string // "not signed", "metadata expired", "model mismatch", "downgrade", ...
	Err    error  // underlying cause, or nil
}

func (e *VerifyError) Error() string {
	msg := "refused " + e.Target + ": " + e.Reason
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}
func (e *VerifyError) Unwrap() error        { return e.Err }
func (e *VerifyError) Is(target error) bool { return target == ErrRefused }

// metadataTimeout bounds the download of one metadata file.
const metadataTimeout = 30 * time.Second

// Options configures a Client.
type Options struct {
	// RepositoryURL is the release repository's base URL; metadata is under
	// /metadata/ and images under /targets/. Required.
	RepositoryURL string
	// BootstrapRoot is the root metadata shipped in the device image, used
	// until a newer root has been verified and cached. Required.
	BootstrapRoot []byte
	CacheDir      string       // trusted metadata cache; required
	HTTP          *http.Client // required; its transport has timeouts
	Log           *slog.Logger // required
}

// Client looks up signed targets. It is not safe for concurrent use.
type Client struct {
	opts Options
}

// New returns a Client.
func New(opts Options) (*Client, error) {
	if opts.RepositoryURL == "" || len(opts.BootstrapRoot) == 0 || opts.CacheDir == "" || opts.HTTP == nil || opts.Log == nil {
		return nil, errors.New("update: RepositoryURL, BootstrapRoot, CacheDir, HTTP and Log are required")
	}
	if err := os.MkdirAll(opts.CacheDir, 0o700); err != nil {
		return nil, err
	}
	return &Client{opts: opts}, nil
}

// Target is a release image as the release repository signed it.
type Target struct {
	Path     string
	Length   int64
	SHA256   []byte
	Manifest firmware.Manifest
	URL      string // where to download the image
}

// trustedRoot is the newest root go-tuf verified and cached, or the
// bootstrap root before the first refresh.
func (c *Client) trustedRoot() []byte {
	if b, err := os.ReadFile(filepath.Join(c.opts.CacheDir, "root.json")); err == nil && len(b) > 0 {
		if _, err := new(metadata.Metadata[metadata.RootType]).FromBytes(b); err == nil {
			return b
		}
	}
	return c.opts.BootstrapRoot
}

// Lookup refreshes the release repository and returns the signed entry of
// targetPath. A refusal wraps ErrRefused; an unreachable repository does not.
func (c *Client) Lookup(ctx context.Context, targetPath string) (*Target, error) {
	cfg, err := config.New(c.opts.RepositoryURL+"/metadata", c.trustedRoot())
	if err != nil {
		return nil, err
	}
	cfg.LocalMetadataDir = c.opts.CacheDir
	// go-tuf insists on a targets cache; images never go through it (see
	// the package doc), so it stays empty.
	cfg.LocalTargetsDir = filepath.Join(c.opts.CacheDir, "unused-targets")
	cfg.RemoteTargetsURL = c.opts.RepositoryURL + "/targets"
	cfg.Fetcher = &fetcher{ctx: ctx, client: c.opts.HTTP}
	up, err := updater.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("load trusted root metadata: %w", err)
	}
	if err := up.Refresh(); err != nil {
		return nil, classify(targetPath, err)
	}
	tf, err := up.GetTargetInfo(targetPath)
	if err != nil {
		return nil, &VerifyError{Target: targetPath, Reason: "not in the release repository: no signed targets entry", Err: err}
	}
	return targetOf(c.opts.RepositoryURL, targetPath, tf)
}

func targetOf(repoURL, targetPath string, tf *metadata.TargetFiles) (*Target, error) {
	refuse := func(reason string, err error) (*Target, error) {
		return nil, &VerifyError{Target: targetPath, Reason: reason, Err: err}
	}
	digest, ok := tf.Hashes["sha256"]
	if !ok || len(digest) != 32 {
		return refuse("signed entry has no sha256 hash", nil)
	}
	custom, err := firmware.ParseTargetCustom(tf.Custom)
	if err != nil {
		return refuse("signed entry has no valid manifest", err)
	}
	m := custom.Manifest
	// The signed manifest must describe exactly the signed file.
	if m.TargetPath() != targetPath || m.Image.Length != tf.Length || m.Image.SHA256 != hex.EncodeToString(digest) {
		return refuse("signed manifest does not describe the signed image", nil)
	}
	dir, name := path.Split(targetPath)
	u, err := url.JoinPath(repoURL, "targets", dir, hex.EncodeToString(digest)+"."+name)
	if err != nil {
		return nil, err
	}
	return &Target{Path: targetPath, Length: tf.Length, SHA256: digest, Manifest: m, URL: u}, nil
}

// classify turns a go-tuf refresh error into a refusal with a reason a
// person can act on, or passes a network failure through unchanged.
func classify(target string, err error) error {
	var httpErr *metadata.ErrDownloadHTTP
	var netErr *netError
	switch {
	case errors.As(err, &netErr):
		return fmt.Errorf("release repository unreachable: %w", err)
	case errors.As(err, &httpErr) && httpErr.StatusCode >= 500:
		return fmt.Errorf("release repository unavailable: %w", err)
	case errors.Is(err, &metadata.ErrExpiredMetadata{}):
		return &VerifyError{Target: target, Reason: "metadata expired; the repository is frozen or the device clock is wrong", Err: err}
	case errors.Is(err, &metadata.ErrUnsignedMetadata{}):
		return &VerifyError{Target: target, Reason: "metadata signature does not verify with the trusted keys; it was altered or signed with a key the root does not trust", Err: err}
	case errors.Is(err, &metadata.ErrBadVersionNumber{}), errors.Is(err, &metadata.ErrEqualVersionNumber{}):
		return &VerifyError{Target: target, Reason: "metadata version went backwards; an old repository state is being replayed", Err: err}
	case errors.Is(err, &metadata.ErrLengthOrHashMismatch{}), errors.Is(err, &metadata.ErrDownloadLengthMismatch{}):
		return &VerifyError{Target: target, Reason: "metadata does not match its signed length or hash", Err: err}
	}
	return &VerifyError{Target: target, Reason: "release repository does not verify", Err: err}
}

// Check applies the device's own rules to a signed target: the release must
// be for this model and hardware revision, and must not be older than what
// runs now.
func Check(t *Target, model, hardwareRevision, running string) error {
	m := t.Manifest
	if !m.AppliesTo(model, hardwareRevision) {
		return &VerifyError{Target: t.Path, Reason: fmt.Sprintf("model mismatch: release is for %v (revisions %v), this device is %s revision %s",
			m.Models, m.HardwareRevisions, model, hardwareRevision)}
	}
	if firmware.CompareVersions(m.Version, running) < 0 {
		return &VerifyError{Target: t.Path, Reason: fmt.Sprintf("downgrade: release %s is older than the running %s", m.Version, running)}
	}
	return nil
}

// fetcher is go-tuf's metadata fetcher, bound to a context and an HTTP
// client with timeouts (go-tuf's default fetcher has none).
type fetcher struct {
	ctx    context.Context
	client *http.Client
}

// netError marks a transport failure, as opposed to a bad response.
type netError struct{ err error }

func (e *netError) Error() string { return e.err.Error() }
func (e *netError) Unwrap() error { return e.err }

func (f *fetcher) DownloadFile(urlPath string, maxLength int64, _ time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(f.ctx, metadataTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, urlPath, nil)
	if err != nil {
		return nil, err
	}
	res, err := f.client.Do(req)
	if err != nil {
		return nil, &netError{err}
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return nil, &metadata.ErrDownloadHTTP{StatusCode: res.StatusCode, URL: urlPath}
	}
	if res.ContentLength > maxLength {
		return nil, &metadata.ErrDownloadLengthMismatch{Msg: fmt.Sprintf("%s is %d bytes, more than the %d allowed", urlPath, res.ContentLength, maxLength)}
	}
	// Read one byte more than allowed to detect endless data.
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, io.LimitReader(res.Body, maxLength+1)); err != nil {
		return nil, &netError{err}
	}
	if int64(buf.Len()) > maxLength {
		return nil, &metadata.ErrDownloadLengthMismatch{Msg: fmt.Sprintf("%s is more than the %d bytes allowed", urlPath, maxLength)}
	}
	return buf.Bytes(), nil
}
