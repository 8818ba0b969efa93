package install_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aftercare/aftercare/agent/internal/boot"
	"github.com/aftercare/aftercare/agent/internal/install"
	"github.com/aftercare/aftercare/firmware"
)

type device struct {
	dir   string
	boot  *boot.File
	inst  *install.Installer
	slots map[firmware.Slot]string
	// resumedFrom is the stored offset of the last "download interrupted"
	// log record (see reopenWith).
	resumedFrom int64
}

func newDevice(t *testing.T, open func(string) (install.SlotFile, error)) *device {
	t.Helper()
	dir := t.TempDir()
	d := &device{dir: dir, slots: map[firmware.Slot]string{
		firmware.SlotA: filepath.Join(dir, "slot-a.img"),
		firmware.SlotB: filepath.Join(dir, "slot-b.img"),
	}}
	os.WriteFile(d.slots[firmware.SlotA], []byte("factory image"), 0o644)
	var err error
	if d.boot, err = boot.OpenFile(filepath.Join(dir, "boot")); err != nil {
		t.Fatal(err)
	}
	d.boot.PowerOn()
	d.reopen(t, open)
	return d
}

// reopen makes a fresh installer on the same state, as after a reboot.
func (d *device) reopen(t *testing.T, open func(string) (install.SlotFile, error)) {
	t.Helper()
	var err error
	d.inst, err = install.New(install.Options{Boot: d.boot, Slots: d.slots, Dir: d.dir, Log: slog.New(slog.DiscardHandler), Open: open}, "1.0.0")
	if err != nil {
		t.Fatal(err)
	}
}

func (d *device) running(t *testing.T) (firmware.Slot, string) {
	t.Helper()
	s, info, err := d.inst.Running()
	if err != nil {
		t.Fatal(err)
	}
	return s, info.Version
}

// job returns an uncompressed image and its install job.
func job(version string, n int) ([]byte, install.Job) {
	raw := make([]byte, n)
	rand.Read(raw)
	sum := sha256.Sum256(raw)
	h := hex.EncodeToString(sum[:])
	img := firmware.Image{Compression: firmware.CompressionNone, Length: int64(n), SHA256: h, RawLength: int64(n), RawSHA256: h}
	return raw, install.Job{RolloutID: "ro1", Target: "pump/" + version + "/image.img", Version: version, Image: img}
}

func healthy(context.Context, install.Job) error { return nil }

func TestInstallCommitsAfterHealthyBoot(t *testing.T) {
	d := newDevice(t, nil)
	raw, j := job("1.1.0", 100_000)
	slot, err := d.inst.Write(context.Background(), bytes.NewReader(raw), j)
	if err != nil || slot != firmware.SlotB {
		t.Fatalf("Write() = %s, %v; want slot b", slot, err)
	}
	if err := d.inst.Arm(slot, j); err != nil {
		t.Fatal(err)
	}
	d.boot.PowerOn()
	d.reopen(t, nil)
	out, err := d.inst.AfterBoot(context.Background(), healthy)
	if err != nil || out.Kind != install.Committed {
		t.Fatalf("AfterBoot() = %+v, %v; want committed", out, err)
	}
	if s, v := d.running(t); s != firmware.SlotB || v != "1.1.0" {
		t.Fatalf("running = %s %s, want b 1.1.0", s, v)
	}
	d.boot.PowerOn()
	if s, _ := d.boot.Booted(); s != firmware.SlotB {
		t.Fatalf("boot after commit = %s, want b", s)
	}
	if out, _ := d.inst.AfterBoot(context.Background(), healthy); out.Kind != install.NoInstall {
		t.Fatalf("second AfterBoot() = %+v, want nothing in progress", out)
	}
}

func TestUnhealthyBootFallsBackAndReportsRollback(t *testing.T) {
	d := newDevice(t, nil)
	raw, j := job("1.1.0", 50_000)
	slot, _ := d.inst.Write(context.Background(), bytes.NewReader(raw), j)
	d.inst.Arm(slot, j)
	d.boot.PowerOn()
	d.reopen(t, nil)
	sick := func(context.Context, install.Job) error { return errors.New("pump motor self-test failed") }
	out, err := d.inst.AfterBoot(context.Background(), sick)
	if err != nil || out.Kind != install.Unhealthy || !strings.Contains(out.Reason, "self-test") {
		t.Fatalf("AfterBoot(unhealthy) = %+v, %v; want unhealthy with the reason", out, err)
	}
	d.boot.PowerOn() // the reboot the agent asks for: the trial is used up
	d.reopen(t, nil)
	out, err = d.inst.AfterBoot(context.Background(), healthy)
	if err != nil || out.Kind != install.RolledBack || !strings.Contains(out.Reason, "self-test") {
		t.Fatalf("AfterBoot(after fallback) = %+v, %v; want rolled back with the health reason", out, err)
	}
	if s, v := d.running(t); s != firmware.SlotA || v != "1.0.0" {
		t.Fatalf("running = %s %s, want a 1.0.0", s, v)
	}
}

func TestTamperedImageNeverArmsTheSlot(t *testing.T) {
	d := newDevice(t, nil)
	raw, j := job("1.1.0", 50_000)
	raw[1000] ^= 1
	if _, err := d.inst.Write(context.Background(), bytes.NewReader(raw), j); !errors.Is(err, firmware.ErrMismatch) {
		t.Fatalf("Write(tampered) = %v, want ErrMismatch", err)
	}
	for i := 0; i < 2; i++ {
		d.boot.PowerOn()
		if s, _ := d.boot.Booted(); s != firmware.SlotA {
			t.Fatalf("boot after a refused image = %s, want a", s)
		}
	}
	d.reopen(t, nil)
	if out, _ := d.inst.AfterBoot(context.Background(), healthy); out.Kind != install.NoInstall {
		t.Fatalf("AfterBoot() after a refused image = %+v, want nothing in progress", out)
	}
	if s, v := d.running(t); s != firmware.SlotA || v != "1.0.0" {
		t.Fatalf("running = %s %s, want a 1.0.0", s, v)
	}
}

// cutFile stops the agent (as a crash would) after n bytes.
type cutFile struct {
	*os.File
	left int
}

var errCrash = errors.New("simulated crash")

func (c *cutFile) Write(p []byte) (int, error) {
	if len(p) > c.left {
		n, _ := c.File.Write(p[:c.left])
		c.left = 0
		return n, errCrash
	}
	c.left -= len(p)
	return c.File.Write(p)
}

func TestCrashWhileWritingLeavesOldSlotBooting(t *testing.T) {
	crashAfter := -1 // bytes; -1 never crashes
	open := func(path string) (install.SlotFile, error) {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil || crashAfter < 0 {
			return f, err
		}
		return &cutFile{File: f, left: crashAfter}, nil
	}
	d := newDevice(t, open)
	// 1.1.0 installs into b and commits; a (factory 1.0.0) is now inactive.
	raw, j := job("1.1.0", 100_000)
	slot, err := d.inst.Write(context.Background(), bytes.NewReader(raw), j)
	if err != nil {
		t.Fatal(err)
	}
	d.inst.Arm(slot, j)
	d.boot.PowerOn()
	d.reopen(t, open)
	if out, _ := d.inst.AfterBoot(context.Background(), healthy); out.Kind != install.Committed {
		t.Fatalf("AfterBoot() = %+v, want committed", out)
	}
	// 1.2.0 overwrites a, and the agent dies a third of the way in.
	crashAfter = 30_000
	raw, j = job("1.2.0", 100_000)
	if _, err := d.inst.Write(context.Background(), bytes.NewReader(raw), j); !errors.Is(err, errCrash) {
		t.Fatalf("Write() = %v, want the simulated crash", err)
	}
	crashAfter = -1
	d.boot.PowerOn()
	d.reopen(t, open)
	if _, err := d.inst.AfterBoot(context.Background(), healthy); err != nil {
		t.Fatal(err)
	}
	if s, v := d.running(t); s != firmware.SlotB || v != "1.1.0" {
		t.Fatalf("running %s %s after a crash mid-write, want b 1.1.0", s, v)
	}
	// The half-written slot must not claim its old contents any more.
	b, _ := os.ReadFile(filepath.Join(d.dir, "slots.json"))
	if strings.Contains(string(b), "1.0.0") {
		t.Fatalf("slot status still claims the overwritten 1.0.0: %s", b)
	}
}

func TestWriteFailureOnFullDiskIsClean(t *testing.T) {
	full := func(path string) (install.SlotFile, error) {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
		return &cutFile{File: f, left: 0}, err
	}
	d := newDevice(t, full)
	raw, j := job("1.1.0", 10_000)
	_, err := d.inst.Write(context.Background(), bytes.NewReader(raw), j)
	if err == nil || errors.Is(err, firmware.ErrMismatch) {
		t.Fatalf("Write(full disk) = %v, want a write error", err)
	}
	if _, err := os.Stat(filepath.Join(d.dir, "install.json")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("the install journal survived a failed write")
	}
}
