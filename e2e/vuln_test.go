package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/openvex/go-vex/pkg/vex"
)

// TestExposedToCVE is PSIRT's walk-through of docs/vulnerability-monitoring.md
// with the real binaries: a release with its SBOM, devices running it in two
// hospitals, an NVD record imported from a file, and the CLI answering "are
// we exposed to CVE-2023-0286?", recording a decision and exporting VEX.
func TestExposedToCVE(t *testing.T) {
	s := startServer(t, serverOptions{})
	f := enroll(t, s, twoSites)
	runSim(t, s, f, "", time.Minute)
	waitReported(t, s, f)
	rel := publishWithSBOM(t, s, "1.0.0", "../server/internal/sbom/testdata/yocto/infusion-pump-image.cdx.json")
	env := s.cliEnv()

	out := runCLI(t, env, "vuln", "feeds", "import", "--kind", "nvd", "../server/internal/vuln/testdata/nvd/CVE-2023-0286.json", "../server/internal/vuln/testdata/nvd/CVE-2022-48174.json")
	if !strings.Contains(out, "1 nvd record(s) imported") {
		t.Errorf("feeds import printed %q", out)
	}
	if _, err := tryCLI(env, "vuln", "feeds", "import", "--kind", "kev", "../server/internal/vuln/testdata/epss/vunnel-example-1.csv"); err == nil || !strings.Contains(err.Error(), "invalid kev feed") {
		t.Errorf("importing an EPSS file as KEV = %v, want a clear refusal", err)
	}

	var findings struct {
		Findings []struct {
			VulnID string `json:"vuln_id"`
			State  string `json:"state"`
		} `json:"findings"`
	}
	cliJSON(t, s, &findings, "vuln", "findings", "--release", rel)
	states := map[string]string{}
	for _, f := range findings.Findings {
		states[f.VulnID] = f.State
	}
	if states["CVE-2023-0286"] != "open" || states["CVE-2022-48174"] != "patched" {
		t.Errorf("findings = %v; want CVE-2023-0286 open, CVE-2022-48174 patched by backport", states)
	}

	t.Logf("findings --why:\n%s", runCLI(t, env, "vuln", "findings", "--release", rel, "--why"))
	out = runCLI(t, env, "vuln", "exposed", "CVE-2023-0286", "--devices", "10")
	t.Logf("exposed:\n%s", out)
	for _, want := range []string{"EXPOSED: 3 device(s)", "St. Mary Radiology", "Lakeside Cardiology", "infusion-pump 1.0.0", "openssl 3.0.7"} {
		if !strings.Contains(out, want) {
			t.Errorf("vuln exposed output lacks %q:\n%s", want, out)
		}
	}
	out = runCLI(t, env, "vuln", "exposed", "CVE-2099-0001", "--component", "curl", "--introduced", "8.0.0", "--fixed", "8.4.0")
	if !strings.Contains(out, "not in the imported feeds") || !strings.Contains(out, "EXPOSED: 3 device(s)") {
		t.Errorf("vuln exposed (not in feeds) output:\n%s", out)
	}

	runCLI(t, env, "vuln", "disposition", "set", "--cve", "CVE-2023-0286", "--product", "infusion-pump", "--status", "patch_planned",
		"--target-release", "1.1.0", "--reason", "openssl 3.0.8 goes into 1.1.0")
	if out := runCLI(t, env, "vuln", "disposition", "history"); !strings.Contains(out, "openssl 3.0.8 goes into 1.1.0") {
		t.Errorf("disposition history:\n%s", out)
	}
	vexFile := filepath.Join(t.TempDir(), "vex.json")
	runCLI(t, env, "vuln", "vex", "export", "--release", rel, "-o", vexFile)
	b, _ := os.ReadFile(vexFile)
	doc, err := vex.Parse(b)
	if err != nil {
		t.Fatalf("exported VEX: %v", err)
	}
	for _, st := range doc.Statements {
		if st.Vulnerability.Name == "CVE-2023-0286" && (st.Status != vex.StatusAffected || !strings.Contains(st.ActionStatement, "1.1.0")) {
			t.Errorf("VEX statement = %+v", st)
		}
	}

	// An SBOM from Go build information, as `make sbom` makes the agent's
	// (aftercare-sim links the same agent packages; the harness builds it).
	agentSBOM := filepath.Join(t.TempDir(), "agent.cdx.json")
	runCLI(t, nil, "sbom", "go-binary", filepath.Join(bin, "aftercare-sim"), "--version", "1.0.0", "-o", agentSBOM)
	if out := runCLI(t, nil, "sbom", "check", agentSBOM); !strings.Contains(out, "CycloneDX 1.6") {
		t.Errorf("sbom check: %s", out)
	}
	var bom struct {
		Components []struct{ Name string } `json:"components"`
	}
	b, _ = os.ReadFile(agentSBOM)
	json.Unmarshal(b, &bom)
	found := false
	for _, c := range bom.Components {
		found = found || c.Name == "github.com/theupdateframework/go-tuf/v2"
	}
	if !found {
		t.Errorf("the agent's SBOM does not list go-tuf: %d components", len(bom.Components))
	}
}
