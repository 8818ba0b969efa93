package e2e

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// waitVersion waits until every device of the fleet runs version.
func waitVersion(t *testing.T, s *server, f *fleet, version string) {
	t.Helper()
	waitFor(t, rolloutTimeout, "every device runs "+version, func() bool {
		for _, sp := range summary(t, s) {
			if sp.Counts.Versions[version] != sp.Counts.Total || sp.Counts.Failed > 0 {
				return false
			}
		}
		return true
	})
}

// signApproved builds a release and signs it offline with the two release
// holders' keys, checking what the CLI says between the signatures.
func signApproved(t *testing.T, s *server, version, second string) (bundle, signed string) {
	t.Helper()
	keys := s.keysDir
	bundle = buildBundle(t, version, "")
	signed = filepath.Join(t.TempDir(), "targets.json")
	out := runCLI(t, nil, "release", "sign", "--bundle", bundle, "--targets", currentTargets(t, s),
		"--key", filepath.Join(keys, "targets-release-eng.key"), "--root", filepath.Join(keys, "1.root.json"), "-o", signed)
	if !strings.Contains(out, "not yet signed: "+second) || !strings.Contains(out, "not ready") {
		t.Fatalf("release sign says:\n%s\nwant it to name %s as missing", out, second)
	}
	return bundle, signed
}

// rollOut builds a release, signs it with the first key and approves it
// with the second, uploads it, rolls it out and waits for every device.
func rollOut(t *testing.T, s *server, f *fleet, version, signKey, approveKey string) {
	t.Helper()
	bundle := buildBundle(t, version, "")
	signed := filepath.Join(t.TempDir(), "targets.json")
	runCLI(t, nil, "release", "sign", "--bundle", bundle, "--targets", currentTargets(t, s), "--key", signKey, "-o", signed)
	runCLI(t, nil, "release", "approve", "--targets", signed, "--key", approveKey)
	var rel struct{ ID string }
	cliJSON(t, s, &rel, "release", "upload", "--bundle", bundle, "--targets", signed)
	runCLI(t, s.cliEnv(), "rollout", "create", "--release", rel.ID)
	waitVersion(t, s, f, version)
}

// TestOfflineReleaseApprovalAndKeyRotation runs the release engineer's
// offline workflow end to end: two people must sign every release, a
// release key is rotated (new root signed by old and new root thresholds),
// a compromised online key is revoked, and devices that shipped with the
// first roots follow every step and install each release.
func TestOfflineReleaseApprovalAndKeyRotation(t *testing.T) {
	s := startServer(t, serverOptions{keysInit: []string{
		"--root-holder", "alice", "--root-holder", "bob", "--root-holder", "carol", "--root-threshold", "2",
		"--release-holder", "release-eng", "--release-holder", "quality", "--release-threshold", "2",
	}})
	keys := s.keysDir
	key := func(name string) string { return filepath.Join(keys, name) }
	f := enroll(t, s, map[string]int{"St. Mary Radiology": 2})
	runSim(t, s, f, "", 5*time.Second)
	waitReported(t, s, f)

	// One signature is not a release.
	bundle, signed := signApproved(t, s, "1.1.0", "quality")
	if _, err := tryCLI(s.cliEnv(), "release", "upload", "--bundle", bundle, "--targets", signed); err == nil || !strings.Contains(err.Error(), "quality") {
		t.Fatalf("upload with one of two approvals = %v, want a refusal naming quality", err)
	}
	out := runCLI(t, nil, "release", "approve", "--targets", signed, "--key", key("targets-quality.key"), "--root", key("1.root.json"))
	if !strings.Contains(out, "infusion-pump/1.1.0/") || !strings.Contains(out, "ready to upload") {
		t.Fatalf("release approve says:\n%s\nwant the release listed and ready", out)
	}
	if out := runCLI(t, nil, "release", "status", "--targets", signed, "--root", key("1.root.json")); !strings.Contains(out, "2 of 2") {
		t.Fatalf("release status says:\n%s", out)
	}
	var rel struct{ ID string }
	cliJSON(t, s, &rel, "release", "upload", "--bundle", bundle, "--targets", signed)
	runCLI(t, s.cliEnv(), "rollout", "create", "--release", rel.ID)
	waitVersion(t, s, f, "1.1.0")
	// The devices read their assignment from the rollout repository.
	for _, d := range f.devices {
		bins, _ := filepath.Glob(filepath.Join(f.dir, "devices", d.Serial, "tuf", "rollout", "trusted", "bins-*.json"))
		if len(bins) != 1 {
			t.Fatalf("device %s keeps %d rollout bins, want its own one", d.Serial, len(bins))
		}
	}

	// quality's key is retired and dave's joins: a new root, signed by
	// two of the three root holders.
	dir := t.TempDir()
	dave, root2 := filepath.Join(dir, "dave.key"), filepath.Join(dir, "2.root.json")
	runCLI(t, nil, "keys", "generate", "--out", dave)
	out = runCLI(t, nil, "keys", "rotate", "--root", key("1.root.json"), "--role", "targets", "--remove", "quality",
		"--add", "dave="+dave+".pub", "--key", key("root-alice.key"), "-o", root2)
	if !strings.Contains(out, "not ready") {
		t.Fatalf("keys rotate with one root signature says:\n%s", out)
	}
	out = runCLI(t, nil, "keys", "sign-root", "--previous", key("1.root.json"), "--root", root2, "--key", key("root-bob.key"))
	if !strings.Contains(out, "ready: upload") {
		t.Fatalf("keys sign-root says:\n%s", out)
	}
	// The current targets were approved by quality: the server wants them
	// signed again by the new release keys.
	if _, err := tryCLI(s.cliEnv(), "keys", "upload-root", "--root", root2); err == nil || !strings.Contains(err.Error(), "409") {
		t.Fatalf("upload-root without re-signed targets = %v, want 409", err)
	}
	resigned := filepath.Join(dir, "resigned.json")
	runCLI(t, nil, "release", "resign", "--targets", currentTargets(t, s), "--key", key("targets-release-eng.key"), "-o", resigned)
	runCLI(t, nil, "release", "approve", "--targets", resigned, "--key", dave, "--root", root2)
	runCLI(t, s.cliEnv(), "keys", "upload-root", "--root", root2, "--targets", resigned)

	rollOut(t, s, f, "1.2.0", key("targets-release-eng.key"), dave)

	// The online rollout key leaks: the root holders replace it, and the
	// server restarts with the new key and the new rollout root.
	rollout2, rolloutRoot2 := filepath.Join(dir, "rollout-2.key"), filepath.Join(dir, "2.rollout-root.json")
	runCLI(t, nil, "keys", "generate", "--out", rollout2)
	runCLI(t, nil, "keys", "rotate", "--root", key("1.rollout-root.json"), "--role", "targets,snapshot,timestamp",
		"--remove", "fleet-server", "--add", "fleet-server="+rollout2+".pub", "--key", key("root-alice.key"), "--key", key("root-carol.key"), "-o", rolloutRoot2)
	s.restart(t, "AFTERCARE_ROLLOUT_KEY="+rollout2, "AFTERCARE_ROLLOUT_ROOT="+rolloutRoot2)
	rollOut(t, s, f, "1.3.0", key("targets-release-eng.key"), dave)
	for _, d := range f.devices {
		for _, repo := range []string{"release", "rollout"} {
			b, err := os.ReadFile(filepath.Join(f.dir, "devices", d.Serial, "tuf", repo, "trusted", "root.json"))
			var root struct {
				Signed struct{ Version int } `json:"signed"`
			}
			if err := errors.Join(err, json.Unmarshal(b, &root)); err != nil || root.Signed.Version != 2 {
				t.Fatalf("device %s trusts %s root v%d (%v), want version 2", d.Serial, repo, root.Signed.Version, err)
			}
		}
	}
}
