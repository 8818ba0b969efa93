package e2e

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestOfflineBundle installs a release at an air-gapped device from a
// bundle file: no server or broker is reachable during the install. A
// bundle with one byte changed (metadata or image) is refused with its
// reason and arms nothing; the good one installs, and once the device can
// reach the fleet again the server shows it on the new release with every
// report, in order, once.
func TestOfflineBundle(t *testing.T) {
	s := startServer(t, serverOptions{})
	var st site
	cliJSON(t, s, &st, "site", "create", "Island Clinic")
	var toks struct{ Tokens []string }
	cliJSON(t, s, &toks, "site", "tokens", st.ID, "--count", "1")

	// Enrolled once on a network (an offline bundle is made for a device ID).
	dev := newAgentDevice(t, s, "PX1-OFF1")
	dev.configure(t, s, agentConfig{serverURL: s.url, brokerURL: s.deviceBroker, token: toks.Tokens[0]})
	first := dev.run(t)
	enrolled := waitDevice(t, s, dev.serial, 30*time.Second, "the device enrolled and reported", func(d devicePatch) bool { return d.LastSeq >= 1 })
	first.stop()

	rel := publish(t, s, "1.1.0")
	bundle := filepath.Join(t.TempDir(), "pump-x1-1.1.0.tar")
	// Not assigned yet: the CLI says what to do and writes nothing.
	if _, err := tryCLI(s.cliEnv(), "offline-bundle", rel, "--device", enrolled.ID, "-o", bundle); err == nil ||
		!strings.Contains(err.Error(), "assigns nothing to device "+enrolled.ID+"; create a rollout") {
		t.Fatalf("offline-bundle before a rollout = %v, want it to ask for a rollout", err)
	}
	if _, err := os.Stat(bundle); !os.IsNotExist(err) {
		t.Fatalf("a refused offline-bundle left %s behind (%v)", bundle, err)
	}
	runCLI(t, s.cliEnv(), "rollout", "create", "--release", rel)
	out := runCLI(t, s.cliEnv(), "offline-bundle", rel, "--device", enrolled.ID, "-o", bundle)
	if !strings.Contains(out, "install it before") {
		t.Errorf("offline-bundle printed %q, want the bundle's expiry", out)
	}

	dev.offline(t, s)
	tests := []struct {
		name   string
		entry  string // entry name containing this
		modify func([]byte)
		want   string
	}{
		{"metadata-byte", "tuf/rollout/metadata/timestamp.json", flipExpiresDigit,
			"not signed to threshold by keys the trusted root names"},
		{"image-byte", "tuf/release/targets/", func(b []byte) { b[len(b)/2] ^= 0x01 }, "sha256"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bad := filepath.Join(t.TempDir(), "tampered.tar")
			rewriteBundle(t, bundle, bad, tt.entry, tt.modify)
			out, err := dev.installBundle(t, bad)
			if err == nil || !strings.Contains(out, tt.want) {
				t.Fatalf("install-bundle(%s) = %v\n%s\nwant a refusal naming %q", tt.name, err, out, tt.want)
			}
			if primary, try := dev.bootEnv(t); primary != "a" || try != "" {
				t.Fatalf("after a refused bundle the boot environment is primary=%q try=%q, want a and nothing armed", primary, try)
			}
		})
	}

	out, err := dev.installBundle(t, bundle)
	if err != nil {
		t.Fatalf("install-bundle: %v\n%s", err, out)
	}
	if _, try := dev.bootEnv(t); try != "b" {
		t.Fatalf("after install-bundle slot %q is armed, want b", try)
	}
	if d, _ := deviceBySerial(t, s, dev.serial); d.InstalledVersion != "1.0.0" {
		t.Fatalf("the server heard %s from a device that was offline", d.InstalledVersion)
	}

	// Back on the network: the agent boots the new slot, passes its health
	// check, commits, and the reports waiting in the outbox arrive.
	dev.online(t, s)
	dev.run(t)
	d := waitDevice(t, s, dev.serial, rolloutTimeout, "the device reports 1.1.0 committed", func(d devicePatch) bool {
		return d.InstalledVersion == "1.1.0" && d.State == "committed"
	})
	got := states(reportsOf(t, s, d.ID))
	// The two refusals were reported too, while offline.
	for _, want := range []string{"failed", "downloading", "verified", "installed", "booted", "committed"} {
		if !strings.Contains(got, want) {
			t.Errorf("reports %q lack %q", got, want)
		}
	}
	sp := sitePatchState(t, s, st.ID)
	if sp.Counts.Current != 1 || sp.Counts.Versions["1.1.0"] != 1 || len(sp.Devices) != 1 || sp.Devices[0].Status != "current" {
		t.Errorf("site patch state = %+v, want the device current on 1.1.0", sp)
	}
}

// flipExpiresDigit changes the last digit of the year of the first
// "expires" value: still valid JSON, no longer what was signed.
func flipExpiresDigit(b []byte) {
	i := bytes.Index(b, []byte(`"expires":"`))
	if i < 0 {
		i = bytes.Index(b, []byte(`"expires": "`)) - 1
	}
	year := i + len(`"expires":"`) + 3
	if b[year] == '9' {
		b[year] = '8'
	} else {
		b[year]++
	}
}

// rewriteBundle copies the bundle src to dst, passing the content of the
// first entry whose name contains match through modify.
func rewriteBundle(t *testing.T, src, dst, match string, modify func([]byte)) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	tr, tw := tar.NewReader(in), tar.NewWriter(out)
	done := false
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if !done && strings.Contains(h.Name, match) {
			modify(b)
			done = true
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write(b)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if !done {
		t.Fatalf("bundle %s has no entry matching %q", src, match)
	}
}
