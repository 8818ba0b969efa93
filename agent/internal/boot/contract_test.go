package boot_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/aftercare/aftercare/agent/internal/boot"
	"github.com/aftercare/aftercare/agent/internal/install"
	"github.com/aftercare/aftercare/firmware"
)

// The contract every adapter keeps, checked by one table against all three
// with the real tools: TryOnce arms a slot for exactly one boot, an
// uncommitted trial falls back, Commit makes the booted slot the default,
// and a write cut short by a power loss at any byte still boots a good
// slot.

var (
	slotA = firmware.SlotA
	slotB = firmware.SlotB
)

// tearKind is how a power cut can leave a file the adapter was writing.
type tearKind int

const (
	tearAtomic    tearKind = iota // replaced by rename: old or new, nothing between
	tearOverwrite                 // rewritten in place: a prefix of the new bytes over the old
	tearTruncate                  // truncated, then written: a prefix of the new bytes
)

// device is a board: an adapter, its bootloader at power-on, and the
// environment files in the order the adapter writes them.
type device struct {
	bl       install.Bootloader
	powerOn  func(*testing.T) firmware.Slot
	files    []string // every file a power-on or the adapter changes
	envFiles []string // the adapter's writes, in order
	tear     tearKind
}

var devices = []struct {
	name  string
	tools []string // skip (or fail under CI) without these
	new   func(*testing.T) *device
}{
	{"file", nil, func(t *testing.T) *device {
		dir := t.TempDir()
		f, err := boot.OpenFile(dir)
		if err != nil {
			t.Fatal(err)
		}
		env := filepath.Join(dir, "bootenv.json")
		return &device{bl: f, powerOn: func(t *testing.T) firmware.Slot {
			t.Helper()
			s, err := f.PowerOn()
			if err != nil {
				t.Fatalf("PowerOn() = %v", err)
			}
			return s
		}, files: []string{env, filepath.Join(dir, "booted")}, envFiles: []string{env}, tear: tearAtomic}
	}},
	{"uboot", []string{"fw_printenv", "fw_setenv"}, func(t *testing.T) *device {
		s := newUBootSim(t)
		if got := s.powerOn(t); got != slotA { // the factory's first boot
			t.Fatalf("first power-on of a blank environment booted %s, want a", got)
		}
		u := s.open(t, boot.UBootOptions{})
		return &device{bl: u, powerOn: s.powerOn, files: []string{s.copies[0], s.copies[1], s.cmdline},
			envFiles: s.copies[:], tear: tearOverwrite}
	}},
	{"grub", []string{"grub-editenv"}, func(t *testing.T) *device {
		s := newGRUBSim(t)
		g := s.open(t)
		return &device{bl: g, powerOn: s.powerOn, files: []string{s.env, s.backup, s.cmdline},
			envFiles: []string{s.env, s.backup}, tear: tearTruncate}
	}},
	{"grub-emu", []string{"grub-editenv", "grub-emu"}, func(t *testing.T) *device {
		s := newGRUBEmuSim(t)
		g := s.open(t)
		return &device{bl: g, powerOn: s.powerOn, files: []string{s.env, s.backup, s.cmdline},
			envFiles: []string{s.env, s.backup}, tear: tearTruncate}
	}},
}

func needTools(t *testing.T, tools []string) {
	t.Helper()
	for _, tool := range tools {
		needTool(t, tool, map[string]string{"fw_printenv": "libubootenv-tool", "fw_setenv": "libubootenv-tool",
			"grub-editenv": "grub-common", "grub-emu": "grub-emu"}[tool])
	}
}

// step is one thing that happens to a device.
type step struct {
	op   string // "boot" (power on, want slot), "good" (commit the booted slot), "try", "commit"
	slot firmware.Slot
}

func bootTo(s firmware.Slot) step    { return step{"boot", s} }
func good() step                     { return step{"good", ""} }
func tryOnce(s firmware.Slot) step   { return step{"try", s} }
func commit(s firmware.Slot) step    { return step{"commit", s} }
func steps(ss ...step) []step        { return ss }
func repeat(n int, s ...step) []step { return slices.Repeat(s, n) }

// run applies steps to d and fails t at the first boot that goes elsewhere.
func (d *device) run(t *testing.T, ss []step) {
	t.Helper()
	for i, s := range ss {
		var err error
		switch s.op {
		case "boot":
			if got := d.powerOn(t); got != s.slot {
				t.Fatalf("step %d: power-on booted %s, want %s", i, got, s.slot)
			}
			if b, err := d.bl.Booted(); err != nil || b != s.slot {
				t.Fatalf("step %d: Booted() = %s, %v after booting %s", i, b, err, s.slot)
			}
		case "good":
			var b firmware.Slot
			if b, err = d.bl.Booted(); err == nil {
				err = d.bl.Commit(b)
			}
		case "try":
			err = d.bl.TryOnce(s.slot)
		case "commit":
			err = d.bl.Commit(s.slot)
		}
		if err != nil {
			t.Fatalf("step %d (%s %s): %v", i, s.op, s.slot, err)
		}
	}
}

func TestContract(t *testing.T) {
	onA := steps(bootTo(slotA), good())
	trialB := append(slices.Clone(onA), tryOnce(slotB), bootTo(slotB))
	onB := append(slices.Clone(trialB), commit(slotB), bootTo(slotB), good())
	tests := []struct {
		name  string
		steps []step
	}{
		{"fresh-env-boots-a", append(repeat(3, onA...), bootTo(slotA))},
		{"try-once-boots-b", trialB},
		{"no-commit-falls-back-to-a", append(slices.Clone(trialB), bootTo(slotA), good(), bootTo(slotA), good(), bootTo(slotA))},
		{"commit-makes-b-default", append(slices.Clone(onB), bootTo(slotB), good(), bootTo(slotB))},
		// The installer may overwrite A at any time now: no run of boots
		// without a good mark may reach it.
		{"committed-b-never-falls-to-a", append(slices.Clone(onB), repeat(8, bootTo(slotB))...)},
		{"power-loss-before-reboot-still-tries-b", append(slices.Clone(onA), tryOnce(slotB), bootTo(slotB), bootTo(slotA))},
		{"retry-after-fallback", append(slices.Clone(trialB), bootTo(slotA), good(), tryOnce(slotB), bootTo(slotB), commit(slotB), bootTo(slotB))},
		{"update-back-to-a", append(slices.Clone(onB), tryOnce(slotA), bootTo(slotA), commit(slotA), bootTo(slotA), good(), bootTo(slotA))},
		{"failed-update-back-to-a-stays-on-b", append(slices.Clone(onB), tryOnce(slotA), bootTo(slotA), bootTo(slotB), good(), bootTo(slotB))},
		{"commit-twice-is-harmless", append(slices.Clone(trialB), commit(slotB), commit(slotB), bootTo(slotB))},
	}
	for _, dev := range devices {
		t.Run(dev.name, func(t *testing.T) {
			t.Parallel()
			needTools(t, dev.tools)
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					dev.new(t).run(t, tt.steps)
				})
			}
		})
	}
}

// tearOffsets are the byte counts a torn write of new over old may have
// reached, one for each distinct state it can leave.
func tearOffsets(kind tearKind, old, new []byte) []int {
	n := len(new)
	ks := []int{0}
	switch kind {
	case tearOverwrite:
		// Where old and new bytes agree, one more byte changes nothing.
		for k := 1; k < n; k++ {
			if k > len(old) || old[k-1] != new[k-1] {
				ks = append(ks, k)
			}
		}
	case tearTruncate:
		// Every byte through the variables (after the block's two comment
		// lines, before the '#' padding), a few elsewhere.
		start := bytes.Index(new, []byte("!!!\n")) + 4
		end := bytes.LastIndexByte(new, '\n') + 1
		ks = append(ks, 1, 24, 25, start-1)
		for k := start; k <= end; k++ {
			ks = append(ks, k)
		}
		ks = append(ks, end+1, n/2, n-1)
	}
	return append(ks, n)
}

// torn returns what a power cut after k bytes leaves of a write of new
// over old.
func torn(kind tearKind, old, new []byte, k int) []byte {
	switch kind {
	case tearOverwrite:
		b := slices.Clone(old)
		if len(b) < len(new) {
			b = append(b, make([]byte, len(new)-len(b))...)
		}
		copy(b, new[:k])
		return b
	case tearTruncate:
		return slices.Clone(new[:k])
	}
	if k < len(new) {
		return slices.Clone(old)
	}
	return slices.Clone(new)
}

// tornKey names what a bootloader and the adapter can tell of a state.
// GRUB sees a truncated copy only through what grub-editenv's parser (the
// same as load_env's) reads from it, whether it is a full block, and how
// many of the two tries a save_env could add in its '#' padding (8 bytes
// each); two prefixes alike in these are the same state.
func tornKey(t *testing.T, kind tearKind, state [][]byte) string {
	t.Helper()
	if kind != tearTruncate {
		return string(bytes.Join(state, []byte{0}))
	}
	var key strings.Builder
	scratch := filepath.Join(t.TempDir(), "grubenv")
	for _, b := range state[:2] { // the two copies; the command line does not matter
		os.WriteFile(scratch, b, 0o644)
		out, err := exec.Command("grub-editenv", scratch, "list").Output()
		room := min((len(b)-len(bytes.TrimRight(b, "#")))/8, 2)
		fmt.Fprintf(&key, "full=%v room=%d err=%v vars=%q\n", len(b) == 1024, room, err != nil, out)
	}
	return key.String()
}

func restore(t *testing.T, paths []string, data [][]byte) {
	t.Helper()
	for i, p := range paths {
		var err error
		if data[i] == nil {
			err = os.Remove(p)
			if os.IsNotExist(err) {
				err = nil
			}
		} else {
			err = os.WriteFile(p, data[i], 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

func TestContractTornWrites(t *testing.T) {
	onA := steps(bootTo(slotA), good())
	trialB := append(slices.Clone(onA), tryOnce(slotB), bootTo(slotB))
	tests := []struct {
		name  string
		setup []step
		write step
		// check runs on the state a torn write left; first is the slot
		// the first power-on chose.
		allowed []firmware.Slot
		then    map[firmware.Slot][]step
	}{
		{
			name: "try-once", setup: onA, write: tryOnce(slotB), allowed: []firmware.Slot{slotA, slotB},
			then: map[firmware.Slot][]step{
				slotA: steps(good(), bootTo(slotA)),                // the arming was lost: still on A
				slotB: steps(bootTo(slotA), good(), bootTo(slotA)), // the trial happened once, then fell back
			},
		},
		{
			name: "commit", setup: trialB, write: commit(slotB), allowed: []firmware.Slot{slotA, slotB},
			then: map[firmware.Slot][]step{
				slotA: steps(good(), bootTo(slotA)), // the commit was lost: the trial fell back
				slotB: steps(good(), bootTo(slotB)),
			},
		},
		{
			name: "mark-good", setup: append(slices.Clone(trialB), commit(slotB), bootTo(slotB)), write: good(),
			allowed: []firmware.Slot{slotB},
			then:    map[firmware.Slot][]step{slotB: steps(good(), bootTo(slotB))},
		},
	}
	_, emuErr := exec.LookPath("grub-emu")
	for _, dev := range devices {
		if dev.name == "grub" && emuErr == nil {
			continue // the same sweep runs on the real grub.cfg in grub-emu
		}
		t.Run(dev.name, func(t *testing.T) {
			t.Parallel() // the tools mostly wait on fsync
			needTools(t, dev.tools)
			states := 0
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					d := dev.new(t)
					d.run(t, tt.setup)
					seen := map[string]bool{}
					old := snapshot(t, d.files...)
					d.run(t, steps(tt.write))
					new := snapshot(t, d.files...)
					for i, env := range d.envFiles {
						j := slices.Index(d.files, env)
						if bytes.Equal(old[j], new[j]) {
							continue
						}
						for _, k := range tearOffsets(d.tear, old[j], new[j]) {
							// Files written before env are new, env is
							// torn at k, the rest are old.
							state := slices.Clone(old)
							for _, before := range d.envFiles[:i] {
								m := slices.Index(d.files, before)
								state[m] = new[m]
							}
							state[j] = torn(d.tear, old[j], new[j], k)
							if key := tornKey(t, d.tear, state); seen[key] {
								continue // GRUB reads it as a state already checked
							} else {
								seen[key] = true
							}
							restore(t, d.files, state)
							first := d.powerOn(t)
							if !slices.Contains(tt.allowed, first) {
								t.Fatalf("%s torn after %d bytes: power-on booted %s, want one of %s", filepath.Base(env), k, first, tt.allowed)
							}
							d.run(t, tt.then[first])
							states++
						}
					}
				})
			}
			t.Logf("%s: %d torn states, each booted a good slot", dev.name, states)
		})
	}
}
