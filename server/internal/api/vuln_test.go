package api_test

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/aftercare/aftercare/server/internal/store"
)

func readTestdata(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestBadSBOMRefusesTheRelease(t *testing.T) {
	st := newStack(t)
	b, m := bundleWithSBOM(t, "1.1.0", readTestdata(t, "../sbom/testdata/bad/bad-purl.json"))
	var res struct {
		Problems []string `json:"problems"`
	}
	if code := st.upload(t, b, st.sign(t, m, st.targets), &res); code != http.StatusBadRequest {
		t.Fatalf("upload with a bad SBOM = %d, want 400", code)
	}
	if len(res.Problems) != 1 || !strings.Contains(res.Problems[0], `sbom: components[0].purl "openssl@3.0.7"`) {
		t.Errorf("problems = %q", res.Problems)
	}
	st.nothingPublished(t)
}

func TestVulnerabilityEndpoints(t *testing.T) {
	st := newStack(t)
	ctx := context.Background()
	b, m := bundleWithSBOM(t, "1.0.0", readTestdata(t, "../sbom/testdata/yocto/infusion-pump-image.cdx.json"))
	var rel struct {
		ID string `json:"id"`
	}
	if code := st.upload(t, b, st.sign(t, m, st.targets), &rel); code != http.StatusCreated {
		t.Fatalf("upload = %d", code)
	}
	// A device at a site runs the release.
	if err := st.store.CreateSite(ctx, store.Site{ID: "s1", Name: "Radiology", Organisation: "St. Mary", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	st.store.CreateEnrollmentToken(ctx, "s1", "tok", time.Now(), time.Now().Add(time.Hour))
	if _, err := st.store.Enroll(ctx, "tok", "cred", time.Now(), store.Device{ID: "d1", Model: "pump-x1", InstalledVersion: "1.0.0"}); err != nil {
		t.Fatal(err)
	}
	var sbomRes struct {
		SBOM struct {
			Format     string `json:"format"`
			Components int    `json:"components"`
		} `json:"sbom"`
	}
	if code := st.call(t, http.MethodGet, "/api/v1/releases/"+rel.ID+"/sbom", adminToken, "", nil, &sbomRes); code != 200 || sbomRes.SBOM.Components != 7 {
		t.Fatalf("GET sbom = %d %+v", code, sbomRes)
	}
	var imp struct {
		Feed struct {
			Records int `json:"records"`
		} `json:"feed"`
		Analysis struct {
			New int `json:"new"`
		} `json:"analysis"`
	}
	code := st.call(t, http.MethodPost, "/api/v1/vuln/feeds/nvd?name=CVE-2023-0286.json", adminToken, "application/json",
		bytes.NewReader(readTestdata(t, "../vuln/testdata/nvd/CVE-2023-0286.json")), &imp)
	if code != 200 || imp.Feed.Records != 1 || imp.Analysis.New != 1 {
		t.Fatalf("import NVD = %d %+v", code, imp)
	}
	var bad struct {
		Problems []string `json:"problems"`
	}
	if code := st.call(t, http.MethodPost, "/api/v1/vuln/feeds/kev", adminToken, "", strings.NewReader(`{"catalogVersion": "x", "vulnerabilities": [`), &bad); code != 400 || !strings.Contains(bad.Problems[0], "line 1") {
		t.Errorf("import truncated KEV = %d %q", code, bad.Problems)
	}
	var findings struct {
		Findings []struct {
			VulnID string `json:"vuln_id"`
			State  string `json:"state"`
			Rules  []struct {
				Text string `json:"text"`
			} `json:"rules"`
		} `json:"findings"`
	}
	if code := st.call(t, http.MethodGet, "/api/v1/releases/"+rel.ID+"/findings?state=open", adminToken, "", nil, &findings); code != 200 || len(findings.Findings) != 1 || findings.Findings[0].VulnID != "CVE-2023-0286" {
		t.Fatalf("GET findings = %d %+v", code, findings)
	}
	var exp struct {
		Exposed bool `json:"exposed"`
		Totals  struct {
			Total int `json:"total"`
		} `json:"totals"`
		Organisations []struct {
			Organisation string `json:"organisation"`
		} `json:"organisations"`
		Devices []struct {
			ID string `json:"id"`
		} `json:"devices"`
	}
	if code := st.call(t, http.MethodGet, "/api/v1/vuln/exposure/CVE-2023-0286?devices=10", adminToken, "", nil, &exp); code != 200 || !exp.Exposed || exp.Totals.Total != 1 || exp.Devices[0].ID != "d1" || exp.Organisations[0].Organisation != "St. Mary" {
		t.Fatalf("GET exposure = %d %+v", code, exp)
	}
	if code := st.call(t, http.MethodGet, "/api/v1/vuln/exposure/CVE-2023-0286?devices=lots", adminToken, "", nil, nil); code != 400 {
		t.Errorf("GET exposure?devices=lots = %d, want 400", code)
	}
	if code := st.postJSON(t, "/api/v1/vuln/exposure", adminToken, map[string]any{"vuln_id": "CVE-2099-0001", "name": "curl", "introduced": "8.0.0", "fixed": "8.4.0"}, &exp); code != 200 || !exp.Exposed {
		t.Errorf("POST exposure (not in feeds) = %d %+v", code, exp)
	}
	disp := map[string]any{"product": "pump", "vuln_id": "CVE-2023-0286", "status": "not_affected", "justification": "vulnerable_code_not_in_execute_path", "reason": "no X.400 names are parsed"}
	if code := st.postJSON(t, "/api/v1/vuln/dispositions", adminToken, disp, nil); code != http.StatusCreated {
		t.Fatalf("POST disposition = %d", code)
	}
	disp["status"] = "maybe"
	if code := st.postJSON(t, "/api/v1/vuln/dispositions", adminToken, disp, &bad); code != 400 || !strings.Contains(strings.Join(bad.Problems, ";"), `status "maybe"`) {
		t.Errorf("POST bad disposition = %d %q", code, bad.Problems)
	}
	var hist struct {
		History []struct {
			Actor  string `json:"actor"`
			Reason string `json:"reason"`
		} `json:"history"`
	}
	if code := st.call(t, http.MethodGet, "/api/v1/vuln/dispositions/history?vuln_id=CVE-2023-0286", adminToken, "", nil, &hist); code != 200 || len(hist.History) != 1 || hist.History[0].Actor != "admin" {
		t.Errorf("GET history = %d %+v", code, hist)
	}
	var vexDoc struct {
		Statements []struct {
			Status string `json:"status"`
		} `json:"statements"`
	}
	if code := st.call(t, http.MethodGet, "/api/v1/releases/"+rel.ID+"/vex?format=openvex", adminToken, "", nil, &vexDoc); code != 200 || len(vexDoc.Statements) != 1 || vexDoc.Statements[0].Status != "not_affected" {
		t.Errorf("GET vex = %d %+v", code, vexDoc)
	}
	if code := st.call(t, http.MethodGet, "/api/v1/releases/"+rel.ID+"/vex?format=spdx", adminToken, "", nil, nil); code != 400 {
		t.Errorf("GET vex?format=spdx = %d, want 400", code)
	}
	if code := st.call(t, http.MethodPost, "/api/v1/vuln/vex", adminToken, "", bytes.NewReader(readTestdata(t, "../vuln/testdata/vex/trivy-openvex.json")), nil); code != 200 {
		t.Errorf("POST vex = %d", code)
	}
	if code := st.call(t, http.MethodGet, "/api/v1/vuln/feeds", "", "", nil, nil); code != 401 {
		t.Errorf("GET feeds without a token = %d, want 401", code)
	}
	for _, p := range []string{"/api/v1/vuln/triage", "/api/v1/vuln/dispositions", "/api/v1/vuln/findings?vuln_id=CVE-2023-0286", "/api/v1/vuln/feeds"} {
		if code := st.call(t, http.MethodGet, p, adminToken, "", nil, nil); code != 200 {
			t.Errorf("GET %s = %d", p, code)
		}
	}
}
