package api_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"

	"github.com/aftercare/aftercare/firmware"
	"github.com/aftercare/aftercare/server/internal/access"
	"github.com/aftercare/aftercare/server/internal/api"
	"github.com/aftercare/aftercare/server/internal/deviceca"
	"github.com/aftercare/aftercare/server/internal/fleet"
	"github.com/aftercare/aftercare/server/internal/release"
	rolloutengine "github.com/aftercare/aftercare/server/internal/rollout"
	"github.com/aftercare/aftercare/server/internal/store"
	"github.com/aftercare/aftercare/server/internal/store/storetest"
	"github.com/aftercare/aftercare/server/internal/tufrepo"
	"github.com/aftercare/aftercare/server/internal/vuln"
	"github.com/aftercare/aftercare/signing"
)

const adminToken = "test-admin-token"

// stack is a fleet server without a broker, on real storage.
type stack struct {
	srv      *httptest.Server
	store    *store.Store
	repoDir  string
	dataDir  string
	keysDir  string
	targets  signature.Signer
	snapshot signature.Signer
	rootKey  signature.Signer
	// rolloutDir holds the rollout repository.
	rolloutDir string
	handler    http.Handler // the *echo.Echo
	ca         *deviceca.CA
	fleet      *fleet.Service
	crlPath    string
}

// storeSource reads assignments for the rollout repository from the store,
// as the server does.
type storeSource struct{ st *store.Store }

func (s storeSource) AssignedDevices(ctx context.Context) ([]string, error) {
	return s.st.AssignedDevices(ctx)
}

func (s storeSource) Assignments(ctx context.Context, ids []string) ([]tufrepo.Assignment, error) {
	rows, err := s.st.AssignmentsOf(ctx, ids)
	var out []tufrepo.Assignment
	for _, r := range rows {
		out = append(out, tufrepo.Assignment{DeviceID: r.DeviceID, RolloutID: r.RolloutID, TargetPath: r.TargetPath})
	}
	return out, err
}

func newStack(t *testing.T) *stack {
	t.Helper()
	return newStackWith(t, storetest.SQLite(t), nil)
}

// newStackWith builds a stack on s with the clock now (nil: time.Now).
func newStackWith(t *testing.T, s *store.Store, now func() time.Time) *stack {
	t.Helper()
	ctx := context.Background()
	st := &stack{dataDir: t.TempDir(), keysDir: t.TempDir(), store: s}
	if _, err := signing.InitRepository(ctx, signing.InitOptions{Dir: st.keysDir}); err != nil {
		t.Fatal(err)
	}
	load := func(name string) signature.Signer {
		s, err := signing.LoadSigner(ctx, filepath.Join(st.keysDir, name), nil)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	st.targets, st.snapshot = load(signing.OfflineKeyFile("targets", signing.DefaultTargetsHolder)), load(signing.SnapshotKeyFile)
	st.rootKey = load(signing.OfflineKeyFile("root", signing.DefaultRootHolder))
	log := slog.New(slog.DiscardHandler)
	st.repoDir = filepath.Join(st.dataDir, "repo")
	root, _ := os.ReadFile(filepath.Join(st.keysDir, signing.RootFile))
	repo, err := tufrepo.Open(tufrepo.Options{Dir: st.repoDir, SnapshotSigner: st.snapshot, TimestampSigner: load(signing.TimeKeyFile), Log: log}, root)
	if err != nil {
		t.Fatal(err)
	}
	people, err := access.New(access.Options{Store: st.store, Log: log, AdminToken: adminToken, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	vulns, err := vuln.New(vuln.Options{Store: st.store, Log: log, Audit: people.AuditDisposition})
	if err != nil {
		t.Fatal(err)
	}
	rel, err := release.New(release.Options{Store: st.store, Repo: repo, StagingDir: filepath.Join(st.dataDir, "staging"), SBOMDir: filepath.Join(st.dataDir, "sboms"), Log: log, SBOMs: vulns})
	if err != nil {
		t.Fatal(err)
	}
	st.rolloutDir = filepath.Join(st.dataDir, "rollout")
	rolloutRoot, _ := os.ReadFile(filepath.Join(st.keysDir, signing.RolloutRootFile))
	rollout, err := tufrepo.OpenRollout(tufrepo.RolloutOptions{Dir: st.rolloutDir, Signer: load(signing.RolloutKeyFile), Release: repo,
		Source: storeSource{st.store}, BinBits: 2, Log: log}, rolloutRoot)
	if err != nil {
		t.Fatal(err)
	}
	if st.ca, err = deviceca.Open(st.dataDir, "", "", time.Now()); err != nil {
		t.Fatal(err)
	}
	st.crlPath = filepath.Join(st.dataDir, deviceca.CRLFile)
	fl, err := fleet.New(fleet.Options{Store: st.store, Log: log, CA: st.ca, CRLPath: st.crlPath})
	if err != nil {
		t.Fatal(err)
	}
	st.fleet = fl
	engine, err := rolloutengine.New(rolloutengine.Options{Store: st.store, Log: log, Publisher: rollout, Audit: people.AuditRollout, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	h, err := api.New(api.Options{Fleet: fl, Releases: rel, Repo: repo, Rollout: rollout, RepoDir: st.repoDir, RolloutDir: st.rolloutDir,
		Access: people, Store: st.store, MaxBundleBytes: 64 << 20, Log: log, Vuln: vulns, MaxFeedBytes: 8 << 20, Now: now, Rollouts: engine})
	if err != nil {
		t.Fatal(err)
	}
	st.handler = h
	// Real TLS as the server runs it with tls_cert_file: a device's client
	// certificate is verified against the device CA when offered.
	st.srv = httptest.NewUnstartedServer(h)
	st.srv.TLS = &tls.Config{ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: st.ca.Pool()}
	st.srv.StartTLS()
	t.Cleanup(st.srv.Close)
	return st
}

// call sends a request and decodes the JSON answer into out (if not nil).
func (st *stack) call(t *testing.T, method, path, token, contentType string, body io.Reader, out any) int {
	t.Helper()
	req, _ := http.NewRequest(method, st.srv.URL+path, body)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	res, err := st.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if out != nil {
		json.Unmarshal(b, out)
	}
	return res.StatusCode
}

func (st *stack) postJSON(t *testing.T, path, token string, in, out any) int {
	t.Helper()
	b, _ := json.Marshal(in)
	return st.call(t, http.MethodPost, path, token, "application/json", bytes.NewReader(b), out)
}

// bundle builds a release bundle with an uncompressed image.
func bundle(t *testing.T, version string) ([]byte, *firmware.Manifest) {
	t.Helper()
	return bundleWithSBOM(t, version, nil)
}

// bundleWithSBOM builds a release bundle carrying sbom (nil: none).
func bundleWithSBOM(t *testing.T, version string, sbom []byte) ([]byte, *firmware.Manifest) {
	t.Helper()
	dir := t.TempDir()
	raw := make([]byte, 20_000)
	rand.Read(raw)
	img := filepath.Join(dir, "image")
	os.WriteFile(img, raw, 0o644)
	desc, err := firmware.DescribeImage(img, firmware.CompressionNone)
	if err != nil {
		t.Fatal(err)
	}
	m := &firmware.Manifest{Format: 1, Product: "pump", Version: version, Models: []string{"pump-x1"}, Image: desc}
	src := firmware.BundleSource{Image: img}
	if sbom != nil {
		src.SBOM = filepath.Join(dir, "sbom.json")
		os.WriteFile(src.SBOM, sbom, 0o644)
		sum := sha256.Sum256(sbom)
		m.SBOM = &firmware.Artifact{Length: int64(len(sbom)), SHA256: hex.EncodeToString(sum[:])}
	}
	var b bytes.Buffer
	if err := firmware.WriteBundle(&b, m, src); err != nil {
		t.Fatal(err)
	}
	return b.Bytes(), m
}

// sign signs m into the next targets metadata on the first targets file.
func (st *stack) sign(t *testing.T, m *firmware.Manifest, s signature.Signer) []byte {
	t.Helper()
	cur, _ := os.ReadFile(filepath.Join(st.keysDir, signing.TargetsFile))
	b, err := signing.SignRelease(signing.SignReleaseOptions{Current: cur, Manifest: m, Signer: s})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (st *stack) upload(t *testing.T, bundle, targets []byte, out any) int {
	t.Helper()
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	if targets != nil {
		w, _ := mw.CreateFormFile("targets", "targets.json")
		w.Write(targets)
	}
	if bundle != nil {
		w, _ := mw.CreateFormFile("bundle", "bundle.tar")
		w.Write(bundle)
	}
	mw.Close()
	return st.call(t, http.MethodPost, "/api/v1/releases", adminToken, mw.FormDataContentType(), &body, out)
}

// nothingPublished asserts no release, no repository metadata beyond the
// root, and no leftover staging files.
func (st *stack) nothingPublished(t *testing.T) {
	t.Helper()
	rels, _ := st.store.Releases(context.Background())
	if len(rels) != 0 {
		t.Errorf("%d releases recorded, want none", len(rels))
	}
	if _, err := os.Stat(filepath.Join(st.repoDir, "metadata", "timestamp.json")); err == nil {
		t.Error("the repository published a timestamp")
	}
	staged, _ := os.ReadDir(filepath.Join(st.dataDir, "staging"))
	if len(staged) != 0 {
		t.Errorf("%d staging files left behind", len(staged))
	}
	targets, _ := filepath.Glob(filepath.Join(st.repoDir, "targets", "*"))
	if len(targets) != 0 {
		t.Errorf("target files stored: %v", targets)
	}
}

func TestPublishRelease(t *testing.T) {
	st := newStack(t)
	b, m := bundle(t, "1.1.0")
	var rel struct {
		ID string `json:"id"`
	}
	if code := st.upload(t, b, st.sign(t, m, st.targets), &rel); code != http.StatusCreated {
		t.Fatalf("upload = %d, want 201", code)
	}
	for _, p := range []string{"/tuf/release/metadata/timestamp.json", "/tuf/release/metadata/1.root.json", "/tuf/release/metadata/2.targets.json"} {
		if code := st.call(t, http.MethodGet, p, "", "", nil, nil); code != http.StatusOK {
			t.Errorf("GET %s = %d, want 200", p, code)
		}
	}
	for _, p := range []string{"/tuf/release/../repo/metadata/1.root.json", "/tuf/release/metadata/", "/tuf/release/staging/x"} {
		if code := st.call(t, http.MethodGet, p, "", "", nil, nil); code == http.StatusOK {
			t.Errorf("GET %s = 200, want it refused", p)
		}
	}
	// The same version again is a conflict, and changes nothing.
	b2, m2 := bundle(t, "1.1.0")
	if code := st.upload(t, b2, st.sign(t, m2, st.targets), nil); code != http.StatusConflict && code != http.StatusBadRequest {
		t.Fatalf("second upload of 1.1.0 = %d, want 409 or 400", code)
	}
	if rels, _ := st.store.Releases(context.Background()); len(rels) != 1 {
		t.Fatalf("%d releases after a refused duplicate, want 1", len(rels))
	}
}

func TestBadReleaseUploadsChangeNothing(t *testing.T) {
	good, m := bundle(t, "1.1.0")
	other, om := bundle(t, "1.1.0") // same version, different image
	tests := []struct {
		name     string
		bundle   func(st *stack) []byte
		targets  func(st *stack) []byte
		wantCode int
		wantMsg  string
	}{
		{"malformed-bundle", func(*stack) []byte { return []byte("not a tar file") },
			func(st *stack) []byte { return st.sign(t, m, st.targets) }, 400, "bundle"},
		{"unsigned", func(*stack) []byte { return good }, nil, 400, `"targets" is missing`},
		{"signed-with-server-key", func(*stack) []byte { return good },
			func(st *stack) []byte { return st.sign(t, m, st.snapshot) }, 400, "not signed to threshold"},
		{"signed-by-stranger", func(*stack) []byte { return good }, func(st *stack) []byte {
			dir := t.TempDir()
			signing.InitRepository(context.Background(), signing.InitOptions{Dir: dir})
			s, _ := signing.LoadSigner(context.Background(), filepath.Join(dir, signing.OfflineKeyFile("targets", signing.DefaultTargetsHolder)), nil)
			return st.sign(t, m, s)
		}, 400, "not signed to threshold"},
		{"bundle-swapped-after-signing", func(*stack) []byte { return other },
			func(st *stack) []byte { return st.sign(t, m, st.targets) }, 400, "differs"},
		{"targets-not-json", func(*stack) []byte { return good }, func(*stack) []byte { return []byte("{nope") }, 400, "does not parse"},
		{"no-bundle", nil, func(st *stack) []byte { return st.sign(t, om, st.targets) }, 400, `"bundle" is missing`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := newStack(t)
			var b, tg []byte
			if tt.bundle != nil {
				b = tt.bundle(st)
			}
			if tt.targets != nil {
				tg = tt.targets(st)
			}
			var out struct {
				Error    string   `json:"error"`
				Problems []string `json:"problems"`
			}
			code := st.upload(t, b, tg, &out)
			msg := out.Error + " " + strings.Join(out.Problems, " ")
			if code != tt.wantCode || !strings.Contains(msg, tt.wantMsg) {
				t.Fatalf("upload = %d %q, want %d mentioning %q", code, msg, tt.wantCode, tt.wantMsg)
			}
			st.nothingPublished(t)
		})
	}
}

func TestEnrollmentAndSites(t *testing.T) {
	st := newStack(t)
	var site struct{ ID string }
	if code := st.postJSON(t, "/api/v1/sites", adminToken, map[string]string{"name": "St. Mary Radiology"}, &site); code != 201 {
		t.Fatalf("create site = %d", code)
	}
	var toks struct{ Tokens []string }
	if code := st.postJSON(t, "/api/v1/sites/"+site.ID+"/enrollment-tokens", adminToken, map[string]int{"count": 1}, &toks); code != 201 || len(toks.Tokens) != 1 {
		t.Fatalf("create tokens = %d %v", code, toks)
	}
	_, csr := newCSR(t, "dev-px1")
	enroll := map[string]string{"token": toks.Tokens[0], "device_id": "dev-px1", "csr": csr, "model": "pump-x1", "installed_version": "1.0.0", "serial": "PX1"}
	var dev struct {
		DeviceID    string `json:"device_id"`
		Certificate string `json:"certificate"`
	}
	if code := st.postJSON(t, "/api/v1/enroll", "", enroll, &dev); code != 201 || dev.Certificate == "" {
		t.Fatalf("enroll = %d %+v", code, dev)
	}
	countDevices := func() int {
		d, _ := st.store.Devices(context.Background(), store.DeviceFilter{})
		return len(d)
	}
	tests := []struct {
		name     string
		method   string
		path     string
		token    string
		body     any
		wantCode int
	}{
		{"reused-enrollment-token", "POST", "/api/v1/enroll", "", enroll, 409},
		{"bad-model", "POST", "/api/v1/enroll", "", map[string]string{"token": "x", "model": "Pump X1!", "installed_version": "1.0.0"}, 400},
		{"unknown-field", "POST", "/api/v1/enroll", "", map[string]string{"token": "x", "model": "pump-x1", "installed_version": "1.0.0", "site_id": "other"}, 400},
		{"tokens-for-unknown-site", "POST", "/api/v1/sites/no-such-site/enrollment-tokens", adminToken, map[string]int{"count": 1}, 404},
		{"too-many-tokens", "POST", "/api/v1/sites/" + site.ID + "/enrollment-tokens", adminToken, map[string]int{"count": 100000}, 400},
		{"patch-state-of-unknown-site", "GET", "/api/v1/sites/no-such-site/patch-state", adminToken, nil, 404},
		{"duplicate-site", "POST", "/api/v1/sites", adminToken, map[string]string{"name": "St. Mary Radiology"}, 409},
		{"empty-site-name", "POST", "/api/v1/sites", adminToken, map[string]string{"name": " "}, 400},
		{"rollout-of-unknown-release", "POST", "/api/v1/rollouts", adminToken, map[string]string{"release_id": "nope"}, 400},
		{"no-admin-token", "GET", "/api/v1/sites", "", nil, 401},
		// Devices learn their assignment from the rollout repository
		// only; the old endpoint is gone (an unknown path is 404 before
		// any token check: the route table is public, in docs/api.md).
		{"no-assignment-endpoint", "GET", "/api/v1/device/assignment", "", nil, 404},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := countDevices()
			var code int
			if tt.method == "POST" {
				code = st.postJSON(t, tt.path, tt.token, tt.body, nil)
			} else {
				code = st.call(t, tt.method, tt.path, tt.token, "", nil, nil)
			}
			if code != tt.wantCode {
				t.Fatalf("%s %s = %d, want %d", tt.method, tt.path, code, tt.wantCode)
			}
			if after := countDevices(); after != before {
				t.Fatalf("devices went from %d to %d on a refused request", before, after)
			}
		})
	}
	sites, _ := st.store.Sites(context.Background())
	if len(sites) != 1 {
		t.Fatalf("%d sites after refused requests, want 1", len(sites))
	}
}

func TestRepositoryMaintenanceEndpoints(t *testing.T) {
	st := newStack(t)
	b, m := bundle(t, "1.1.0")
	if code := st.upload(t, b, st.sign(t, m, st.targets), nil); code != http.StatusCreated {
		t.Fatalf("upload = %d", code)
	}
	var root struct {
		Signed struct {
			Version int `json:"version"`
		} `json:"signed"`
	}
	for _, repo := range []string{"release", "rollout"} {
		if code := st.call(t, http.MethodGet, "/api/v1/repository/"+repo+"/root", adminToken, "", nil, &root); code != 200 || root.Signed.Version != 1 {
			t.Fatalf("GET %s root = %d v%d, want 200 v1", repo, code, root.Signed.Version)
		}
	}
	cur, _ := os.ReadFile(filepath.Join(st.keysDir, signing.RootFile))
	tests := []struct {
		name, path string
		body       string
		wantCode   int
	}{
		{"unknown-repository", "/api/v1/repository/mirror/root", `{"root":{}}`, 404},
		{"not-json", "/api/v1/repository/release/root", `{nope`, 400},
		{"no-root", "/api/v1/repository/release/root", `{}`, 400},
		{"same-version", "/api/v1/repository/release/root", `{"root":` + string(cur) + `}`, 409},
		{"rollout-with-targets", "/api/v1/repository/rollout/root", `{"root":` + string(cur) + `,"targets":{}}`, 400},
		{"targets-not-signed", "/api/v1/repository/targets", `{"signed":{"_type":"targets","version":3}}`, 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if code := st.call(t, http.MethodPost, tt.path, adminToken, "application/json", strings.NewReader(tt.body), nil); code != tt.wantCode {
				t.Fatalf("POST %s = %d, want %d", tt.path, code, tt.wantCode)
			}
			if _, err := os.Stat(filepath.Join(st.repoDir, "metadata", "2.root.json")); err == nil {
				t.Fatal("a refused request wrote a new root")
			}
		})
	}
	// The rollback flag is signed offline and published without a bundle.
	var current json.RawMessage
	if code := st.call(t, http.MethodGet, "/api/v1/repository/targets", adminToken, "", nil, &current); code != 200 {
		t.Fatalf("GET current targets = %d", code)
	}
	flagged, err := signing.SetRollback(signing.SetRollbackOptions{Current: current, Target: m.TargetPath(), AllowRollback: true, Signer: st.targets})
	if err != nil {
		t.Fatal(err)
	}
	byServer, _ := signing.SetRollback(signing.SetRollbackOptions{Current: current, Target: m.TargetPath(), AllowRollback: true, Signer: st.snapshot})
	if code := st.call(t, http.MethodPost, "/api/v1/repository/targets", adminToken, "application/json", bytes.NewReader(byServer), nil); code != 400 {
		t.Fatalf("POST targets signed by the server's key = %d, want 400", code)
	}
	if code := st.call(t, http.MethodPost, "/api/v1/repository/targets", adminToken, "application/json", bytes.NewReader(flagged), nil); code != 200 {
		t.Fatalf("POST targets with the rollback flag = %d, want 200", code)
	}
	if code := st.call(t, http.MethodGet, "/tuf/release/metadata/3.targets.json", "", "", nil, nil); code != 200 {
		t.Fatalf("the flagged targets are not served: %d", code)
	}
}

func TestRolloutIsPublishedToTheRolloutRepository(t *testing.T) {
	st := newStack(t)
	var site struct{ ID string }
	st.postJSON(t, "/api/v1/sites", adminToken, map[string]string{"name": "St. Mary Radiology"}, &site)
	var toks struct{ Tokens []string }
	st.postJSON(t, "/api/v1/sites/"+site.ID+"/enrollment-tokens", adminToken, map[string]int{"count": 1}, &toks)
	var dev struct {
		DeviceID string `json:"device_id"`
	}
	_, csr := newCSR(t, "dev-1")
	st.postJSON(t, "/api/v1/enroll", "", st.enrollBody(toks.Tokens[0], "dev-1", csr), &dev)
	b, m := bundle(t, "1.1.0")
	var rel struct{ ID string }
	st.upload(t, b, st.sign(t, m, st.targets), &rel)
	if code := st.postJSON(t, "/api/v1/rollouts", adminToken, map[string]string{"release_id": rel.ID}, nil); code != 201 {
		t.Fatalf("create rollout = %d", code)
	}
	var ts struct {
		Signed struct {
			Meta map[string]struct{ Version int } `json:"meta"`
		} `json:"signed"`
	}
	if code := st.call(t, http.MethodGet, "/tuf/rollout/metadata/timestamp.json", "", "", nil, &ts); code != 200 {
		t.Fatalf("GET rollout timestamp = %d", code)
	}
	var snap struct {
		Signed struct {
			Meta map[string]struct{ Version int } `json:"meta"`
		} `json:"signed"`
	}
	v := ts.Signed.Meta["snapshot.json"].Version
	st.call(t, http.MethodGet, fmt.Sprintf("/tuf/rollout/metadata/%d.snapshot.json", v), "", "", nil, &snap)
	found := false
	for name, mf := range snap.Signed.Meta {
		if !strings.HasPrefix(name, "bins-") {
			continue
		}
		var bin struct {
			Signed struct {
				Targets map[string]json.RawMessage `json:"targets"`
			} `json:"signed"`
		}
		st.call(t, http.MethodGet, fmt.Sprintf("/tuf/rollout/metadata/%d.%s", mf.Version, name), "", "", nil, &bin)
		if _, ok := bin.Signed.Targets["devices/"+dev.DeviceID]; ok {
			found = true
		}
	}
	if len(snap.Signed.Meta) != 5 || !found {
		t.Fatalf("rollout snapshot lists %v and the device's entry found=%v; want targets, 4 bins and the entry", snap.Signed.Meta, found)
	}
}
