package boot

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/aftercare/aftercare/firmware"
)

// ErrNoTool is returned when a bootloader tool (fw_printenv, fw_setenv,
// grub-editenv) is not installed. Nothing was changed.
var ErrNoTool = errors.New("boot: bootloader tool not found")

// toolTimeout bounds one run of a bootloader tool. They touch a few KiB of
// flash or disk; one that takes longer is stuck.
const toolTimeout = 30 * time.Second

// maxToolOutput is the most output read from a tool: an environment is
// at most a few hundred KiB.
const maxToolOutput = 1 << 20 // bytes

// DefaultCmdline is where the running kernel's command line is read.
const DefaultCmdline = "/proc/cmdline"

// runTool runs a bootloader tool with stdin and returns its standard output.
// pkg names the Debian package that provides the tool, for the error.
func runTool(tool, pkg string, args []string, stdin []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), toolTimeout)
	defer cancel()
	if _, err := exec.LookPath(tool); err != nil {
		return nil, fmt.Errorf("%w: %s (install %s): %w", ErrNoTool, tool, pkg, err)
	}
	cmd := exec.CommandContext(ctx, tool, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr limitedBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = strings.TrimSpace(stdout.String())
		}
		return nil, fmt.Errorf("%s %s: %w: %s", tool, strings.Join(args, " "), err, msg)
	}
	if stdout.full {
		return nil, fmt.Errorf("%s %s: output exceeds %d bytes", tool, strings.Join(args, " "), maxToolOutput)
	}
	return stdout.Bytes(), nil
}

// limitedBuffer keeps the first maxToolOutput bytes written to it.
type limitedBuffer struct {
	bytes.Buffer
	full bool
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := maxToolOutput - b.Len(); len(p) > room {
		b.full = true
		b.Buffer.Write(p[:max(room, 0)])
		return len(p), nil
	}
	return b.Buffer.Write(p)
}

// bootedFromCmdline returns the slot named by "rauc.slot=" on the kernel
// command line stored in path (normally /proc/cmdline). The boot script
// puts it there; RAUC reads the same key.
func bootedFromCmdline(path string) (firmware.Slot, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read booted slot from kernel command line: %w", err)
	}
	for _, f := range strings.Fields(string(b)) {
		v, ok := strings.CutPrefix(f, "rauc.slot=")
		if !ok {
			continue
		}
		s, err := firmware.ParseSlot(v)
		if err != nil {
			return "", fmt.Errorf("kernel command line %s: rauc.slot=%q is not A or B", path, v)
		}
		return s, nil
	}
	return "", fmt.Errorf("kernel command line %s has no rauc.slot=A or rauc.slot=B; the boot script must add it (see deploy/uboot/boot.cmd, deploy/grub/grub.cfg)", path)
}

// bootname is the RAUC bootname of a slot: "A" or "B".
func bootname(s firmware.Slot) string { return strings.ToUpper(string(s)) }

// checkSlot refuses anything but slot a or b before a tool runs.
func checkSlot(s firmware.Slot) error {
	if !s.Valid() {
		return fmt.Errorf("slot %q is not a or b", s)
	}
	return nil
}
