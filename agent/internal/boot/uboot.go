package boot

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/aftercare/aftercare/agent/internal/install"
	"github.com/aftercare/aftercare/firmware"
)

// U-Boot keeps RAUC's variables, so a board already set up for RAUC needs
// no new boot script:
//
//	BOOT_ORDER   "A B": the slots to try, first to last
//	BOOT_A_LEFT  boots slot A may still be tried; the boot script takes one
//	BOOT_B_LEFT  the same for slot B
//
// The boot script (deploy/uboot/boot.cmd) boots the first slot in
// BOOT_ORDER with attempts left, decrements its counter, saves the
// environment and passes rauc.slot=A or rauc.slot=B to the kernel.
const (
	ubootOrder = "BOOT_ORDER"
	// ubootDefaultLeft is what the boot script assumes for a missing
	// counter, as RAUC's does.
	ubootDefaultLeft = 3
	// maxAttempts keeps counters single-digit: U-Boot's setexpr computes in
	// hex, so "10 - 1" would be 0xf.
	maxAttempts = 9
)

// DefaultAttempts is how many boots a committed slot gets before the
// bootloader falls back, when not configured (RAUC's default).
const DefaultAttempts = 3

func ubootLeft(s firmware.Slot) string { return "BOOT_" + bootname(s) + "_LEFT" }

// UBootOptions configures the U-Boot adapter.
type UBootOptions struct {
	// Config is the fw_env.config naming the environment's two copies;
	// "" means the tools' default, /etc/fw_env.config.
	Config string
	// Cmdline is the kernel command line holding rauc.slot=; "" means
	// /proc/cmdline. Tests point it at a file.
	Cmdline string
	// Attempts is how many boots a committed slot gets without being
	// marked good again, 1 to 9; 0 means DefaultAttempts.
	Attempts int
	// FwPrintenv and FwSetenv are the tools; "" means fw_printenv and
	// fw_setenv from PATH (Debian: libubootenv-tool).
	FwPrintenv string
	FwSetenv   string
}

// UBoot switches slots through the U-Boot environment with libubootenv's
// fw_printenv and fw_setenv.
//
// Every change is one fw_setenv -s call that sets all variables together.
// With a redundant environment (two copies in fw_env.config) the tool
// writes the copy that is not current, with a higher flags byte and a new
// CRC, so a power cut leaves either the old environment or the new one:
// U-Boot and the tools both pick the newest copy whose CRC is valid.
//
// The slot tried by TryOnce gets exactly one attempt. The committed slot
// gets Attempts, and must be committed again on every boot (RAUC's "mark
// good"), because the boot script counts every boot down.
//
// UBoot is not safe for concurrent use; fw_setenv itself takes a lock
// (/var/lock/fw_printenv.lock) against other processes.
type UBoot struct {
	opts UBootOptions
}

var _ install.Bootloader = (*UBoot)(nil)

// OpenUBoot returns the U-Boot adapter after checking that the tools run
// and the environment reads.
func OpenUBoot(opts UBootOptions) (*UBoot, error) {
	if opts.Cmdline == "" {
		opts.Cmdline = DefaultCmdline
	}
	if opts.Attempts == 0 {
		opts.Attempts = DefaultAttempts
	}
	if opts.FwPrintenv == "" {
		opts.FwPrintenv = "fw_printenv"
	}
	if opts.FwSetenv == "" {
		opts.FwSetenv = "fw_setenv"
	}
	if opts.Attempts < 1 || opts.Attempts > maxAttempts {
		return nil, fmt.Errorf("u-boot: attempts %d must be 1 to %d", opts.Attempts, maxAttempts)
	}
	if opts.Config != "" {
		if _, err := os.Stat(opts.Config); err != nil {
			return nil, fmt.Errorf("u-boot: fw_env.config: %w", err)
		}
	}
	u := &UBoot{opts: opts}
	if _, err := u.read(); err != nil {
		return nil, err
	}
	return u, nil
}

func (u *UBoot) configArgs() []string {
	if u.opts.Config == "" {
		return nil
	}
	return []string{"-c", u.opts.Config}
}

// ubootState is the part of the environment the boot script reads.
type ubootState struct {
	order []firmware.Slot
	left  map[firmware.Slot]int
}

// read returns the boot variables, with the boot script's defaults for
// missing ones. An environment that does not read, or holds values the
// boot script would misread, is an error.
func (u *UBoot) read() (ubootState, error) {
	out, err := runTool(u.opts.FwPrintenv, "libubootenv-tool", u.configArgs(), nil)
	if err != nil {
		return ubootState{}, fmt.Errorf("read U-Boot environment: %w", err)
	}
	return parseUBootEnv(parseEnvLines(string(out)))
}

// parseEnvLines splits fw_printenv or grub-editenv output into variables.
func parseEnvLines(out string) map[string]string {
	vars := map[string]string{}
	for line := range strings.Lines(out) {
		name, value, ok := strings.Cut(strings.TrimRight(line, "\n"), "=")
		if ok {
			vars[name] = value
		}
	}
	return vars
}

func parseUBootEnv(vars map[string]string) (ubootState, error) {
	st := ubootState{order: []firmware.Slot{firmware.SlotA, firmware.SlotB}, left: map[firmware.Slot]int{}}
	if v, ok := vars[ubootOrder]; ok {
		order, err := parseOrder(v)
		if err != nil {
			return ubootState{}, fmt.Errorf("U-Boot environment: %s: %w", ubootOrder, err)
		}
		st.order = order
	}
	for _, s := range []firmware.Slot{firmware.SlotA, firmware.SlotB} {
		st.left[s] = ubootDefaultLeft
		v, ok := vars[ubootLeft(s)]
		if !ok {
			continue
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > maxAttempts {
			return ubootState{}, fmt.Errorf("U-Boot environment: %s=%q is not a count from 0 to %d", ubootLeft(s), v, maxAttempts)
		}
		st.left[s] = n
	}
	return st, nil
}

// parseOrder reads "A B"-style boot orders: each slot at most once.
func parseOrder(v string) ([]firmware.Slot, error) {
	var order []firmware.Slot
	for _, f := range strings.Fields(v) {
		s, err := firmware.ParseSlot(f)
		if err != nil || slices.Contains(order, s) {
			return nil, fmt.Errorf("%q is not an order of the slots A and B", v)
		}
		order = append(order, s)
	}
	return order, nil
}

// ubootVar is one line of an fw_setenv script.
type ubootVar struct{ name, value string }

// ubootScript renders variables as an fw_setenv script. libubootenv reads
// "name=value" lines (U-Boot's own fw_setenv wanted "name value").
func ubootScript(vars []ubootVar) []byte {
	var b strings.Builder
	for _, v := range vars {
		b.WriteString(v.name + "=" + v.value + "\n")
	}
	return []byte(b.String())
}

func orderValue(first firmware.Slot) string { return bootname(first) + " " + bootname(first.Other()) }

// tryOnceVars arms s for one boot and gives the running slot a full set
// of attempts to fall back on.
func tryOnceVars(s firmware.Slot, attempts int) []ubootVar {
	return []ubootVar{
		{ubootOrder, orderValue(s)},
		{ubootLeft(s), "1"},
		{ubootLeft(s.Other()), strconv.Itoa(attempts)},
	}
}

// commitVars makes s the only slot to boot, with attempts boots to be
// marked good again. The other slot leaves BOOT_ORDER, so not even the boot
// script's reset of exhausted counters brings it back: the installer
// overwrites it without telling the bootloader first, so it must never be
// a fallback.
func commitVars(s firmware.Slot, attempts int) []ubootVar {
	return []ubootVar{
		{ubootOrder, bootname(s)},
		{ubootLeft(s), strconv.Itoa(attempts)},
		{ubootLeft(s.Other()), "0"},
	}
}

// set writes vars in one fw_setenv call, unless the environment already
// holds them.
func (u *UBoot) set(vars []ubootVar) error {
	st, err := u.read()
	if err != nil {
		return err
	}
	if st.holds(vars) {
		return nil
	}
	args := append(u.configArgs(), "-s", "-")
	if _, err := runTool(u.opts.FwSetenv, "libubootenv-tool", args, ubootScript(vars)); err != nil {
		return fmt.Errorf("write U-Boot environment: %w", err)
	}
	return nil
}

// holds reports whether the environment already reads as vars (missing
// variables read as the boot script's defaults).
func (st ubootState) holds(vars []ubootVar) bool {
	cur := map[string]string{ubootOrder: orderString(st.order)}
	for s, n := range st.left {
		cur[ubootLeft(s)] = strconv.Itoa(n)
	}
	for _, v := range vars {
		if cur[v.name] != v.value {
			return false
		}
	}
	return true
}

func orderString(order []firmware.Slot) string {
	names := make([]string, len(order))
	for i, s := range order {
		names[i] = bootname(s)
	}
	return strings.Join(names, " ")
}

// Booted returns the slot named by rauc.slot= on the kernel command line.
func (u *UBoot) Booted() (firmware.Slot, error) { return bootedFromCmdline(u.opts.Cmdline) }

// TryOnce makes the next boot, and only the next, use s; the boot after it
// falls back to the other slot unless s is committed.
func (u *UBoot) TryOnce(s firmware.Slot) error {
	if err := checkSlot(s); err != nil {
		return err
	}
	return u.set(tryOnceVars(s, u.opts.Attempts))
}

// Commit makes s, the booted slot, the only slot in BOOT_ORDER, with a full
// set of attempts. Call it on every boot of a
// good slot, as RAUC's mark-good: the boot script counts boots down.
func (u *UBoot) Commit(s firmware.Slot) error {
	if err := checkSlot(s); err != nil {
		return err
	}
	return u.set(commitVars(s, u.opts.Attempts))
}
