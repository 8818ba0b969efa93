package health

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeSystemctl writes a stand-in for `systemctl is-active UNIT` into dir:
// it prints the first line of dir/UNIT (then drops that line, so a unit can
// go from activating to active) and exits 0 only for "active", as systemctl
// does. The tests use it because no systemd runs in the test container;
// TestUnitRealSystemd uses the real one where systemd is PID 1.
func fakeSystemctl(t *testing.T, states map[string][]string) string {
	t.Helper()
	dir := t.TempDir()
	for unit, lines := range states {
		if err := os.WriteFile(filepath.Join(dir, unit), []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	script := `#!/bin/sh
[ "$1" = is-active ] || exit 64
f="` + dir + `/$2"
[ -f "$f" ] || { echo unknown; exit 4; }
state=$(head -n1 "$f")
[ "$(wc -l < "$f")" -gt 1 ] && sed -i 1d "$f"
echo "$state"
[ "$state" = active ]
`
	prog := filepath.Join(dir, "systemctl")
	if err := os.WriteFile(prog, []byte(script), 0o700); err != nil {
		t.Fatal(err)
	}
	return prog
}

func TestCheck(t *testing.T) {
	healthy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(healthy.Close)
	broken := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "down", http.StatusServiceUnavailable)
	}))
	t.Cleanup(broken.Close)

	tests := []struct {
		name     string
		units    []string
		states   map[string][]string
		commands [][]string
		server   string
		noProg   bool // systemctl missing
		wantErr  string
	}{
		{name: "nothing-configured"},
		{name: "units-active", units: []string{"pump.service", "net.target"},
			states: map[string][]string{"pump.service": {"active"}, "net.target": {"active"}}},
		{name: "activating-then-active", units: []string{"pump.service"},
			states: map[string][]string{"pump.service": {"activating", "activating", "active"}}},
		{name: "unit-failed", units: []string{"pump.service"},
			states: map[string][]string{"pump.service": {"failed"}}, wantErr: "unit pump.service is failed, not active"},
		{name: "unit-inactive", units: []string{"pump.service"},
			states: map[string][]string{"pump.service": {"inactive"}}, wantErr: "unit pump.service is inactive, not active"},
		{name: "second-unit-unknown", units: []string{"pump.service", "alarm.service"},
			states: map[string][]string{"pump.service": {"active"}}, wantErr: "unit alarm.service is unknown, not active"},
		{name: "systemctl-missing", units: []string{"pump.service"}, noProg: true, wantErr: "unit pump.service: systemctl is-active"},
		{name: "command-fails", commands: [][]string{{"true"}, {"sh", "-c", "echo pump self-test failed; exit 1"}},
			wantErr: "pump self-test failed"},
		{name: "commands-units-server", commands: [][]string{{"true"}}, units: []string{"pump.service"},
			states: map[string][]string{"pump.service": {"active"}}, server: healthy.URL},
		{name: "server-unhealthy", server: broken.URL, wantErr: "fleet server not reachable: status 503"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Checker{Commands: tt.commands, Units: tt.units, Systemctl: fakeSystemctl(t, tt.states),
				ServerURL: tt.server, HTTP: healthy.Client(), Retry: time.Millisecond}
			if tt.noProg {
				c.Systemctl = filepath.Join(t.TempDir(), "no-systemctl")
			}
			if tt.name == "server-unhealthy" {
				// The check retries until its deadline; keep that short.
				c.Timeout = 100 * time.Millisecond
			}
			err := c.Check(context.Background())
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Check() = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Check() = %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

// TestUnitRealSystemd asks the real systemd about a unit that cannot
// exist; it runs only where systemd is the init system.
func TestUnitRealSystemd(t *testing.T) {
	if _, err := os.Stat("/run/systemd/system"); err != nil {
		t.Skip("systemd is not running here; TestCheck covers units with a fake systemctl")
	}
	c := Checker{Units: []string{"aftercare-test-no-such-unit.service"}, Timeout: 30 * time.Second}
	err := c.Check(context.Background())
	if err == nil || !strings.Contains(err.Error(), "not active") {
		t.Fatalf("Check() = %v, want the unit reported not active", err)
	}
}
