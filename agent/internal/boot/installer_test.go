package boot_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/aftercare/aftercare/agent/internal/install"
	"github.com/aftercare/aftercare/firmware"
)

// TestInstallerOnEachBootloader runs the real installer on each adapter
// through reboots: a healthy update commits, an unhealthy one falls back,
// and ten plain reboots stay on the committed slot only because every
// start marks it good (U-Boot and GRUB count each boot).
func TestInstallerOnEachBootloader(t *testing.T) {
	for _, dev := range devices {
		t.Run(dev.name, func(t *testing.T) {
			t.Parallel()
			needTools(t, dev.tools)
			d := dev.new(t)
			dir := t.TempDir()
			slots := map[firmware.Slot]string{slotA: filepath.Join(dir, "a.img"), slotB: filepath.Join(dir, "b.img")}
			os.WriteFile(slots[slotA], []byte("factory"), 0o644)
			if got := d.powerOn(t); got != slotA {
				t.Fatalf("factory boot = %s, want a", got)
			}
			start := func(health error) install.Outcome {
				t.Helper()
				inst, err := install.New(install.Options{Boot: d.bl, Slots: slots, Dir: dir, Log: slog.New(slog.DiscardHandler)}, "1.0.0")
				if err != nil {
					t.Fatal(err)
				}
				out, err := inst.AfterBoot(context.Background(), func(context.Context, install.Job) error { return health })
				if err != nil {
					t.Fatalf("AfterBoot() = %v", err)
				}
				return out
			}
			update := func(version string) {
				t.Helper()
				inst, err := install.New(install.Options{Boot: d.bl, Slots: slots, Dir: dir, Log: slog.New(slog.DiscardHandler)}, "1.0.0")
				if err != nil {
					t.Fatal(err)
				}
				raw := bytes.Repeat([]byte(version), 1000)
				sum := sha256.Sum256(raw)
				h := hex.EncodeToString(sum[:])
				j := install.Job{RolloutID: "r1", Target: "pump/" + version, Version: version, Image: firmware.Image{
					Compression: firmware.CompressionNone, Length: int64(len(raw)), SHA256: h, RawLength: int64(len(raw)), RawSHA256: h}}
				slot, err := inst.Write(context.Background(), bytes.NewReader(raw), j)
				if err != nil {
					t.Fatal(err)
				}
				if err := inst.Arm(slot, j); err != nil {
					t.Fatal(err)
				}
			}
			for i := range 10 {
				if out := start(nil); out.Kind != install.NoInstall {
					t.Fatalf("start %d: AfterBoot() = %+v", i, out)
				}
				if got := d.powerOn(t); got != slotA {
					t.Fatalf("reboot %d of a committed slot a booted %s", i, got)
				}
			}
			update("1.1.0")
			if got := d.powerOn(t); got != slotB {
				t.Fatalf("boot after arming b = %s", got)
			}
			if out := start(errors.New("pump controller down")); out.Kind != install.Unhealthy {
				t.Fatalf("AfterBoot(unhealthy) = %+v, want unhealthy", out)
			}
			if got := d.powerOn(t); got != slotA {
				t.Fatalf("boot after an unhealthy trial = %s, want the fallback a", got)
			}
			if out := start(nil); out.Kind != install.RolledBack {
				t.Fatalf("AfterBoot() after the fallback = %+v, want rolled back", out)
			}
			update("1.2.0")
			if got := d.powerOn(t); got != slotB {
				t.Fatalf("boot after arming b again = %s", got)
			}
			if out := start(nil); out.Kind != install.Committed {
				t.Fatalf("AfterBoot(healthy) = %+v, want committed", out)
			}
			for i := range 10 {
				if got := d.powerOn(t); got != slotB {
					t.Fatalf("reboot %d after committing b booted %s", i, got)
				}
				if out := start(nil); out.Kind != install.NoInstall {
					t.Fatalf("start %d on b: AfterBoot() = %+v", i, out)
				}
			}
		})
	}
}
