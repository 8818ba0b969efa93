package main

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aftercare/aftercare/protocol"
)

// deviceDir writes an agent config and, when enrolled, an identity.
func deviceDir(t *testing.T, enrolled bool) (config, stateDir string) {
	t.Helper()
	dir := t.TempDir()
	stateDir = filepath.Join(dir, "state")
	os.MkdirAll(stateDir, 0o700)
	for _, f := range []string{"root.json", "rollout-root.json"} {
		os.WriteFile(filepath.Join(dir, f), []byte("{}"), 0o600)
	}
	if enrolled {
		id := `{"format":2,"device_id":"d-1","site_id":"s","broker_url":"tcp://127.0.0.1:1","topic_prefix":"aftercare/v1"}`
		os.WriteFile(filepath.Join(stateDir, "identity.json"), []byte(id), 0o600)
	}
	config = filepath.Join(dir, "agent.yaml")
	y := fmt.Sprintf("server_url: http://127.0.0.1:1\nstate_dir: %s\nmodel: pump-x1\nfactory_version: 1.0.0\n"+
		"trusted_root: %s\ntrusted_rollout_root: %s\nslot_a: %s\nslot_b: %s\n", stateDir,
		filepath.Join(dir, "root.json"), filepath.Join(dir, "rollout-root.json"), filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img"))
	os.WriteFile(config, []byte(y), 0o600)
	return config, stateDir
}

// bundleFor writes a bundle holding only a manifest for deviceID.
func bundleFor(t *testing.T, deviceID string) string {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	m := protocol.OfflineManifest{Format: protocol.OfflineFormat, DeviceID: deviceID}.Marshal()
	tw.WriteHeader(&tar.Header{Name: protocol.OfflineManifestName, Mode: 0o644, Size: int64(len(m)), Typeflag: tar.TypeReg})
	tw.Write(m)
	tw.Close()
	p := filepath.Join(t.TempDir(), "bundle.tar")
	os.WriteFile(p, buf.Bytes(), 0o600)
	return p
}

func TestInstallBundleRefusesEarly(t *testing.T) {
	tests := []struct {
		name     string
		enrolled bool
		args     func(config string) []string
		locked   bool
		wantCode int
		want     string
	}{
		{"no-file", true, func(c string) []string { return []string{"-config", c} }, false, 2, "aftercare-agent install-bundle [-config"},
		{"not-enrolled", false, func(c string) []string { return []string{"-config", c, bundleFor(t, "d-1")} }, false, 2, "not enrolled"},
		{"other-device", true, func(c string) []string { return []string{"-config", c, bundleFor(t, "d-2")} }, false, 1, "is for device d-2; this device is d-1"},
		{"not-a-bundle", true, func(c string) []string { return []string{"-config", c, c} }, false, 1, "not an offline bundle"},
		{"service-running", true, func(c string) []string { return []string{"-config", c, bundleFor(t, "d-1")} }, true, 1, "stop the aftercare-agent service"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			config, stateDir := deviceDir(t, tt.enrolled)
			if tt.locked {
				unlock, err := lockState(stateDir)
				if err != nil {
					t.Fatal(err)
				}
				defer unlock()
			}
			var stderr bytes.Buffer
			err := run(context.Background(), append([]string{"install-bundle"}, tt.args(config)...), func(string) string { return "" }, &stderr)
			if err == nil || exitCode(err) != tt.wantCode || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("install-bundle = %v (exit %d), want exit %d and %q", err, exitCode(err), tt.wantCode, tt.want)
			}
			if b, _ := os.ReadFile(filepath.Join(stateDir, "boot", "bootenv.json")); bytes.Contains(b, []byte(`"try":"b"`)) {
				t.Fatalf("a refused bundle armed slot b: %s", b)
			}
		})
	}
}
