package api_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/aftercare/aftercare/server/internal/access"
	"github.com/aftercare/aftercare/server/internal/api"
	"github.com/aftercare/aftercare/server/internal/audit"
	"github.com/aftercare/aftercare/server/internal/store"
	"github.com/aftercare/aftercare/server/internal/store/storetest"
	"github.com/aftercare/aftercare/signing"
)

// TestEveryRouteDeclaresAPermission fails when a route is served that the
// route table does not list with a permission.
func TestEveryRouteDeclaresAPermission(t *testing.T) {
	st := newStack(t)
	declared := map[string]access.Permission{}
	for _, r := range api.Routes() {
		declared[r.Method+" "+r.Path] = r.Permission
	}
	routes := st.handler.(*echo.Echo).Routes()
	if len(routes) < len(declared) {
		t.Fatalf("Echo serves %d routes, the table declares %d", len(routes), len(declared))
	}
	for _, r := range routes {
		perm, ok := declared[r.Method+" "+r.Path]
		if !ok || perm == "" {
			t.Errorf("route %s %s declares no permission in the route table (routes.go)", r.Method, r.Path)
		}
		// Enrollment takes its one-time token; the device routes take the
		// device's client certificate (access.DeviceCert), not a token.
		if perm == access.Public && strings.HasPrefix(r.Path, "/api/v1/") && r.Path != "/api/v1/enroll" {
			t.Errorf("route %s %s is public; only enrollment is", r.Method, r.Path)
		}
		if perm == access.DeviceCert && r.Path != "/api/v1/device" && !strings.HasPrefix(r.Path, "/api/v1/device/") {
			t.Errorf("route %s %s takes a device certificate; only /api/v1/device/... may", r.Method, r.Path)
		}
	}
}

// isolation is two hospitals' worth of objects: St. Mary's (A), which the
// other hospital must never see, and Lakeside's (B).
type isolation struct {
	orgA, siteA, deviceA, serialA   string
	relAOnly, relAssigned, rolloutA string
	userA, tokenA                   string
	alertA                          string // raised by St. Mary's device's security events
	siteB, deviceB, relB            string
	tokenB                          string // hospital_it of Lakeside
	secrets                         []string
}

// apiUser makes a user with a token through the API, as the admin.
func (st *stack) apiUser(t *testing.T, req access.UserRequest) (userID, tokenID, secret string) {
	t.Helper()
	var u store.User
	if code := st.postJSON(t, "/api/v1/users", adminToken, req, &u); code != 201 {
		t.Fatalf("create user %s = %d", req.Name, code)
	}
	var tok struct {
		ID    string `json:"id"`
		Token string `json:"token"`
	}
	if code := st.postJSON(t, "/api/v1/tokens", adminToken, access.TokenRequest{User: req.Name, Name: "laptop", ExpiresIn: "720h"}, &tok); code != 201 || tok.Token == "" {
		t.Fatalf("create token for %s = %d", req.Name, code)
	}
	return u.ID, tok.ID, tok.Token
}

// enrollAt enrolls a device at a site through the API.
func (st *stack) enrollAt(t *testing.T, siteID, serial, version string) string {
	t.Helper()
	var toks struct{ Tokens []string }
	if code := st.postJSON(t, "/api/v1/sites/"+siteID+"/enrollment-tokens", adminToken, map[string]int{"count": 1}, &toks); code != 201 {
		t.Fatalf("enrollment token = %d", code)
	}
	var dev struct {
		DeviceID string `json:"device_id"`
	}
	deviceID := "dev-" + strings.ToLower(serial)
	_, csr := newCSR(t, deviceID)
	req := map[string]string{"token": toks.Tokens[0], "device_id": deviceID, "csr": csr, "model": "pump-x1", "installed_version": version, "serial": serial}
	if code := st.postJSON(t, "/api/v1/enroll", "", req, &dev); code != 201 {
		t.Fatalf("enroll = %d", code)
	}
	return dev.DeviceID
}

func (st *stack) publishVersion(t *testing.T, version string, sbom []byte) string {
	t.Helper()
	b, m := bundleWithSBOM(t, version, sbom)
	// Each release is signed on the targets metadata published last.
	var cur []byte
	if code := st.call(t, http.MethodGet, "/api/v1/repository/targets", adminToken, "", nil, nil); code == 200 {
		req, _ := http.NewRequest("GET", st.srv.URL+"/api/v1/repository/targets", nil)
		req.Header.Set("Authorization", "Bearer "+adminToken)
		res, err := st.srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		cur, _ = io.ReadAll(res.Body)
		res.Body.Close()
	} else {
		cur, _ = os.ReadFile(filepath.Join(st.keysDir, signing.TargetsFile))
	}
	targets, err := signing.SignRelease(signing.SignReleaseOptions{Current: cur, Manifest: m, Signer: st.targets})
	if err != nil {
		t.Fatal(err)
	}
	var rel struct{ ID string }
	if code := st.upload(t, b, targets, &rel); code != 201 {
		t.Fatalf("upload %s = %d", version, code)
	}
	return rel.ID
}

func newIsolation(t *testing.T, st *stack) *isolation {
	t.Helper()
	ctx := context.Background()
	iso := &isolation{serialA: "SERIAL-ST-MARY"}
	var org store.Organisation
	if code := st.postJSON(t, "/api/v1/orgs", adminToken, map[string]string{"name": "St. Mary Hospital"}, &org); code != 201 {
		t.Fatalf("create organisation = %d", code)
	}
	iso.orgA = org.ID
	var site store.Site
	if code := st.postJSON(t, "/api/v1/sites", adminToken, map[string]string{"name": "St. Mary Radiology", "organisation": org.ID}, &site); code != 201 {
		t.Fatalf("create site = %d", code)
	}
	iso.siteA = site.ID
	if code := st.postJSON(t, "/api/v1/sites", adminToken, map[string]string{"name": "Lakeside Cardiology", "organisation": "Lakeside Clinic"}, &site); code != 201 {
		t.Fatalf("create site = %d", code)
	}
	iso.siteB = site.ID

	sbom := readTestdata(t, "../sbom/testdata/yocto/infusion-pump-image.cdx.json")
	iso.relAOnly = st.publishVersion(t, "0.9.0", sbom)
	iso.relB = st.publishVersion(t, "1.0.0", nil)
	iso.relAssigned = st.publishVersion(t, "1.1.0", nil)
	iso.deviceA = st.enrollAt(t, iso.siteA, iso.serialA, "0.9.0")
	iso.deviceB = st.enrollAt(t, iso.siteB, "SERIAL-LAKE", "1.0.0")
	var r struct{ ID string }
	if code := st.postJSON(t, "/api/v1/rollouts", adminToken, map[string]any{"release_id": iso.relAssigned, "site_ids": []string{iso.siteA}}, &r); code != 201 {
		t.Fatalf("rollout = %d", code)
	}
	iso.rolloutA = r.ID
	code := st.call(t, http.MethodPost, "/api/v1/vuln/feeds/nvd?name=CVE-2023-0286.json", adminToken, "application/json",
		bytes.NewReader(readTestdata(t, "../vuln/testdata/nvd/CVE-2023-0286.json")), nil)
	if code != 200 {
		t.Fatalf("import NVD = %d", code)
	}
	if code := st.postJSON(t, "/api/v1/vuln/dispositions", adminToken, map[string]any{"release_id": iso.relAOnly, "vuln_id": "CVE-2023-0286",
		"status": "affected", "reason": "St. Mary's build uses the X.400 path"}, nil); code != 201 {
		t.Fatalf("disposition = %d", code)
	}
	iso.alertA = raiseAlert(t, st.store, iso.deviceA, iso.siteA)
	var secretA, secretB string
	iso.userA, iso.tokenA, secretA = st.apiUser(t, access.UserRequest{Name: "it-st-mary", Role: "hospital_it", Organisation: iso.orgA})
	_, _, secretB = st.apiUser(t, access.UserRequest{Name: "it-lakeside", Role: "hospital_it", Organisation: "Lakeside Clinic"})
	iso.tokenB = secretB
	iso.secrets = []string{secretA}
	// Sanity: the findings exist, so the matrix is not vacuous.
	if fs, err := st.store.Findings(ctx, store.FindingFilter{ReleaseIDs: []string{iso.relAOnly}}); err != nil || len(fs) == 0 {
		t.Fatalf("findings of St. Mary's release: %d, %v", len(fs), err)
	}
	return iso
}

// forbidden are strings naming St. Mary's objects; none may reach
// Lakeside's IT.
func (iso *isolation) forbidden() []string {
	return append([]string{iso.orgA, "St. Mary", iso.siteA, iso.deviceA, iso.serialA, iso.relAOnly, iso.relAssigned, iso.rolloutA,
		iso.userA, iso.tokenA, "it-st-mary", "0.9.0", "1.1.0", iso.alertA, "intruder.st-mary.example"}, iso.secrets...)
}

// fill puts St. Mary's objects into a route's parameters.
func (iso *isolation) fill(path string) string {
	seg := strings.Split(path, "/")
	for i, s := range seg {
		if !strings.HasPrefix(s, ":") && s != "*" {
			continue
		}
		switch prev := seg[i-1]; {
		case prev == "sites":
			seg[i] = iso.siteA
		case prev == "devices":
			seg[i] = iso.deviceA
		case prev == "alerts":
			seg[i] = iso.alertA
		case prev == "releases":
			seg[i] = iso.relAOnly
		case prev == "users":
			seg[i] = iso.userA
		case prev == "tokens":
			seg[i] = iso.tokenA
		case prev == "rollouts":
			seg[i] = iso.rolloutA
		case prev == "orgs" || prev == "organisations":
			seg[i] = iso.orgA
		case prev == "repository":
			seg[i] = "release"
		case prev == "feeds":
			seg[i] = "kev"
		case prev == "exposure":
			seg[i] = "CVE-2023-0286"
		default:
			seg[i] = "x"
		}
	}
	return strings.Join(seg, "/")
}

func digestsWithoutAudit(t *testing.T, s *store.Store) map[string]string {
	t.Helper()
	d, err := s.TableDigests(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	delete(d, "audit_log")
	return d
}

// TestSiteIsolationMatrix sends every /api/v1 route, with St. Mary's
// objects in its parameters, with the token of Lakeside's hospital IT:
// each answers 404 (St. Mary's object) or 403 (the role may never do it),
// lists show nothing of St. Mary's, and no table but the audit log (which
// records each refused write) changes.
func TestSiteIsolationMatrix(t *testing.T) {
	storetest.ForEach(t, func(t *testing.T, s *store.Store) {
		st := newStackWith(t, s, nil)
		iso := newIsolation(t, st)
		perms := map[string]access.Permission{}
		for _, r := range api.Routes() {
			perms[r.Method+" "+r.Path] = r.Permission
		}
		before := digestsWithoutAudit(t, s)
		auditBefore, _ := s.AuditEntries(context.Background(), store.AuditFilter{Limit: 10_000})
		routes := st.handler.(*echo.Echo).Routes()
		slices.SortFunc(routes, func(a, b *echo.Route) int { return strings.Compare(a.Path+a.Method, b.Path+b.Method) })
		tested := 0
		for _, r := range routes {
			if !strings.HasPrefix(r.Path, "/api/v1/") {
				continue
			}
			tested++
			perm := perms[r.Method+" "+r.Path]
			path := iso.fill(r.Path)
			t.Run(r.Method+" "+r.Path, func(t *testing.T) {
				var body io.Reader
				ct := ""
				if r.Method != http.MethodGet {
					body, ct = strings.NewReader(`{}`), "application/json"
				}
				req, _ := http.NewRequest(r.Method, st.srv.URL+path, body)
				req.Header.Set("Authorization", "Bearer "+iso.tokenB)
				if ct != "" {
					req.Header.Set("Content-Type", ct)
				}
				res, err := st.srv.Client().Do(req)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(res.Body)
				res.Body.Close()
				for _, f := range iso.forbidden() {
					// An error may echo the ID the client sent.
					if strings.Contains(string(b), f) && !strings.Contains(path, f) {
						t.Fatalf("%s %s answered %d naming St. Mary's %q: %s", r.Method, path, res.StatusCode, f, b)
					}
				}
				hasParam := strings.Contains(r.Path, ":")
				switch {
				case perm == access.Public:
					if res.StatusCode/100 == 2 {
						t.Fatalf("%s %s = %d, want a refusal", r.Method, path, res.StatusCode)
					}
				case perm == access.DeviceCert:
					// A person's token is no device certificate.
					if res.StatusCode != http.StatusUnauthorized {
						t.Fatalf("%s %s = %d, want 401 (a device certificate is required)", r.Method, path, res.StatusCode)
					}
				case !access.RoleHospitalIT.Allows(perm):
					if res.StatusCode != http.StatusForbidden {
						t.Fatalf("%s %s = %d, want 403 (hospital IT may never %s)", r.Method, path, res.StatusCode, perm)
					}
				case !perm.IsRead():
					if res.StatusCode != http.StatusNotFound {
						t.Fatalf("%s %s on St. Mary's object = %d, want 404", r.Method, path, res.StatusCode)
					}
				case hasParam && !strings.HasSuffix(r.Path, ":vuln"):
					if res.StatusCode != http.StatusNotFound {
						t.Fatalf("%s %s on St. Mary's object = %d, want 404", r.Method, path, res.StatusCode)
					}
				default: // a list or query: answered, showing nothing of St. Mary's
					if res.StatusCode != http.StatusOK && res.StatusCode != http.StatusBadRequest {
						t.Fatalf("%s %s = %d, want 200 without St. Mary's objects", r.Method, path, res.StatusCode)
					}
				}
			})
		}
		if tested < 30 {
			t.Fatalf("matrix covered %d /api/v1 routes, want every one", tested)
		}
		after := digestsWithoutAudit(t, s)
		for table, d := range before {
			if after[table] != d {
				t.Errorf("table %s changed during the matrix", table)
			}
		}
		// The audit log gained only refusals, by Lakeside's IT, and still
		// verifies.
		entries, _ := s.AuditEntries(context.Background(), store.AuditFilter{AfterSeq: int64(len(auditBefore)), Limit: 10_000})
		if len(entries) == 0 {
			t.Fatal("no refused write reached the audit log")
		}
		for _, e := range entries {
			if e.Outcome != audit.OutcomeDenied || e.Actor != "it-lakeside" || e.Role != "hospital_it" {
				t.Errorf("audit entry during the matrix: %+v, want only refusals of it-lakeside", e)
			}
		}
		if _, _, err := s.VerifyAudit(context.Background()); err != nil {
			t.Fatal(err)
		}
	})
}

// TestHospitalITSeesItsOwn checks the other side of the matrix: Lakeside's
// IT sees its own site, device, release and patch state.
func TestHospitalITSeesItsOwn(t *testing.T) {
	st := newStack(t)
	iso := newIsolation(t, st)
	var sites struct{ Sites []store.Site }
	if code := st.call(t, "GET", "/api/v1/sites", iso.tokenB, "", nil, &sites); code != 200 || len(sites.Sites) != 1 || sites.Sites[0].ID != iso.siteB {
		t.Fatalf("GET sites = %d %+v, want only Lakeside's", code, sites)
	}
	var devs struct{ Devices []store.Device }
	if code := st.call(t, "GET", "/api/v1/devices", iso.tokenB, "", nil, &devs); code != 200 || len(devs.Devices) != 1 || devs.Devices[0].ID != iso.deviceB {
		t.Fatalf("GET devices = %d %+v", code, devs)
	}
	if code := st.call(t, "GET", "/api/v1/devices/"+iso.deviceB, iso.tokenB, "", nil, nil); code != 200 {
		t.Fatalf("GET own device = %d", code)
	}
	if code := st.call(t, "GET", "/api/v1/sites/"+iso.siteB+"/patch-state", iso.tokenB, "", nil, nil); code != 200 {
		t.Fatalf("GET own patch state = %d", code)
	}
	var rels struct{ Releases []store.Release }
	if code := st.call(t, "GET", "/api/v1/releases", iso.tokenB, "", nil, &rels); code != 200 || len(rels.Releases) != 1 || rels.Releases[0].ID != iso.relB {
		t.Fatalf("GET releases = %d %+v, want only 1.0.0", code, rels)
	}
	var orgs struct{ Organisations []store.Organisation }
	if code := st.call(t, "GET", "/api/v1/orgs", iso.tokenB, "", nil, &orgs); code != 200 || len(orgs.Organisations) != 1 || orgs.Organisations[0].Name != "Lakeside Clinic" {
		t.Fatalf("GET orgs = %d %+v", code, orgs)
	}
	// Hospital IT enrolls devices at its own sites.
	if code := st.postJSON(t, "/api/v1/sites/"+iso.siteB+"/enrollment-tokens", iso.tokenB, map[string]int{"count": 1}, nil); code != 201 {
		t.Fatalf("enrollment token at own site = %d", code)
	}
	// St. Mary's IT sees the exposure of its own device, not Lakeside's.
	var exp struct {
		Totals struct{ Total int } `json:"totals"`
	}
	_, _, secretA := st.apiUser(t, access.UserRequest{Name: "it-st-mary-2", Role: "hospital_it", SiteIDs: []string{iso.siteA}})
	if code := st.call(t, "GET", "/api/v1/vuln/exposure/CVE-2023-0286", secretA, "", nil, &exp); code != 200 || exp.Totals.Total != 1 {
		t.Fatalf("exposure for St. Mary = %d %+v, want its one device", code, exp)
	}

	// Every decision of the story is in the audit log, with its object.
	count := map[string]int{}
	es, _ := st.store.AuditEntries(context.Background(), store.AuditFilter{Limit: 10_000})
	for _, e := range es {
		if e.Outcome == audit.OutcomeDone {
			count[e.Action]++
		}
		if e.Action == "rollout.create" && e.Object != "rollout/"+iso.rolloutA {
			t.Errorf("rollout entry names %q", e.Object)
		}
		if e.Action == "disposition.set" && (e.Role != "admin" || e.Reason != "St. Mary's build uses the X.400 path") {
			t.Errorf("disposition entry %+v", e)
		}
	}
	want := map[string]int{"organisation.create": 1, "site.create": 2, "release.publish": 3, "enrollment_tokens.create": 3, "rollout.create": 1,
		"vuln.feed.import": 1, "disposition.set": 1, "user.create": 3, "token.create": 3}
	for action, n := range want {
		if count[action] != n {
			t.Errorf("audit log has %d %s entries, want %d", count[action], action, n)
		}
	}
}

func TestRolesAndAudit(t *testing.T) {
	st := newStack(t)
	_, _, auditor := st.apiUser(t, access.UserRequest{Name: "olga", Role: "auditor"})
	_, _, engineer := st.apiUser(t, access.UserRequest{Name: "ravi", Role: "release_engineer"})
	_, _, psirt := st.apiUser(t, access.UserRequest{Name: "ana", Role: "psirt"})
	tests := []struct {
		name   string
		method string
		path   string
		token  string
		want   int
	}{
		{"auditor-reads-audit", "GET", "/api/v1/audit", auditor, 200},
		{"auditor-verifies-audit", "GET", "/api/v1/audit/verify", auditor, 200},
		{"auditor-reads-users", "GET", "/api/v1/users", auditor, 200},
		{"auditor-reads-devices", "GET", "/api/v1/devices", auditor, 200},
		{"auditor-may-not-create-site", "POST", "/api/v1/sites", auditor, 403},
		{"auditor-may-not-roll-out", "POST", "/api/v1/rollouts", auditor, 403},
		{"auditor-may-not-make-tokens", "POST", "/api/v1/tokens", auditor, 403},
		{"engineer-may-not-read-audit", "GET", "/api/v1/audit", engineer, 403},
		{"engineer-may-not-set-dispositions", "POST", "/api/v1/vuln/dispositions", engineer, 403},
		{"engineer-may-not-make-users", "POST", "/api/v1/users", engineer, 403},
		{"psirt-may-not-roll-out", "POST", "/api/v1/rollouts", psirt, 403},
		{"psirt-may-not-upload", "POST", "/api/v1/releases", psirt, 403},
		{"no-token", "GET", "/api/v1/sites", "", 401},
		{"device-style-token", "GET", "/api/v1/sites", "acd_xyz", 401},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body io.Reader
			ct := ""
			if tt.method == "POST" {
				body, ct = strings.NewReader(`{}`), "application/json"
			}
			if code := st.call(t, tt.method, tt.path, tt.token, ct, body, nil); code != tt.want {
				t.Fatalf("%s %s = %d, want %d", tt.method, tt.path, code, tt.want)
			}
		})
	}
	var res struct{ Entries []audit.Entry }
	if code := st.call(t, "GET", "/api/v1/audit?action=user.", auditor, "", nil, &res); code != 200 || len(res.Entries) != 3 {
		t.Fatalf("GET audit?action=user. = %d, %d entries; want the 3 user creations", code, len(res.Entries))
	}
	var denied struct{ Entries []audit.Entry }
	st.call(t, "GET", "/api/v1/audit?actor=ravi", auditor, "", nil, &denied)
	if len(denied.Entries) != 2 || denied.Entries[0].Outcome != audit.OutcomeDenied || !strings.Contains(string(denied.Entries[0].Details), "dispositions:write") {
		t.Fatalf("ravi's refused writes in the audit log: %+v", denied.Entries)
	}
	var v struct {
		OK      bool  `json:"ok"`
		HeadSeq int64 `json:"head_seq"`
	}
	if st.call(t, "GET", "/api/v1/audit/verify", auditor, "", nil, &v); !v.OK || v.HeadSeq == 0 {
		t.Fatalf("audit verify = %+v", v)
	}
}

func TestTokenLifecycleAndReason(t *testing.T) {
	st := newStack(t)
	ctx := context.Background()
	_, tokenID, secret := st.apiUser(t, access.UserRequest{Name: "ravi", Role: "release_engineer"})
	if code := st.call(t, "GET", "/api/v1/releases", secret, "", nil, nil); code != 200 {
		t.Fatalf("new token = %d", code)
	}
	var list struct {
		Tokens []map[string]any `json:"tokens"`
	}
	st.call(t, "GET", "/api/v1/tokens?user=ravi", adminToken, "", nil, &list)
	if len(list.Tokens) != 1 || list.Tokens[0]["token"] != nil || list.Tokens[0]["token_hash"] != nil {
		t.Fatalf("token list = %+v: it must never show the secret or its hash", list.Tokens)
	}
	req, _ := http.NewRequest("POST", st.srv.URL+"/api/v1/tokens/"+tokenID+"/revoke", nil)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	req.Header.Set(api.HeaderReason, "laptop stolen")
	res, err := st.srv.Client().Do(req)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("revoke = %v %v", res, err)
	}
	res.Body.Close()
	if code := st.call(t, "GET", "/api/v1/releases", secret, "", nil, nil); code != 401 {
		t.Fatalf("revoked token = %d, want 401", code)
	}
	es, _ := st.store.AuditEntries(ctx, store.AuditFilter{Action: "token.revoke"})
	if len(es) != 1 || es[0].Reason != "laptop stolen" || es[0].Actor != "admin" {
		t.Fatalf("revocation audit entry: %+v", es)
	}
	// The token's secret appears nowhere in the database.
	d, _ := st.store.AuditEntries(ctx, store.AuditFilter{Limit: 10_000})
	for _, e := range d {
		if strings.Contains(string(e.Details), secret) {
			t.Fatal("a token secret reached the audit log")
		}
	}
}

// TestFailedTokenChecksRateLimited refuses an address after 10 failed
// token checks in a minute, even with a good token, until the minute ends.
func TestFailedTokenChecksRateLimited(t *testing.T) {
	var mu sync.Mutex
	now := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	st := newStackWith(t, storetest.SQLite(t), clock)
	for i := range access.FailureLimit {
		if code := st.call(t, "GET", "/api/v1/sites", fmt.Sprintf("act_guess%d", i), "", nil, nil); code != 401 {
			t.Fatalf("guess %d = %d, want 401", i, code)
		}
	}
	if code := st.call(t, "GET", "/api/v1/sites", "act_guess-more", "", nil, nil); code != http.StatusTooManyRequests {
		t.Fatalf("guess %d = %d, want 429", access.FailureLimit+1, code)
	}
	if code := st.call(t, "GET", "/api/v1/sites", adminToken, "", nil, nil); code != http.StatusTooManyRequests {
		t.Fatalf("good token from a blocked address = %d, want 429", code)
	}
	// Public routes are not behind the limit.
	if code := st.call(t, "GET", "/healthz", "", "", nil, nil); code != 200 {
		t.Fatalf("healthz = %d", code)
	}
	mu.Lock()
	now = now.Add(access.FailureWindow)
	mu.Unlock()
	if code := st.call(t, "GET", "/api/v1/sites", adminToken, "", nil, nil); code != 200 {
		t.Fatalf("good token after the window = %d, want 200", code)
	}
}

func TestOrganisationsAndSiteMove(t *testing.T) {
	st := newStack(t)
	var org store.Organisation
	if code := st.postJSON(t, "/api/v1/orgs", adminToken, map[string]string{"name": "St. Mary Hospital", "reason": "contract signed"}, &org); code != 201 {
		t.Fatalf("create org = %d", code)
	}
	if code := st.postJSON(t, "/api/v1/orgs", adminToken, map[string]string{"name": "St. Mary Hospital"}, nil); code != 409 {
		t.Fatalf("create same org = %d, want 409", code)
	}
	var site store.Site
	if code := st.postJSON(t, "/api/v1/sites", adminToken, map[string]string{"name": "Radiology"}, &site); code != 201 || site.Organisation != store.DefaultOrganisationName {
		t.Fatalf("create site without organisation = %d %+v", code, site)
	}
	var moved store.Site
	if code := st.postJSON(t, "/api/v1/sites/"+site.ID+"/organisation", adminToken, map[string]string{"organisation": "St. Mary Hospital", "reason": "belongs there"}, &moved); code != 200 || moved.OrganisationID != org.ID {
		t.Fatalf("move site = %d %+v", code, moved)
	}
	before := digestsWithoutAudit(t, st.store)
	if code := st.postJSON(t, "/api/v1/sites/"+site.ID+"/organisation", adminToken, map[string]string{"organisation": "Nowhere"}, nil); code != 400 {
		t.Fatalf("move site to unknown organisation = %d, want 400", code)
	}
	after := digestsWithoutAudit(t, st.store)
	for table, d := range before {
		if after[table] != d {
			t.Errorf("table %s changed on a refused move", table)
		}
	}
	es, _ := st.store.AuditEntries(context.Background(), store.AuditFilter{})
	var actions []string
	for _, e := range es {
		actions = append(actions, e.Action+":"+e.Reason)
	}
	want := []string{"organisation.create:contract signed", "site.create:", "site.move:belongs there"}
	if !slices.Equal(actions, want) {
		t.Fatalf("audit actions = %q, want %q", actions, want)
	}
}

func TestRoleChange(t *testing.T) {
	st := newStack(t)
	var a, b store.Site
	st.postJSON(t, "/api/v1/sites", adminToken, map[string]string{"name": "Radiology", "organisation": "St. Mary"}, &a)
	st.postJSON(t, "/api/v1/sites", adminToken, map[string]string{"name": "ICU", "organisation": "St. Mary"}, &b)
	userID, _, secret := st.apiUser(t, access.UserRequest{Name: "sam", Role: "hospital_it", SiteIDs: []string{a.ID}})
	var sites struct{ Sites []store.Site }
	if st.call(t, "GET", "/api/v1/sites", secret, "", nil, &sites); len(sites.Sites) != 1 {
		t.Fatalf("hospital IT of one site sees %d sites", len(sites.Sites))
	}
	before := digestsWithoutAudit(t, st.store)
	if code := st.postJSON(t, "/api/v1/users/sam/role", adminToken, map[string]any{"role": "root", "site_ids": []string{"nope"}}, nil); code != 400 {
		t.Fatalf("set role root = %d, want 400", code)
	}
	if after := digestsWithoutAudit(t, st.store); after["users"] != before["users"] || after["user_sites"] != before["user_sites"] {
		t.Fatal("a refused role change changed the user")
	}
	if code := st.postJSON(t, "/api/v1/users/sam/role", adminToken, map[string]any{"role": "auditor", "reason": "moved to quality"}, nil); code != 200 {
		t.Fatalf("set role auditor = %d", code)
	}
	if st.call(t, "GET", "/api/v1/sites", secret, "", nil, &sites); len(sites.Sites) != 2 {
		t.Fatalf("after the change sam sees %d sites, want 2", len(sites.Sites))
	}
	if code := st.call(t, "GET", "/api/v1/audit", secret, "", nil, nil); code != 200 {
		t.Fatalf("auditor sam reads the audit log: %d", code)
	}
	es, _ := st.store.AuditEntries(context.Background(), store.AuditFilter{Action: "user.role"})
	if len(es) != 1 || es[0].Object != "user/"+userID || es[0].Reason != "moved to quality" || !strings.Contains(string(es[0].Details), `"from":{"organisation_id":"","role":"hospital_it"`) {
		t.Fatalf("role change entry: %+v", es)
	}
}
