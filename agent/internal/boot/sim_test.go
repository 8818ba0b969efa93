package boot_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/aftercare/aftercare/agent/internal/boot"
	"github.com/aftercare/aftercare/firmware"
	"github.com/aftercare/aftercare/internal/testenv"
)

// This file holds the boot simulators: small Go versions of
// deploy/uboot/boot.cmd and deploy/grub/grub.cfg that read and write the
// environment with the real Debian tools, as the bootloader would at
// power-on, and write the kernel command line the boot script builds.

// needTool skips t, or fails it under CI, when tool is not installed.
func needTool(t *testing.T, tool, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		testenv.Missing(t, tool+" is not installed; install it with: apt-get install -y "+pkg)
	}
	return p
}

// runT runs a tool and fails t when it fails.
func runT(t *testing.T, stdin string, tool string, args ...string) string {
	t.Helper()
	cmd := exec.Command(tool, args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", tool, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func envVars(out string) map[string]string {
	vars := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			vars[k] = v
		}
	}
	return vars
}

func writeCmdline(t *testing.T, path string, s firmware.Slot) {
	t.Helper()
	line := fmt.Sprintf("console=ttyS0,115200 root=/dev/mmcblk0p%d rootwait ro rauc.slot=%s\n", map[firmware.Slot]int{firmware.SlotA: 2, firmware.SlotB: 3}[s], strings.ToUpper(string(s)))
	if err := os.WriteFile(path, []byte(line), 0o644); err != nil {
		t.Fatal(err)
	}
}

// ubootEnvSize is the size of each environment copy in the tests.
const ubootEnvSize = 0x1000

// ubootSim is a board with U-Boot, a redundant environment in two files
// and deploy/uboot/boot.cmd.
type ubootSim struct {
	dir, config, defenv, cmdline string
	copies                       [2]string
}

func newUBootSim(t *testing.T) *ubootSim {
	t.Helper()
	needTool(t, "fw_printenv", "libubootenv-tool")
	needTool(t, "fw_setenv", "libubootenv-tool")
	dir := t.TempDir()
	s := &ubootSim{
		dir: dir, config: filepath.Join(dir, "fw_env.config"), defenv: filepath.Join(dir, "u-boot-initial-env"),
		cmdline: filepath.Join(dir, "cmdline"),
		copies:  [2]string{filepath.Join(dir, "uboot.env"), filepath.Join(dir, "uboot-redund.env")},
	}
	cfg := fmt.Sprintf("# two copies: a redundant environment\n%s 0x0 %#x\n%s 0x0 %#x\n", s.copies[0], ubootEnvSize, s.copies[1], ubootEnvSize)
	for path, body := range map[string][]byte{
		s.config: []byte(cfg), s.defenv: []byte("bootdelay=2\n"),
		s.copies[0]: make([]byte, ubootEnvSize), s.copies[1]: make([]byte, ubootEnvSize),
	} {
		if err := os.WriteFile(path, body, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// powerOn runs boot.cmd: read the environment (U-Boot's default when no
// copy is valid), boot the first slot in BOOT_ORDER with attempts left,
// decrement it, saveenv. With no attempts left anywhere it resets the
// counters and resets the board, which boots again.
func (s *ubootSim) powerOn(t *testing.T) firmware.Slot {
	t.Helper()
	vars := map[string]string{}
	if out, err := exec.Command("fw_printenv", "-c", s.config).Output(); err == nil {
		vars = envVars(string(out))
	}
	def := func(k, v string) {
		if vars[k] == "" {
			vars[k] = v
		}
	}
	def("BOOT_ORDER", "A B")
	def("BOOT_A_LEFT", "3")
	def("BOOT_B_LEFT", "3")
	var slot firmware.Slot
	for range 2 {
		for _, name := range strings.Fields(vars["BOOT_ORDER"]) {
			key := "BOOT_" + name + "_LEFT"
			if n, _ := strconv.Atoi(vars[key]); slot == "" && (name == "A" || name == "B") && n > 0 {
				vars[key] = strconv.Itoa(n - 1)
				slot = firmware.Slot(strings.ToLower(name))
			}
		}
		if slot != "" {
			break
		}
		vars["BOOT_A_LEFT"], vars["BOOT_B_LEFT"] = "3", "3" // saveenv; reset
	}
	if slot == "" {
		t.Fatalf("boot.cmd found no slot in %v", vars)
	}
	script := fmt.Sprintf("BOOT_ORDER=%s\nBOOT_A_LEFT=%s\nBOOT_B_LEFT=%s\n", vars["BOOT_ORDER"], vars["BOOT_A_LEFT"], vars["BOOT_B_LEFT"])
	runT(t, script, "fw_setenv", "-c", s.config, "-f", s.defenv, "-s", "-")
	writeCmdline(t, s.cmdline, slot)
	return slot
}

func (s *ubootSim) open(t *testing.T, opts boot.UBootOptions) *boot.UBoot {
	t.Helper()
	opts.Config, opts.Cmdline = s.config, s.cmdline
	u, err := boot.OpenUBoot(opts)
	if err != nil {
		t.Fatalf("OpenUBoot() = %v", err)
	}
	return u
}

// vars returns the environment as fw_printenv shows it.
func (s *ubootSim) vars(t *testing.T) map[string]string {
	t.Helper()
	return envVars(runT(t, "", "fw_printenv", "-c", s.config))
}

// grubSim is a PC with GRUB, the two environment copies and
// deploy/grub/grub.cfg. With emu set, power-on runs the real grub.cfg in
// grub-emu instead of its Go model.
type grubSim struct {
	dir, env, backup, cmdline string
	emu                       bool
}

// newGRUBEmuSim is a grubSim whose power-on runs deploy/grub/grub.cfg's
// slot selection in grub-emu: the menu entries are replaced by a line that
// prints the choice, and the board halts. grub-emu cannot save_env (its
// host files have no block list), so the test saves the tries with
// grub-editenv, as GRUB would.
func newGRUBEmuSim(t *testing.T) *grubSim {
	t.Helper()
	needTool(t, "grub-emu", "grub-emu")
	s := newGRUBSim(t)
	s.emu = true
	cfg, err := os.ReadFile("../../../deploy/grub/grub.cfg")
	if err != nil {
		t.Fatal(err)
	}
	sel, _, ok := strings.Cut(string(cfg), "\nmenuentry ")
	if !ok {
		t.Fatal("deploy/grub/grub.cfg has no menuentry")
	}
	sel += "\necho \"aftercare-emu slot=${slot} A_TRY=${A_TRY} B_TRY=${B_TRY}\"\nhalt\n"
	if err := os.WriteFile(filepath.Join(s.dir, "grub.cfg"), []byte(sel), 0o644); err != nil {
		t.Fatal(err)
	}
	return s
}

// emuSelect runs grub.cfg in grub-emu and returns the slot it chose and
// the tries it would save.
func (s *grubSim) emuSelect(t *testing.T) (slot string, vars map[string]string) {
	t.Helper()
	cmd := exec.Command("grub-emu", "-d", s.dir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("grub-emu: %v: %q", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		_, rest, ok := strings.Cut(line, "aftercare-emu ")
		if !ok {
			continue
		}
		vars = map[string]string{}
		for _, f := range strings.Fields(rest) {
			if k, v, ok := strings.Cut(f, "="); ok {
				vars[k] = v
			}
		}
		return vars["slot"], vars
	}
	t.Fatalf("grub-emu printed no choice: %q", out)
	return "", nil
}

func newGRUBSim(t *testing.T) *grubSim {
	t.Helper()
	needTool(t, "grub-editenv", "grub-common")
	dir := t.TempDir()
	s := &grubSim{dir: dir, env: filepath.Join(dir, "grubenv"), backup: filepath.Join(dir, "grubenv.bak"), cmdline: filepath.Join(dir, "cmdline")}
	// As the image build does: both copies blank; grub.cfg's defaults
	// boot A.
	runT(t, "", "grub-editenv", s.env, "create")
	runT(t, "", "grub-editenv", s.backup, "create")
	return s
}

// load is GRUB's load_env -f path: the variables, or false when the file
// is missing or not an environment block.
func (s *grubSim) load(path string) (map[string]string, bool) {
	if _, err := os.Stat(path); err != nil {
		return nil, false // grub-editenv would create it
	}
	out, err := exec.Command("grub-editenv", path, "list").Output()
	if err != nil {
		return nil, false
	}
	return envVars(string(out)), true
}

// powerOn runs grub.cfg: defaults, load the backup then the primary copy
// over it, pick the first good untried slot in ORDER (or clear the tries
// and pick the first good one), save its TRY=1 to each copy that loaded.
func (s *grubSim) powerOn(t *testing.T) firmware.Slot {
	t.Helper()
	vars := map[string]string{"ORDER": "A B", "A_OK": "1", "A_TRY": "0", "B_OK": "0", "B_TRY": "0"}
	loaded := map[string]bool{}
	for _, path := range []string{s.backup, s.env} {
		m, ok := s.load(path)
		loaded[path] = ok
		for _, k := range []string{"ORDER", "A_OK", "A_TRY", "B_OK", "B_TRY"} {
			if v, set := m[k]; set {
				vars[k] = v
			}
		}
	}
	pick := func(order []string, needUntried bool) string {
		for _, n := range order {
			if (n == "A" || n == "B") && vars[n+"_OK"] == "1" && (!needUntried || vars[n+"_TRY"] == "0") {
				return n
			}
		}
		return ""
	}
	var slot string
	if s.emu {
		slot, vars = s.emuSelect(t)
	} else {
		order := strings.Fields(vars["ORDER"])
		slot = pick(order, true)
		if slot == "" {
			for _, n := range []string{"A", "B"} {
				if vars[n+"_OK"] == "1" {
					vars[n+"_TRY"] = "0"
				}
			}
			if slot = pick(append(order, "A"), false); slot == "" {
				slot = "A"
			}
		}
		vars[slot+"_TRY"] = "1"
	}
	for _, path := range []string{s.env, s.backup} {
		// save_env fails on a copy that did not load or is too short to
		// hold the block; grub.cfg goes on with the other.
		if loaded[path] {
			exec.Command("grub-editenv", path, "set", "A_TRY="+vars["A_TRY"], "B_TRY="+vars["B_TRY"]).Run()
		}
	}
	booted := firmware.Slot(strings.ToLower(slot))
	writeCmdline(t, s.cmdline, booted)
	return booted
}

func (s *grubSim) open(t *testing.T) *boot.GRUB {
	t.Helper()
	g, err := boot.OpenGRUB(boot.GRUBOptions{Env: s.env, Backup: s.backup, Cmdline: s.cmdline})
	if err != nil {
		t.Fatalf("OpenGRUB() = %v", err)
	}
	return g
}

// recorder puts wrappers for tools in a directory: each logs its name,
// arguments and standard input, then runs the real tool.
type recorder struct {
	dir, log string
}

func newRecorder(t *testing.T, tools ...string) *recorder {
	t.Helper()
	r := &recorder{dir: t.TempDir()}
	r.log = filepath.Join(r.dir, "calls.log")
	for _, tool := range tools {
		real := needTool(t, tool, "the bootloader tools")
		script := fmt.Sprintf(`#!/bin/sh
in=$(mktemp)
cat > "$in"
{ printf '%%s' %q; for a in "$@"; do printf ' %%s' "$a"; done; printf '\n'; sed 's/^/< /' "$in"; } >> %q
%q "$@" < "$in"
rc=$?
rm -f "$in"
exit $rc
`, tool, r.log, real)
		if err := os.WriteFile(filepath.Join(r.dir, tool), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

func (r *recorder) tool(name string) string { return filepath.Join(r.dir, name) }

// calls returns the logged calls, with dir written as $DIR, and clears
// the log.
func (r *recorder) calls(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(r.log)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	os.Remove(r.log)
	return strings.ReplaceAll(string(b), dir, "$DIR")
}

// snapshot reads files; a missing file reads as nil.
func snapshot(t *testing.T, paths ...string) [][]byte {
	t.Helper()
	out := make([][]byte, len(paths))
	for i, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		out[i] = b
	}
	return out
}
