package boot_test

import (
	"testing"

	"github.com/aftercare/aftercare/agent/internal/boot"
	"github.com/aftercare/aftercare/firmware"
)

func mustBoot(t *testing.T, f *boot.File) firmware.Slot {
	t.Helper()
	s, err := f.PowerOn()
	if err != nil {
		t.Fatalf("PowerOn() = %v", err)
	}
	if b, _ := f.Booted(); b != s {
		t.Fatalf("Booted() = %s after PowerOn chose %s", b, s)
	}
	return s
}

func TestFileTryOnceThenCommit(t *testing.T) {
	f, err := boot.OpenFile(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if s := mustBoot(t, f); s != firmware.SlotA {
		t.Fatalf("first boot = %s, want a", s)
	}
	if err := f.TryOnce(firmware.SlotB); err != nil {
		t.Fatal(err)
	}
	if s := mustBoot(t, f); s != firmware.SlotB {
		t.Fatalf("boot after TryOnce(b) = %s, want b", s)
	}
	if err := f.Commit(firmware.SlotB); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if s := mustBoot(t, f); s != firmware.SlotB {
			t.Fatalf("boot %d after Commit(b) = %s, want b", i, s)
		}
	}
}

func TestFileFallsBackWhenNotCommitted(t *testing.T) {
	f, _ := boot.OpenFile(t.TempDir())
	mustBoot(t, f)
	f.TryOnce(firmware.SlotB)
	if s := mustBoot(t, f); s != firmware.SlotB {
		t.Fatalf("trial boot = %s, want b", s)
	}
	// No commit: the next power-on must fall back, and stay there.
	for i := 0; i < 3; i++ {
		if s := mustBoot(t, f); s != firmware.SlotA {
			t.Fatalf("boot %d after an uncommitted trial = %s, want a", i, s)
		}
	}
}

func TestFileKeepsStateAcrossReopen(t *testing.T) {
	dir := t.TempDir()
	f, _ := boot.OpenFile(dir)
	mustBoot(t, f)
	f.TryOnce(firmware.SlotB)
	again, err := boot.OpenFile(dir)
	if err != nil {
		t.Fatal(err)
	}
	if s := mustBoot(t, again); s != firmware.SlotB {
		t.Fatalf("boot after reopening = %s, want the armed b", s)
	}
}
