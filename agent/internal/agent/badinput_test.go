package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aftercare/aftercare/agent/internal/slowread"
	"github.com/aftercare/aftercare/agent/internal/update/reposim"
	"github.com/aftercare/aftercare/firmware"
)

// zstdAssigned publishes release 1.1.0 as a zstd image and assigns it to
// the test device. It returns the stored image and its file in the
// simulator.
func zstdAssigned(t *testing.T) (*reposim.Sim, []byte, string) {
	t.Helper()
	raw := make([]byte, 600<<10)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range raw {
		if i%3 == 0 {
			raw[i] = byte(rng.Uint32())
		}
	}
	var stored bytes.Buffer
	enc, err := firmware.Encoder(firmware.CompressionZstd, &stored)
	if err != nil {
		t.Fatal(err)
	}
	enc.Write(raw)
	if err := enc.Close(); err != nil {
		t.Fatal(err)
	}
	m := reposim.ManifestFor(raw, "1.1.0", "pump-x1")
	s := sha256.Sum256(stored.Bytes())
	m.Image.Compression, m.Image.Length, m.Image.SHA256 = firmware.CompressionZstd, int64(stored.Len()), hex.EncodeToString(s[:])
	sim := reposim.New(t)
	sim.AddReleaseImage(m, stored.Bytes(), false)
	sim.Publish(sim.Release)
	sim.Assign(testDeviceID, "rollout-1", m.TargetPath())
	sim.Publish(sim.Rollout)
	dir, name := path.Split(m.TargetPath())
	return sim, stored.Bytes(), "release/targets/" + dir + m.Image.SHA256 + "." + name
}

// readOnly makes path a file no one may write, root included (root
// ignores the mode bits, not the immutable attribute).
func readOnly(t *testing.T, path string) {
	t.Helper()
	if err := os.WriteFile(path, []byte("old contents"), 0o444); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() != 0 {
		return
	}
	if out, err := exec.Command("chattr", "+i", path).CombinedOutput(); err != nil {
		t.Skipf("read-only slot: running as root and chattr +i failed (%v: %s); cannot make a file root may not write", err, out)
	}
	t.Cleanup(func() { exec.Command("chattr", "-i", path).Run() })
}

func TestBadInputFailsCleanlyAndIsReported(t *testing.T) {
	tests := []struct {
		name string
		// tamper serves the image file badly; nil serves it as signed.
		tamper   func(stored []byte) func(w http.ResponseWriter, r *http.Request) bool
		slotB    func(t *testing.T, dir string) string // the inactive slot's path; nil for the default
		reason   []string                              // the failure report names one of these
		security bool                                  // a security event is logged and the rollout refused
	}{
		{name: "corrupt-compressed-stream", tamper: func(stored []byte) func(http.ResponseWriter, *http.Request) bool {
			bad := bytes.Clone(stored)
			bad[len(bad)/2] ^= 0x40
			return func(w http.ResponseWriter, r *http.Request) bool { w.Write(bad); return true }
		}, reason: []string{"does not decode", "sha256"}, security: true},
		{name: "truncated-download", tamper: func(stored []byte) func(http.ResponseWriter, *http.Request) bool {
			return func(w http.ResponseWriter, r *http.Request) bool {
				w.Header().Set("Content-Length", fmt.Sprint(len(stored)))
				w.Write(stored[:len(stored)/2])
				return true
			}
		}, reason: []string{"stopped 2 times without progress"}},
		{name: "full-disk", slotB: func(*testing.T, string) string { return "/dev/full" },
			reason: []string{"no space left on device"}},
		{name: "read-only-slot", slotB: func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "slot-b-ro.img")
			readOnly(t, p)
			return p
		}, reason: []string{"operation not permitted", "permission denied"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sim, stored, file := zstdAssigned(t)
			if tt.tamper != nil {
				serve := tt.tamper(stored)
				sim.SetTamper(func(w http.ResponseWriter, r *http.Request, f string) bool {
					return f == file && serve(w, r)
				})
			}
			slotDir := t.TempDir()
			a := newTestAgent(t, sim, "", slowread.Limits{}, func(o *Options) {
				if tt.slotB != nil {
					o.Slots[firmware.SlotB] = tt.slotB(t, slotDir)
				}
			})
			running := filepath.Join(a.dir, "slot-a.img")
			before, _ := os.ReadFile(running)
			err := a.check(context.Background())
			if tt.security && err != nil {
				t.Fatalf("check() = %v, want the assignment refused", err)
			}
			if !tt.security && err == nil {
				t.Fatal("check() = nil, want the failure returned for a retry")
			}
			fails := a.failures(t)
			if len(fails) != 1 || !containsAny(fails[0], tt.reason) {
				t.Fatalf("failure reports = %q, want one naming %q", fails, tt.reason)
			}
			t.Logf("reported failed: %s", fails[0])
			if got := strings.Contains(a.log.String(), `"msg":"security event"`); got != tt.security {
				t.Fatalf("security event logged = %t, want %t:\n%s", got, tt.security, a.log.String())
			}
			if after, _ := os.ReadFile(running); !bytes.Equal(before, after) {
				t.Fatal("the running slot changed")
			}
			a.notArmed(t)
			if slot, err := a.boot.PowerOn(); err != nil || slot != firmware.SlotA {
				t.Fatalf("after the failure the device booted %s (%v), want a", slot, err)
			}
		})
	}
}

func containsAny(s string, subs []string) bool {
	for _, sub := range subs {
		if strings.Contains(strings.ToLower(s), sub) {
			return true
		}
	}
	return false
}

func TestDroppedDownloadIsResumedInTheSameCheck(t *testing.T) {
	sim, stored, file := zstdAssigned(t)
	cuts := 0
	sim.SetTamper(func(w http.ResponseWriter, r *http.Request, f string) bool {
		if f != file || cuts > 0 {
			return false
		}
		cuts++
		// Headers for the whole image, half of it, then the connection
		// drops. The simulator then ignores Range: the install restarts
		// its hashes from zero (RFC 9110 §14.2).
		w.Header().Set("Content-Length", fmt.Sprint(len(stored)))
		w.Write(stored[:len(stored)/2])
		return true
	})
	a := newTestAgent(t, sim, "", slowread.Limits{})
	if err := a.check(context.Background()); !errors.Is(err, ErrReboot) {
		t.Fatalf("check() with a dropped download = %v, want the install to finish", err)
	}
	if fails := a.failures(t); len(fails) != 0 {
		t.Fatalf("failure reports %q for a download that resumed", fails)
	}
	if n := sim.Requests(file); n != 2 {
		t.Fatalf("the image was requested %d times, want 2", n)
	}
	if slot, err := a.boot.PowerOn(); err != nil || slot != firmware.SlotB {
		t.Fatalf("after the install the device booted %s (%v), want b", slot, err)
	}
}
