package boot

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/aftercare/aftercare/agent/internal/install"
	"github.com/aftercare/aftercare/firmware"
)

// GRUB keeps RAUC's grubenv variables, so a grub.cfg written for RAUC
// reads them the same way:
//
//	ORDER  "A B": the slots to consider, first to last
//	A_OK   1 when slot A may be booted, 0 when not
//	A_TRY  1 once grub.cfg has booted slot A; the system clears it (mark good)
//	B_OK, B_TRY  the same for slot B
//
// grub.cfg (deploy/grub/grub.cfg) boots the first slot in ORDER with OK=1
// and TRY=0, and saves TRY=1 for it before booting, so a slot that is
// not marked good again is skipped on the next boot.
const (
	grubOrder = "ORDER"
	// grubEnvPkg names the Debian package with grub-editenv.
	grubEnvPkg = "grub-common"
)

func grubOK(s firmware.Slot) string  { return bootname(s) + "_OK" }
func grubTry(s firmware.Slot) string { return bootname(s) + "_TRY" }

// GRUBOptions configures the GRUB adapter.
type GRUBOptions struct {
	// Env is the primary environment file, e.g. /boot/grub/grubenv;
	// required.
	Env string
	// Backup is the second copy, written after Env; "" means Env+".bak".
	Backup string
	// Cmdline is the kernel command line holding rauc.slot=; "" means
	// /proc/cmdline. Tests point it at a file.
	Cmdline string
	// GrubEditenv is the tool; "" means grub-editenv from PATH (Debian:
	// grub-common).
	GrubEditenv string
}

// GRUB switches slots through GRUB environment files with grub-editenv.
//
// A grubenv is not power-safe: grub-editenv truncates the file and writes
// it again, and it has no checksum. So the adapter keeps two copies and
// writes every change completely (all five variables) to Env, then to
// Backup. grub.cfg loads Backup, then Env over it: a power cut while Env
// is written leaves it unreadable and Backup, the old state, is used; a
// power cut while Backup is written leaves Env, the new state, in force.
// A copy found unreadable is rebuilt from the other on the next change.
//
// A slot armed by TryOnce is booted once: grub.cfg records TRY=1 before
// booting it. The committed slot must be committed again on every boot
// (RAUC's "mark good"), because grub.cfg records every boot the same way.
//
// GRUB is not safe for concurrent use.
type GRUB struct {
	opts GRUBOptions
}

var _ install.Bootloader = (*GRUB)(nil)

// OpenGRUB returns the GRUB adapter after checking that the tool runs and
// at least one copy of the environment reads.
func OpenGRUB(opts GRUBOptions) (*GRUB, error) {
	if opts.Env == "" {
		return nil, errors.New("grub: the grubenv path is required")
	}
	if opts.Backup == "" {
		opts.Backup = opts.Env + ".bak"
	}
	if opts.Backup == opts.Env {
		return nil, fmt.Errorf("grub: the backup environment must differ from %s", opts.Env)
	}
	if opts.Cmdline == "" {
		opts.Cmdline = DefaultCmdline
	}
	if opts.GrubEditenv == "" {
		opts.GrubEditenv = "grub-editenv"
	}
	g := &GRUB{opts: opts}
	if _, _, err := g.read(); err != nil {
		return nil, err
	}
	return g, nil
}

// grubState is what grub.cfg decides on.
type grubState struct {
	order []firmware.Slot
	ok    map[firmware.Slot]bool
	try   map[firmware.Slot]bool
}

// grubDefaults are grub.cfg's values before it loads any file: boot A.
func grubDefaults() map[string]string {
	return map[string]string{grubOrder: "A B", "A_OK": "1", "A_TRY": "0", "B_OK": "0", "B_TRY": "0"}
}

// grubEnvSize is the size of every environment block grub-editenv
// writes. A shorter file is a torn write: grub-editenv refuses to update
// it and GRUB cannot save to it.
const grubEnvSize = 1024 // bytes

// readFile lists one environment file. A missing file is an error here:
// grub-editenv would create it.
func (g *GRUB) readFile(path string) (map[string]string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("read GRUB environment: %w", err)
	}
	if fi.Size() != grubEnvSize {
		return nil, fmt.Errorf("read GRUB environment %s: %d bytes, not %d: a torn write", path, fi.Size(), grubEnvSize)
	}
	out, err := runTool(g.opts.GrubEditenv, grubEnvPkg, []string{path, "list"}, nil)
	if err != nil {
		return nil, fmt.Errorf("read GRUB environment %s: %w", path, err)
	}
	return parseEnvLines(string(out)), nil
}

// read returns the state grub.cfg would boot from, and the variables of
// each copy that reads. Both copies unreadable is an error: there is no
// state to build on.
func (g *GRUB) read() (grubState, map[string]map[string]string, error) {
	vars := grubDefaults()
	readable := map[string]map[string]string{}
	var errs []error
	// grub.cfg's order: Backup first, then Env over it.
	for _, path := range []string{g.opts.Backup, g.opts.Env} {
		m, err := g.readFile(path)
		if errors.Is(err, ErrNoTool) {
			return grubState{}, nil, err
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		readable[path] = m
		for k, v := range m {
			vars[k] = v
		}
	}
	if len(readable) == 0 {
		return grubState{}, nil, fmt.Errorf("neither GRUB environment copy reads; write one with grub-editenv %s create (see docs/agent.md): %w", g.opts.Env, errors.Join(errs...))
	}
	st, err := parseGrubEnv(vars)
	return st, readable, err
}

func parseGrubEnv(vars map[string]string) (grubState, error) {
	order, err := parseOrder(vars[grubOrder])
	if err != nil {
		return grubState{}, fmt.Errorf("GRUB environment: %s: %w", grubOrder, err)
	}
	st := grubState{order: order, ok: map[firmware.Slot]bool{}, try: map[firmware.Slot]bool{}}
	for _, s := range []firmware.Slot{firmware.SlotA, firmware.SlotB} {
		for name, dst := range map[string]map[firmware.Slot]bool{grubOK(s): st.ok, grubTry(s): st.try} {
			switch vars[name] {
			case "0":
				dst[s] = false
			case "1":
				dst[s] = true
			default:
				return grubState{}, fmt.Errorf("GRUB environment: %s=%q is not 0 or 1", name, vars[name])
			}
		}
	}
	return st, nil
}

// grubVars is a complete environment in a fixed order: ORDER first, then
// each slot's OK and TRY.
func grubVars(order string, ok, try map[firmware.Slot]bool) []string {
	b := func(v bool) string {
		if v {
			return "1"
		}
		return "0"
	}
	a, bb := firmware.SlotA, firmware.SlotB
	return []string{
		grubOrder + "=" + order,
		grubOK(a) + "=" + b(ok[a]), grubTry(a) + "=" + b(try[a]),
		grubOK(bb) + "=" + b(ok[bb]), grubTry(bb) + "=" + b(try[bb]),
	}
}

// grubTryOnceVars puts s first with one try, and the running slot behind
// it, good and untried, to fall back on.
func grubTryOnceVars(s firmware.Slot) []string {
	return grubVars(orderValue(s), map[firmware.Slot]bool{s: true, s.Other(): true}, nil)
}

// grubCommitVars makes s the only bootable slot, alone in ORDER: the
// installer overwrites the other without telling the bootloader first.
func grubCommitVars(s firmware.Slot) []string {
	return grubVars(bootname(s), map[firmware.Slot]bool{s: true}, nil)
}

// set writes the complete environment vars to Env, then Backup, skipping
// a copy that already holds it. An unreadable copy is first recreated.
func (g *GRUB) set(vars []string) error {
	_, readable, err := g.read()
	if err != nil {
		return err
	}
	for _, path := range []string{g.opts.Env, g.opts.Backup} {
		if m, ok := readable[path]; ok {
			if holdsAll(m, vars) {
				continue
			}
		} else {
			// A torn or missing copy: a blank environment overrides
			// nothing in grub.cfg, so this step is safe on its own.
			if _, err := runTool(g.opts.GrubEditenv, grubEnvPkg, []string{path, "create"}, nil); err != nil {
				return fmt.Errorf("recreate GRUB environment %s: %w", path, err)
			}
		}
		args := append([]string{path, "set"}, vars...)
		if _, err := runTool(g.opts.GrubEditenv, grubEnvPkg, args, nil); err != nil {
			return fmt.Errorf("write GRUB environment %s: %w", path, err)
		}
	}
	return nil
}

func holdsAll(m map[string]string, vars []string) bool {
	for _, kv := range vars {
		k, v, _ := strings.Cut(kv, "=")
		if m[k] != v {
			return false
		}
	}
	return true
}

// Booted returns the slot named by rauc.slot= on the kernel command line.
func (g *GRUB) Booted() (firmware.Slot, error) { return bootedFromCmdline(g.opts.Cmdline) }

// TryOnce makes the next boot, and only the next, use s.
func (g *GRUB) TryOnce(s firmware.Slot) error {
	if err := checkSlot(s); err != nil {
		return err
	}
	return g.set(grubTryOnceVars(s))
}

// Commit makes s, the booted slot, the only bootable slot. Call it on every boot of a good slot, as RAUC's mark-good.
func (g *GRUB) Commit(s firmware.Slot) error {
	if err := checkSlot(s); err != nil {
		return err
	}
	return g.set(grubCommitVars(s))
}
