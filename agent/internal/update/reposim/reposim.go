// Package reposim simulates the fleet server's two TUF repositories for the
// agent's tests: a release repository (root keys 2 of 3, one release key,
// online snapshot and timestamp keys) and a rollout repository (the same
// root keys, one online key, hash-binned device assignments), built with
// go-tuf in a directory and served over real loopback HTTP at
// /tuf/release/ and /tuf/rollout/, as the fleet server serves them.
//
// It is independent of the server's own repository code on purpose: the
// agent is tested against the TUF specification as go-tuf implements it,
// and the end-to-end tests check that the server produces the same.
//
// A test holds every key, so it can publish what an attacker could:
// expired, replayed, mixed, oversized or wrongly signed metadata (Publish
// with options, Files and Put to replace a served file), and its Tamper
// hook (SetTamper) can serve other bytes, trickle them or never stop.
//
// A Sim is not safe for concurrent use, except for serving, which runs
// under the Sim's lock.
package reposim

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/aftercare/aftercare/firmware"
	"github.com/aftercare/aftercare/protocol"
	"github.com/aftercare/aftercare/signing"
)

// Expiries of what Publish signs, from Sim.Now.
const (
	RootExpiry      = 365 * 24 * time.Hour
	TargetsExpiry   = 365 * 24 * time.Hour
	SnapshotExpiry  = 7 * 24 * time.Hour
	TimestampExpiry = 24 * time.Hour
)

// Sim is the pair of repositories and the server serving them.
type Sim struct {
	t   testing.TB
	dir string
	srv *httptest.Server

	// Now is the server's clock: what it signs as expiry and signing time.
	Now time.Time

	Release  *Repo
	Rollout  *Repo
	RootKeys []signature.Signer // three root keys; the roots need two

	mu       sync.Mutex
	tamper   TamperFunc     // guarded by mu
	requests map[string]int // guarded by mu
}

// A TamperFunc may answer a request itself (returning true): a malicious
// mirror, a slow or an endless server. file is the request path below
// /tuf/, e.g. "release/metadata/timestamp.json".
type TamperFunc func(w http.ResponseWriter, r *http.Request, file string) bool

// SetTamper installs f for every following request; nil serves the files
// as they are.
func (s *Sim) SetTamper(f TamperFunc) {
	s.mu.Lock()
	s.tamper = f
	s.mu.Unlock()
}

// Repo is one simulated repository.
type Repo struct {
	sim      *Sim
	Name     string // "release" or "rollout"
	dir      string
	Root     *metadata.Metadata[metadata.RootType]
	Targets  *metadata.Metadata[metadata.TargetsType]
	Bins     map[string]*metadata.Metadata[metadata.TargetsType] // rollout only
	BinBits  int                                                 // rollout only
	snapV    int64
	tsV      int64
	rootJSON [][]byte // every root version, [0] is v1

	// Keys the repository's roles sign with; tests may swap them.
	TargetsKey, SnapshotKey, TimestampKey signature.Signer
}

// NewKey returns a fresh in-memory ed25519 signer.
func NewKey(t testing.TB) signature.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := signing.SignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// New builds both repositories, publishes their empty first state and
// starts serving them.
func New(t testing.TB) *Sim {
	t.Helper()
	s := &Sim{t: t, dir: t.TempDir(), Now: time.Now().UTC().Truncate(time.Second), requests: map[string]int{}}
	s.RootKeys = []signature.Signer{NewKey(t), NewKey(t), NewKey(t)}
	online := NewKey(t)
	s.Release = s.newRepo("release", NewKey(t), NewKey(t), NewKey(t))
	s.Rollout = s.newRepo("rollout", online, online, online)
	s.Rollout.BinBits = 4
	s.Rollout.Bins = map[string]*metadata.Metadata[metadata.TargetsType]{}
	s.Publish(s.Release)
	s.Publish(s.Rollout)
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *Sim) newRepo(name string, targets, snapshot, timestamp signature.Signer) *Repo {
	r := &Repo{sim: s, Name: name, dir: filepath.Join(s.dir, name), TargetsKey: targets, SnapshotKey: snapshot, TimestampKey: timestamp}
	for _, d := range []string{"metadata", "targets"} {
		if err := os.MkdirAll(filepath.Join(r.dir, d), 0o755); err != nil {
			s.t.Fatal(err)
		}
	}
	r.Root = metadata.Root(s.Now.Add(RootExpiry))
	r.Root.Signed.ConsistentSnapshot = true
	for _, k := range s.RootKeys {
		r.addKey(metadata.ROOT, k)
	}
	r.Root.Signed.Roles[metadata.ROOT].Threshold = 2
	r.addKey(metadata.TARGETS, targets)
	r.addKey(metadata.SNAPSHOT, snapshot)
	r.addKey(metadata.TIMESTAMP, timestamp)
	r.signRoot(s.RootKeys[:2]...)
	r.Targets = metadata.Targets(s.Now.Add(TargetsExpiry))
	r.Targets.Signed.Version = 0
	return r
}

func (r *Repo) addKey(role string, k signature.Signer) {
	key, err := signing.TUFKey(k)
	if err != nil {
		r.sim.t.Fatal(err)
	}
	if err := r.Root.Signed.AddKey(key, role); err != nil {
		r.sim.t.Fatal(err)
	}
}

// signRoot signs the current root with the given keys and stores it as
// its version.
func (r *Repo) signRoot(keys ...signature.Signer) {
	r.Root.ClearSignatures()
	for _, k := range keys {
		if _, err := r.Root.Sign(k); err != nil {
			r.sim.t.Fatal(err)
		}
	}
	b := r.write(fmt.Sprintf("metadata/%d.root.json", r.Root.Signed.Version), r.Root)
	r.rootJSON = append(r.rootJSON, b)
}

// RootJSON returns the signed root of a version (1 is what devices ship).
func (r *Repo) RootJSON(version int) []byte { return r.rootJSON[version-1] }

// URL is the repository's base URL, as the agent is configured with it.
func (r *Repo) URL() string { return r.sim.srv.URL + "/tuf/" + r.Name }

// ServerURL is the simulated fleet server's base URL.
func (s *Sim) ServerURL() string { return s.srv.URL }

type toBytes interface{ ToBytes(bool) ([]byte, error) }

func (r *Repo) write(name string, m toBytes) []byte {
	b, err := m.ToBytes(false)
	if err != nil {
		r.sim.t.Fatal(err)
	}
	r.Put(name, b)
	return b
}

// Put replaces a served file of the repository, e.g.
// "metadata/timestamp.json", with b.
func (r *Repo) Put(name string, b []byte) {
	r.sim.mu.Lock()
	defer r.sim.mu.Unlock()
	p := filepath.Join(r.dir, filepath.FromSlash(name))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		r.sim.t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		r.sim.t.Fatal(err)
	}
}

// File returns a served file of the repository.
func (r *Repo) File(name string) []byte {
	r.sim.mu.Lock()
	defer r.sim.mu.Unlock()
	b, err := os.ReadFile(filepath.Join(r.dir, filepath.FromSlash(name)))
	if err != nil {
		r.sim.t.Fatal(err)
	}
	return b
}

// AddRelease adds a release with a small uncompressed image to the
// release repository's targets (published by the next Publish) and
// returns its manifest.
func (s *Sim) AddRelease(version string, allowRollback bool, models ...string) firmware.Manifest {
	raw := []byte(strings.Repeat("image of "+version+"\n", 100))
	m := ManifestFor(raw, version, models...)
	s.AddReleaseImage(m, raw, allowRollback)
	return m
}

// ManifestFor describes raw as an uncompressed release image.
func ManifestFor(raw []byte, version string, models ...string) firmware.Manifest {
	sum := sha256.Sum256(raw)
	h := hex.EncodeToString(sum[:])
	return firmware.Manifest{Format: 1, Product: "pump", Version: version, Models: models,
		Image: firmware.Image{Compression: firmware.CompressionNone, Length: int64(len(raw)), SHA256: h, RawLength: int64(len(raw)), RawSHA256: h}}
}

// AddReleaseImage lists m in the release targets and stores raw as its
// image.
func (s *Sim) AddReleaseImage(m firmware.Manifest, raw []byte, allowRollback bool) {
	entry, err := signing.TargetEntry(&m, allowRollback)
	if err != nil {
		s.t.Fatal(err)
	}
	s.Release.Targets.Signed.Targets[entry.Path] = entry
	dir, name := path.Split(entry.Path)
	s.Release.Put(path.Join("targets", dir, m.Image.SHA256+"."+name), raw)
}

// Assign makes the rollout repository assign the release at targetPath to
// the device, copying its length and hashes from the release repository.
func (s *Sim) Assign(deviceID, rolloutID, targetPath string) {
	rel, ok := s.Release.Targets.Signed.Targets[targetPath]
	if !ok {
		s.t.Fatalf("reposim: %s is not in the release repository; use AssignRaw to assign anything else", targetPath)
	}
	s.AssignRaw(deviceID, rolloutID, targetPath, rel.Length, rel.Hashes)
}

// AssignInWindows assigns a signed release that the device may install
// only inside the given maintenance windows.
func (s *Sim) AssignInWindows(deviceID, rolloutID, targetPath string, windows []protocol.Window) {
	s.Assign(deviceID, rolloutID, targetPath)
	tf := s.Rollout.bin(s.Rollout.BinOf(deviceID)).Signed.Targets[protocol.AssignmentPath(deviceID)]
	custom, _ := json.Marshal(protocol.AssignmentCustom{Target: targetPath, RolloutID: rolloutID, Windows: windows})
	raw := json.RawMessage(custom)
	tf.Custom = &raw
}

// AssignRaw makes the rollout repository assign any length and hashes
// under any target path: what a compromised server could sign.
func (s *Sim) AssignRaw(deviceID, rolloutID, targetPath string, length int64, hashes metadata.Hashes) {
	custom, _ := json.Marshal(protocol.AssignmentCustom{Target: targetPath, RolloutID: rolloutID})
	raw := json.RawMessage(custom)
	tf := metadata.TargetFile()
	tf.Path = protocol.AssignmentPath(deviceID)
	tf.Length, tf.Hashes, tf.Custom = length, hashes, &raw
	bin := s.Rollout.bin(s.Rollout.BinOf(deviceID))
	bin.Signed.Targets[tf.Path] = tf
}

// Unassign removes a device's assignment.
func (s *Sim) Unassign(deviceID string) {
	delete(s.Rollout.bin(s.Rollout.BinOf(deviceID)).Signed.Targets, protocol.AssignmentPath(deviceID))
}

func (r *Repo) succinct() *metadata.SuccinctRoles {
	key, _ := signing.TUFKey(r.TargetsKey)
	id, _ := key.ID()
	return &metadata.SuccinctRoles{KeyIDs: []string{id}, Threshold: 1, BitLength: r.BinBits, NamePrefix: "bins"}
}

// BinOf returns the bin holding a device's assignment.
func (r *Repo) BinOf(deviceID string) string {
	return r.succinct().GetRolesForTarget(protocol.AssignmentPath(deviceID))[0].Name
}

func (r *Repo) bin(name string) *metadata.Metadata[metadata.TargetsType] {
	b, ok := r.Bins[name]
	if !ok {
		b = metadata.Targets(r.sim.Now.Add(TargetsExpiry))
		b.Signed.Version = 0
		r.Bins[name] = b
	}
	return b
}

// PublishOptions change what Publish signs, to simulate attacks.
type PublishOptions struct {
	// TargetsKey signs targets (and bins) instead of the repository's key.
	TargetsKey signature.Signer
	// TimestampExpiry and SnapshotExpiry replace the defaults (from Now);
	// a negative value makes expired metadata.
	TimestampExpiry, SnapshotExpiry time.Duration
	// TargetsExpiry replaces the targets' and bins' default expiry.
	TargetsExpiry time.Duration
	// TimestampVersion forces the timestamp's version (a fast-forward).
	TimestampVersion int64
}

// Publish signs and writes a new state of the repository: targets (and
// every bin), snapshot, then timestamp, each with the next version.
func (s *Sim) Publish(r *Repo, opts ...PublishOptions) {
	var o PublishOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	if o.TargetsKey == nil {
		o.TargetsKey = r.TargetsKey
	}
	if o.TimestampExpiry == 0 {
		o.TimestampExpiry = TimestampExpiry
	}
	if o.SnapshotExpiry == 0 {
		o.SnapshotExpiry = SnapshotExpiry
	}
	if o.TargetsExpiry == 0 {
		o.TargetsExpiry = TargetsExpiry
	}
	snap := metadata.Snapshot(s.Now.Add(o.SnapshotExpiry))
	sign := func(name string, t *metadata.Metadata[metadata.TargetsType]) {
		t.Signed.Version++
		t.Signed.Expires = s.Now.Add(o.TargetsExpiry)
		t.ClearSignatures()
		if _, err := t.Sign(o.TargetsKey); err != nil {
			s.t.Fatal(err)
		}
		b := r.write(fmt.Sprintf("metadata/%d.%s.json", t.Signed.Version, name), t)
		snap.Signed.Meta[name+".json"] = metaFile(t.Signed.Version, b)
	}
	if r.Bins != nil {
		succ := r.succinct()
		key, _ := signing.TUFKey(r.TargetsKey)
		r.Targets.Signed.Delegations = &metadata.Delegations{Keys: map[string]*metadata.Key{succ.KeyIDs[0]: key}, SuccinctRoles: succ}
		for _, name := range succ.GetRoles() {
			sign(name, r.bin(name))
		}
	}
	sign(metadata.TARGETS, r.Targets)
	r.snapV++
	snap.Signed.Version = r.snapV
	if _, err := snap.Sign(r.SnapshotKey); err != nil {
		s.t.Fatal(err)
	}
	sb := r.write(fmt.Sprintf("metadata/%d.snapshot.json", r.snapV), snap)
	r.tsV++
	if o.TimestampVersion != 0 {
		r.tsV = o.TimestampVersion
	}
	ts := metadata.Timestamp(s.Now.Add(o.TimestampExpiry))
	ts.Signed.Version = r.tsV
	ts.Signed.UnrecognizedFields = map[string]any{protocol.SignedAtField: s.Now.UTC().Format(time.RFC3339)}
	ts.Signed.Meta["snapshot.json"] = metaFile(r.snapV, sb)
	if _, err := ts.Sign(r.TimestampKey); err != nil {
		s.t.Fatal(err)
	}
	r.write("metadata/timestamp.json", ts)
}

func metaFile(v int64, b []byte) *metadata.MetaFiles {
	sum := sha256.Sum256(b)
	mf := metadata.MetaFile(v)
	mf.Length = int64(len(b))
	mf.Hashes = metadata.Hashes{"sha256": sum[:]}
	return mf
}

// RotateOptions say how RotateRoot changes the root.
type RotateOptions struct {
	// Role and NewKey replace every key of a role (targets, snapshot,
	// timestamp or root) with one new key; Role "online" replaces the
	// rollout repository's one online key in all three roles.
	Role   string
	NewKey signature.Signer
	// SignWith overrides who signs the new root; default the first two
	// root keys (and the new root key, for a root rotation).
	SignWith []signature.Signer
}

// RotateRoot writes the next root version of r. It does not publish: the
// server signs the next state with the new keys in the next Publish.
func (s *Sim) RotateRoot(r *Repo, o RotateOptions) {
	r.Root.Signed.Version++
	r.Root.Signed.Expires = s.Now.Add(RootExpiry)
	roles := []string{o.Role}
	if o.Role == "online" {
		roles = []string{metadata.TARGETS, metadata.SNAPSHOT, metadata.TIMESTAMP}
	}
	for _, role := range roles {
		if o.Role == "" {
			break
		}
		for _, id := range append([]string(nil), r.Root.Signed.Roles[role].KeyIDs...) {
			r.Root.Signed.RevokeKey(id, role)
		}
		r.addKey(role, o.NewKey)
		switch role {
		case metadata.TARGETS:
			r.TargetsKey = o.NewKey
		case metadata.SNAPSHOT:
			r.SnapshotKey = o.NewKey
		case metadata.TIMESTAMP:
			r.TimestampKey = o.NewKey
		}
	}
	signers := o.SignWith
	if signers == nil {
		signers = s.RootKeys[:2]
		if o.Role == metadata.ROOT {
			signers = append(signers[:2:2], o.NewKey)
		}
	}
	if o.Role == metadata.ROOT {
		r.Root.Signed.Roles[metadata.ROOT].Threshold = 1
	}
	r.signRoot(signers...)
}

// Trickle answers a request with b one byte at a time, a pause between
// bytes, until the client gives up: a slow retrieval attack. It is meant
// for a TamperFunc.
func Trickle(w http.ResponseWriter, r *http.Request, b []byte, pause time.Duration) {
	for i := range b {
		if _, err := w.Write(b[i : i+1]); err != nil {
			return
		}
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
			return
		case <-time.After(pause):
		}
	}
}

// Requests returns how often a file (below /tuf/, e.g.
// "rollout/metadata/timestamp.json") was requested.
func (s *Sim) Requests(file string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests[file]
}

func (s *Sim) serve(w http.ResponseWriter, r *http.Request) {
	file, ok := strings.CutPrefix(r.URL.Path, "/tuf/")
	if !ok || strings.Contains(file, "..") {
		http.NotFound(w, r)
		return
	}
	s.mu.Lock()
	s.requests[file]++
	tamper := s.tamper
	s.mu.Unlock()
	if tamper != nil && tamper(w, r, file) {
		return
	}
	s.mu.Lock()
	b, err := os.ReadFile(filepath.Join(s.dir, filepath.FromSlash(file)))
	s.mu.Unlock()
	if err != nil {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Write(b)
}
