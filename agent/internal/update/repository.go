package update

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/trustedmetadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"

	"github.com/aftercare/aftercare/agent/internal/slowread"
	"github.com/aftercare/aftercare/internal/atomicfile"
	"github.com/aftercare/aftercare/protocol"
)

// Size limits on metadata the device downloads. The signed lengths in
// timestamp and snapshot bound most files; these bound the rest (root
// versions, timestamp) and any file listed without a length.
const (
	maxRootBytes      = 512 << 10 // 512 KiB
	maxTimestampBytes = 16 << 10  // 16 KiB
	maxSnapshotBytes  = 2 << 20   // 2 MiB
	maxTargetsBytes   = 8 << 20   // 8 MiB
	maxStateBytes     = 1 << 20   // 1 MiB
	// metadataTimeout bounds the download of one metadata file.
	metadataTimeout = 2 * time.Minute
)

// stateFormat is the format version of a repository's state file.
const stateFormat = 1

// repoState is what the device remembers of one repository, beside its
// last-known-good metadata files. It only ever moves forward.
type repoState struct {
	Format      int   `json:"format"`
	RootVersion int64 `json:"root_version"`
	// Roles holds the last verified version of each role with the keys
	// that signed it. A version floor holds only while the role's keys are
	// the same: after a rotation (revoking a key that fast-forwarded the
	// version) it starts again, as TUF 5.3.11 requires.
	Roles map[string]roleState `json:"roles"`
	// TimeFloor is the newest signing time of a verified timestamp; the
	// device never checks expiry against an earlier time, whatever its
	// clock says. It is kept with the timestamp keys that vouched for it.
	TimeFloor     time.Time `json:"time_floor"`
	TimeFloorKeys string    `json:"time_floor_keys"`
}

type roleState struct {
	Version int64  `json:"version"`
	Keys    string `json:"keys"` // threshold and sorted key IDs
}

// repository is one TUF repository as the device trusts it:
//
//	<dir>/trusted/    last-known-good metadata, written with fsync, verified
//	<dir>/state.json  versions and the time floor (repoState)
//	<dir>/cache/      go-tuf's working copy, rebuilt from trusted/ before
//	                  every refresh (go-tuf writes it without fsync)
type repository struct {
	name          string // "release" or "rollout", for messages
	url           string
	bootstrapRoot []byte
	dir           string
	http          *http.Client
	limits        slowread.Limits
	now           func() time.Time
	log           *slog.Logger
}

func (r *repository) trustedDir() string { return filepath.Join(r.dir, "trusted") }
func (r *repository) cacheDir() string   { return filepath.Join(r.dir, "cache") }
func (r *repository) statePath() string  { return filepath.Join(r.dir, "state.json") }

func (r *repository) loadState() (*repoState, error) {
	st := &repoState{Format: stateFormat, Roles: map[string]roleState{}}
	b, err := readLimited(r.statePath(), maxStateBytes)
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, st); err != nil || st.Format != stateFormat {
		return nil, fmt.Errorf("%s repository state %s is damaged or of another format", r.name, r.statePath())
	}
	if st.Roles == nil {
		st.Roles = map[string]roleState{}
	}
	return st, nil
}

// trustedRoot returns the newest root the device trusts: its own verified
// copy, or the one shipped in the image when that is newer (a reflashed
// device) or no copy exists yet.
func (r *repository) trustedRoot(st *repoState) ([]byte, *metadata.Metadata[metadata.RootType], error) {
	boot, err := new(metadata.Metadata[metadata.RootType]).FromBytes(r.bootstrapRoot)
	if err != nil {
		return nil, nil, fmt.Errorf("%s repository: the root shipped in the image does not parse: %w", r.name, err)
	}
	b, err := readLimited(filepath.Join(r.trustedDir(), "root.json"), maxRootBytes)
	if errors.Is(err, os.ErrNotExist) {
		if boot.Signed.Version < st.RootVersion {
			return nil, nil, fmt.Errorf("%s repository: root v%d was trusted but its copy is gone; refusing to fall back to the image's root v%d", r.name, st.RootVersion, boot.Signed.Version)
		}
		return r.bootstrapRoot, boot, nil
	}
	if err != nil {
		return nil, nil, err
	}
	kept, err := new(metadata.Metadata[metadata.RootType]).FromBytes(b)
	if err != nil || kept.Signed.Version < st.RootVersion {
		return nil, nil, fmt.Errorf("%s repository: the trusted root on disk is damaged or older than the trusted v%d", r.name, st.RootVersion)
	}
	if boot.Signed.Version > kept.Signed.Version {
		return r.bootstrapRoot, boot, nil
	}
	return b, kept, nil
}

// lookup refreshes the repository, as TUF's client workflow says, and
// returns the signed entry of targetPath, or nil when no role lists it.
// On success the verified metadata becomes the device's last-known-good.
func (r *repository) lookup(ctx context.Context, targetPath string) (*metadata.TargetFiles, error) {
	st, err := r.loadState()
	if err != nil {
		return nil, err
	}
	rootBytes, root, err := r.trustedRoot(st)
	if err != nil {
		return nil, err
	}
	floor := st.TimeFloor
	if st.TimeFloorKeys != roleKeys(root, metadata.TIMESTAMP) {
		floor = time.Time{} // the keys that vouched for it were rotated away
	}
	tf, trusted, err := r.refresh(ctx, rootBytes, floor, targetPath)
	if err != nil && errors.Is(err, &metadata.ErrExpiredMetadata{}) && !floor.IsZero() && trusted != nil &&
		roleKeys(trusted.Root, metadata.TIMESTAMP) != st.TimeFloorKeys {
		// This refresh moved to a root with new timestamp keys; the floor
		// came from the old ones, which may have lied (TUF 5.3.11).
		r.log.Warn("security event", "event", "time floor reset after timestamp key rotation", "repository", r.name, "floor", floor)
		tf, trusted, err = r.refresh(ctx, rootBytes, time.Time{}, targetPath)
	}
	if trusted != nil && trusted.Root.Signed.Version > root.Signed.Version {
		// TUF 5.3.8: a verified new root is kept even if a later step fails.
		if perr := r.persistRoot(st, trusted); perr != nil {
			return nil, perr
		}
	}
	if err != nil {
		return nil, classify(r.name, err)
	}
	if err := r.checkFloors(st, trusted); err != nil {
		return nil, err
	}
	if err := r.persist(st, trusted); err != nil {
		return nil, err
	}
	return tf, nil
}

// refresh runs go-tuf on a working copy rebuilt from the trusted files.
// It returns the trusted metadata set whenever go-tuf got as far as loading
// the root.
func (r *repository) refresh(ctx context.Context, rootBytes []byte, floor time.Time, targetPath string) (*metadata.TargetFiles, *trustedmetadata.TrustedMetadata, error) {
	if err := r.prepareCache(); err != nil {
		return nil, nil, err
	}
	cfg, err := config.New(r.url+"/metadata", rootBytes)
	if err != nil {
		return nil, nil, err
	}
	cfg.LocalMetadataDir = r.cacheDir()
	// go-tuf insists on a targets directory; images never go through it.
	cfg.LocalTargetsDir = filepath.Join(r.cacheDir(), "targets")
	cfg.RemoteTargetsURL = r.url + "/targets"
	cfg.Fetcher = &fetcher{ctx: ctx, client: r.http, limits: r.limits}
	cfg.RootMaxLength, cfg.TimestampMaxLength = maxRootBytes, maxTimestampBytes
	cfg.SnapshotMaxLength, cfg.TargetsMaxLength = maxSnapshotBytes, maxTargetsBytes
	up, err := updater.New(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("%s repository: load trusted root: %w", r.name, err)
	}
	now := r.now().UTC()
	ref := now
	if floor.After(now) {
		r.log.Warn("security event", "event", "device clock behind the newest signed time", "repository", r.name,
			"clock", now, "floor", floor)
		ref = floor
	}
	// Expiry is checked against the later of the clock and the floor, so a
	// clock set back never makes old metadata look fresh.
	up.UnsafeSetRefTime(ref)
	err = up.Refresh()
	trusted := up.GetTrustedMetadataSet()
	if err != nil {
		return nil, &trusted, err
	}
	tf, err := up.GetTargetInfo(targetPath)
	trusted = up.GetTrustedMetadataSet()
	if err != nil {
		// go-tuf reports a target no role lists with this plain error;
		// everything else is a download or verification failure.
		if err.Error() == fmt.Sprintf("target %s not found", targetPath) {
			return nil, &trusted, nil
		}
		return nil, &trusted, err
	}
	return tf, &trusted, nil
}

// prepareCache rebuilds go-tuf's working directory from the trusted
// files, so go-tuf's rollback checks start from the last-known-good state.
func (r *repository) prepareCache() error {
	if err := os.RemoveAll(r.cacheDir()); err != nil {
		return err
	}
	if err := os.MkdirAll(r.cacheDir(), 0o700); err != nil {
		return err
	}
	entries, err := os.ReadDir(r.trustedDir())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.Name() == "root.json" || !strings.HasSuffix(e.Name(), ".json") {
			continue // the root is given to go-tuf directly
		}
		b, err := readLimited(filepath.Join(r.trustedDir(), e.Name()), maxTargetsBytes)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(r.cacheDir(), e.Name()), b, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// roleKeys names the keys and threshold of a top-level role.
func roleKeys(root *metadata.Metadata[metadata.RootType], role string) string {
	r, ok := root.Signed.Roles[role]
	if !ok {
		return ""
	}
	return keysString(r.KeyIDs, r.Threshold)
}

func keysString(ids []string, threshold int) string {
	ids = slices.Clone(ids)
	slices.Sort(ids)
	return fmt.Sprintf("%d:%s", threshold, strings.Join(ids, ","))
}

// delegatedKeys names the keys of a delegated role as its delegator
// trusts them.
func delegatedKeys(trusted *trustedmetadata.TrustedMetadata, role string) string {
	for _, parent := range trusted.Targets {
		d := parent.Signed.Delegations
		if d == nil {
			continue
		}
		if d.SuccinctRoles != nil && d.SuccinctRoles.IsDelegatedRole(role) {
			return keysString(d.SuccinctRoles.KeyIDs, d.SuccinctRoles.Threshold)
		}
		for _, dr := range d.Roles {
			if dr.Name == role {
				return keysString(dr.KeyIDs, dr.Threshold)
			}
		}
	}
	return ""
}

// versions returns each trusted role's version and keys.
func versions(trusted *trustedmetadata.TrustedMetadata) map[string]roleState {
	out := map[string]roleState{}
	if trusted.Timestamp != nil {
		out[metadata.TIMESTAMP] = roleState{trusted.Timestamp.Signed.Version, roleKeys(trusted.Root, metadata.TIMESTAMP)}
	}
	if trusted.Snapshot != nil {
		out[metadata.SNAPSHOT] = roleState{trusted.Snapshot.Signed.Version, roleKeys(trusted.Root, metadata.SNAPSHOT)}
	}
	for role, t := range trusted.Targets {
		keys := roleKeys(trusted.Root, role)
		if role != metadata.TARGETS {
			keys = delegatedKeys(trusted, role)
		}
		out[role] = roleState{t.Signed.Version, keys}
	}
	return out
}

// checkFloors refuses metadata older than what the device trusted before
// under the same keys: the persisted second line behind go-tuf's own
// checks, which start from the restored last-known-good files.
func (r *repository) checkFloors(st *repoState, trusted *trustedmetadata.TrustedMetadata) error {
	for role, now := range versions(trusted) {
		was, ok := st.Roles[role]
		if ok && was.Keys == now.Keys && now.Version < was.Version {
			return &VerifyError{Code: CodeRollback, Detail: fmt.Sprintf("%s repository: %s is version %d but version %d was trusted before; an old repository state is being replayed",
				r.name, role, now.Version, was.Version)}
		}
	}
	return nil
}

// persistRoot keeps a newly verified root before anything else.
func (r *repository) persistRoot(st *repoState, trusted *trustedmetadata.TrustedMetadata) error {
	b, err := os.ReadFile(filepath.Join(r.cacheDir(), "root.json"))
	if err != nil {
		return err
	}
	got, err := new(metadata.Metadata[metadata.RootType]).FromBytes(b)
	if err != nil || got.Signed.Version != trusted.Root.Signed.Version {
		return fmt.Errorf("%s repository: go-tuf's copy of root v%d is missing or differs", r.name, trusted.Root.Signed.Version)
	}
	if err := os.MkdirAll(r.trustedDir(), 0o700); err != nil {
		return err
	}
	if err := atomicfile.WriteFile(filepath.Join(r.trustedDir(), "root.json"), b, 0o600); err != nil {
		return err
	}
	st.RootVersion = trusted.Root.Signed.Version
	return r.writeState(st)
}

// persist makes the verified metadata the last-known-good copies (fsynced
// files, one directory sync), then records versions and the time floor.
// A power cut in between leaves newer files with older floors, which only
// move forward at the next refresh.
func (r *repository) persist(st *repoState, trusted *trustedmetadata.TrustedMetadata) error {
	now := versions(trusted)
	files := map[string][]byte{}
	for role, v := range now {
		b, err := readLimited(filepath.Join(r.cacheDir(), role+".json"), maxTargetsBytes)
		if err != nil {
			return fmt.Errorf("%s repository: go-tuf's copy of %s: %w", r.name, role, err)
		}
		var probe struct {
			Signed struct {
				Version int64 `json:"version"`
			} `json:"signed"`
		}
		if err := json.Unmarshal(b, &probe); err != nil || probe.Signed.Version != v.Version {
			return fmt.Errorf("%s repository: go-tuf's copy of %s is not the verified version %d", r.name, role, v.Version)
		}
		files[role+".json"] = b
	}
	rootBytes, err := os.ReadFile(filepath.Join(r.cacheDir(), "root.json"))
	if err != nil {
		return err
	}
	files["root.json"] = rootBytes
	if err := os.MkdirAll(r.trustedDir(), 0o700); err != nil {
		return err
	}
	if err := atomicfile.WriteFiles(r.trustedDir(), files, 0o600); err != nil {
		return err
	}
	st.RootVersion = trusted.Root.Signed.Version
	for role, v := range now {
		st.Roles[role] = v
	}
	if signedAt, ok := signedAt(trusted.Timestamp); ok {
		keys := roleKeys(trusted.Root, metadata.TIMESTAMP)
		if keys != st.TimeFloorKeys || signedAt.After(st.TimeFloor) {
			st.TimeFloor, st.TimeFloorKeys = signedAt, keys
		}
	}
	return r.writeState(st)
}

// signedAt reads the signing time the fleet server puts into its
// timestamps; a time after the timestamp's own expiry is ignored.
func signedAt(ts *metadata.Metadata[metadata.TimestampType]) (time.Time, bool) {
	if ts == nil {
		return time.Time{}, false
	}
	s, ok := ts.Signed.UnrecognizedFields[protocol.SignedAtField].(string)
	if !ok {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil || t.After(ts.Signed.Expires) {
		return time.Time{}, false
	}
	return t.UTC(), true
}

func (r *repository) writeState(st *repoState) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(r.statePath(), b, 0o600)
}

func readLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, limit)
	}
	return b, nil
}

// fetcher is go-tuf's metadata fetcher, bound to a context, an HTTP client
// with timeouts (go-tuf's default fetcher has none) and slow-retrieval
// limits.
type fetcher struct {
	ctx    context.Context
	client *http.Client
	limits slowread.Limits
}

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
	body := slowread.New(io.LimitReader(res.Body, maxLength+1), f.limits, cancel)
	b, err := io.ReadAll(body)
	if err != nil {
		if errors.Is(err, slowread.ErrTooSlow) {
			return nil, fmt.Errorf("download %s: %w", urlPath, err)
		}
		return nil, &netError{err}
	}
	if int64(len(b)) > maxLength {
		return nil, &metadata.ErrDownloadLengthMismatch{Msg: fmt.Sprintf("%s is more than the %d bytes allowed", urlPath, maxLength)}
	}
	return b, nil
}
