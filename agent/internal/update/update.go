// Package update decides whether the device may install an assignment.
//
// Two TUF repositories must agree before the device installs anything (the
// Uptane split between an image repository and a director):
//
//   - the rollout repository, signed by the fleet server's online key,
//     says which image this device should run: the entry
//     devices/<device ID>, in the hash bin the device computes itself,
//     carries the image's length and hashes and the release's target path;
//   - the release repository, whose targets the manufacturer signs
//     offline, must list that target with exactly the same length and
//     hashes. Its signed manifest (in the entry's custom field) gives the
//     version and models, and the rollback flag.
//
// So a server holding only the online keys can withhold or delay updates,
// or point a device at another release the manufacturer signed (which the
// device's own rules then judge: model, no downgrade without the signed
// rollback flag), but never make it install an image of its own.
//
// Both repositories are refreshed with go-tuf (metadata only, through a
// fetcher with deadlines, size limits and slow-retrieval limits). The device
// keeps its own fsynced last-known-good copies of the verified metadata, the
// version of each role, and a time floor (the newest signed timestamp
// time), so a restart or power cut never lowers what it trusts and a clock
// set back never makes expired metadata look fresh. Images are streamed by
// the installer, which enforces the signed length and hashes while it
// writes.
package update

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/aftercare/aftercare/agent/internal/slowread"
	"github.com/aftercare/aftercare/firmware"
	"github.com/aftercare/aftercare/protocol"
)

// Options configures a Client.
type Options struct {
	// ReleaseURL and RolloutURL are the repositories' base URLs; metadata
	// is under /metadata/, release images under /targets/. Required.
	ReleaseURL string
	RolloutURL string
	// ReleaseRoot and RolloutRoot are the roots shipped in the device
	// image, used until newer roots have been verified. Required.
	ReleaseRoot []byte
	RolloutRoot []byte
	DeviceID    string       // required
	StateDir    string       // holds each repository's trusted metadata; required
	HTTP        *http.Client // required; its transport has connect and header timeouts
	// Limits guard every metadata download against slow retrieval; the
	// zero value means slowread.DefaultLimits.
	Limits slowread.Limits
	Now    func() time.Time // nil means time.Now
	Log    *slog.Logger     // required
}

// Client finds the device's verified assignment. It is not safe for
// concurrent use.
type Client struct {
	opts             Options
	release, rollout *repository
}

// New returns a Client.
func New(opts Options) (*Client, error) {
	if opts.ReleaseURL == "" || opts.RolloutURL == "" || len(opts.ReleaseRoot) == 0 || len(opts.RolloutRoot) == 0 ||
		!protocol.ValidID(opts.DeviceID) || opts.StateDir == "" || opts.HTTP == nil || opts.Log == nil {
		return nil, errors.New("update: ReleaseURL, RolloutURL, both roots, a valid DeviceID, StateDir, HTTP and Log are required")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Limits == (slowread.Limits{}) {
		opts.Limits = slowread.DefaultLimits()
	}
	c := &Client{opts: opts}
	for _, r := range []struct {
		p    **repository
		name string
		url  string
		root []byte
	}{{&c.release, "release", opts.ReleaseURL, opts.ReleaseRoot}, {&c.rollout, "rollout", opts.RolloutURL, opts.RolloutRoot}} {
		dir := filepath.Join(opts.StateDir, r.name)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
		*r.p = &repository{name: r.name, url: r.url, bootstrapRoot: r.root, dir: dir, http: opts.HTTP,
			limits: opts.Limits, now: opts.Now, log: opts.Log}
	}
	return c, nil
}

// Target is a release image as the release repository signed it.
type Target struct {
	Path          string
	Length        int64
	SHA256        []byte
	Manifest      firmware.Manifest
	AllowRollback bool   // signed by the release keys: installable on newer versions
	URL           string // where to download the image
}

// An Assignment is what the device should run, as both repositories sign
// it.
type Assignment struct {
	RolloutID string
	Target    *Target
	// Windows are the only times the device may install and reboot, as the
	// rollout repository signs them; empty means any time.
	Windows []protocol.Window
}

// Assignment refreshes both repositories and returns the device's
// assignment, or nil when the rollout repository lists none. A refusal
// wraps ErrRefused; an unreachable repository does not; a slow one wraps
// slowread.ErrTooSlow.
func (c *Client) Assignment(ctx context.Context) (*Assignment, error) {
	entry, err := c.rollout.lookup(ctx, protocol.AssignmentPath(c.opts.DeviceID))
	if err != nil || entry == nil {
		return nil, err
	}
	if entry.Custom == nil {
		return nil, &VerifyError{Code: CodeBadAssignment, Detail: "the rollout repository's entry for this device has no target"}
	}
	custom, err := protocol.ParseAssignmentCustom(*entry.Custom)
	if err != nil {
		return nil, &VerifyError{Code: CodeBadAssignment, Detail: "the rollout repository's entry for this device does not parse", Err: err}
	}
	tf, err := c.release.lookup(ctx, custom.Target)
	if err != nil {
		var ve *VerifyError
		if errors.As(err, &ve) {
			ve.Target = custom.Target
		}
		return nil, err
	}
	if tf == nil {
		return nil, &VerifyError{Target: custom.Target, Code: CodeNotSigned,
			Detail: "the release repository has no signed entry for the assigned target; it is not a release of the manufacturer"}
	}
	// The director may only pick among signed images: the same length and
	// the same hashes, every algorithm either side lists.
	if tf.Length != entry.Length || !maps.EqualFunc(tf.Hashes, entry.Hashes, func(a, b metadata.HexBytes) bool { return bytes.Equal(a, b) }) {
		return nil, &VerifyError{Target: custom.Target, Code: CodeDisagree, Detail: fmt.Sprintf(
			"the rollout repository assigns %d bytes with hashes %v but the release repository signs %d bytes with hashes %v for %s; the fleet server's assignment was altered",
			entry.Length, hexHashes(entry.Hashes), tf.Length, hexHashes(tf.Hashes), custom.Target)}
	}
	t, err := targetOf(c.opts.ReleaseURL, custom.Target, tf)
	if err != nil {
		return nil, err
	}
	return &Assignment{RolloutID: custom.RolloutID, Target: t, Windows: custom.Windows}, nil
}

func hexHashes(h metadata.Hashes) map[string]string {
	out := map[string]string{}
	for k, v := range h {
		out[k] = hex.EncodeToString(v)
	}
	return out
}

func targetOf(repoURL, targetPath string, tf *metadata.TargetFiles) (*Target, error) {
	refuse := func(detail string, err error) (*Target, error) {
		return nil, &VerifyError{Target: targetPath, Code: CodeInvalid, Detail: detail, Err: err}
	}
	digest, ok := tf.Hashes["sha256"]
	if !ok || len(digest) != 32 {
		return refuse("the signed entry has no sha256 hash", nil)
	}
	custom, err := firmware.ParseTargetCustom(tf.Custom)
	if err != nil {
		return refuse("the signed entry has no valid manifest", err)
	}
	m := custom.Manifest
	// The signed manifest must describe exactly the signed file.
	if m.TargetPath() != targetPath || m.Image.Length != tf.Length || m.Image.SHA256 != hex.EncodeToString(digest) {
		return refuse("the signed manifest does not describe the signed image", nil)
	}
	dir, name := path.Split(targetPath)
	u, err := url.JoinPath(repoURL, "targets", dir, hex.EncodeToString(digest)+"."+name)
	if err != nil {
		return nil, err
	}
	return &Target{Path: targetPath, Length: tf.Length, SHA256: digest, Manifest: m, AllowRollback: custom.AllowRollback, URL: u}, nil
}

// Check applies the device's own rules to a signed target: the release
// must be for this model and hardware revision, and must not be older than
// what runs now unless the release keys signed its rollback flag.
func Check(t *Target, model, hardwareRevision, running string) error {
	m := t.Manifest
	if !m.AppliesTo(model, hardwareRevision) {
		return &VerifyError{Target: t.Path, Code: CodeModel, Detail: fmt.Sprintf("the release is for %v (revisions %v), this device is %s revision %s",
			m.Models, m.HardwareRevisions, model, hardwareRevision)}
	}
	if firmware.CompareVersions(m.Version, running) < 0 && !t.AllowRollback {
		return &VerifyError{Target: t.Path, Code: CodeDowngrade, Detail: fmt.Sprintf("release %s is older than the running %s and the release keys did not sign it for rollback",
			m.Version, running)}
	}
	return nil
}
