// Package boot holds the bootloader adapters: each tells the installer which
// slot booted, arms a slot to be tried once, and commits the running slot
// (install.Bootloader).
//
// UBoot drives a redundant U-Boot environment with fw_printenv and
// fw_setenv, one atomic fw_setenv -s per change (uboot.go). GRUB drives two
// grubenv copies with grub-editenv, written in a fixed order because a
// grubenv is not power-safe (grub.go). Both use RAUC's variables and read
// the booted slot from rauc.slot= on the kernel command line; their boot
// scripts are deploy/uboot/boot.cmd and deploy/grub/grub.cfg.
//
// File is the adapter for tests and the fleet simulator. It keeps the
// bootloader environment in a small JSON file with the same semantics as
// RAUC's U-Boot integration: a primary slot, and an optional slot to try
// with a counter of attempts left. PowerOn plays the bootloader's part at
// power-on.
package boot

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/aftercare/aftercare/firmware"
	"github.com/aftercare/aftercare/internal/atomicfile"
)

// envFormat is the format version of the file adapter's environment.
const envFormat = 1

// fileEnv is the file adapter's bootloader environment.
type fileEnv struct {
	Format    int           `json:"format"`
	Primary   firmware.Slot `json:"primary"`
	Try       firmware.Slot `json:"try,omitempty"` // "" when nothing is armed
	TriesLeft int           `json:"tries_left"`
}

// File is a file-backed bootloader: dir/bootenv.json is the environment and
// dir/booted stands for the kernel command line's "booted slot" entry.
// It is not safe for concurrent use by several processes, like a real
// bootloader environment.
type File struct {
	dir string
}

// OpenFile opens the file bootloader in dir, creating an environment that
// boots slot A when there is none.
func OpenFile(dir string) (*File, error) {
	f := &File{dir: dir}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, err
	}
	if _, err := os.Stat(f.envPath()); errors.Is(err, os.ErrNotExist) {
		if err := f.write(fileEnv{Format: envFormat, Primary: firmware.SlotA}); err != nil {
			return nil, err
		}
		if err := atomicfile.WriteFile(f.bootedPath(), []byte("a\n"), 0o644); err != nil {
			return nil, err
		}
	}
	return f, nil
}

func (f *File) envPath() string    { return filepath.Join(f.dir, "bootenv.json") }
func (f *File) bootedPath() string { return filepath.Join(f.dir, "booted") }

func (f *File) read() (fileEnv, error) {
	b, err := os.ReadFile(f.envPath())
	if err != nil {
		return fileEnv{}, fmt.Errorf("read boot environment: %w", err)
	}
	var env fileEnv
	if err := json.Unmarshal(b, &env); err != nil {
		return fileEnv{}, fmt.Errorf("boot environment %s: %w", f.envPath(), err)
	}
	if env.Format != envFormat || !env.Primary.Valid() || (env.Try != "" && !env.Try.Valid()) {
		return fileEnv{}, fmt.Errorf("boot environment %s is not a format %d environment", f.envPath(), envFormat)
	}
	return env, nil
}

func (f *File) write(env fileEnv) error {
	b, err := json.Marshal(env)
	if err != nil {
		return err
	}
	// One atomic replace: a power cut leaves the old environment or the
	// new, like a redundant U-Boot environment.
	return atomicfile.WriteFile(f.envPath(), b, 0o644)
}

// Booted returns the slot the running system booted from.
func (f *File) Booted() (firmware.Slot, error) {
	b, err := os.ReadFile(f.bootedPath())
	if err != nil {
		return "", fmt.Errorf("read booted slot: %w", err)
	}
	return firmware.ParseSlot(strings.TrimSpace(string(b)))
}

// TryOnce makes the next boot, and only the next, use s.
func (f *File) TryOnce(s firmware.Slot) error {
	env, err := f.read()
	if err != nil {
		return err
	}
	env.Try, env.TriesLeft = s, 1
	return f.write(env)
}

// Commit makes s, which must be the booted slot, the primary slot and
// disarms any try.
func (f *File) Commit(s firmware.Slot) error {
	env, err := f.read()
	if err != nil {
		return err
	}
	env.Primary, env.Try, env.TriesLeft = s, "", 0
	return f.write(env)
}

// PowerOn plays the bootloader at power-on: boot the armed slot while it has
// tries left, using one up; otherwise disarm it and boot the primary slot.
// It records the choice for Booted and returns it.
func (f *File) PowerOn() (firmware.Slot, error) {
	env, err := f.read()
	if err != nil {
		return "", err
	}
	boot := env.Primary
	switch {
	case env.Try != "" && env.TriesLeft > 0:
		boot = env.Try
		env.TriesLeft--
	case env.Try != "":
		env.Try = ""
	}
	if err := f.write(env); err != nil {
		return "", err
	}
	if err := atomicfile.WriteFile(f.bootedPath(), []byte(string(boot)+"\n"), 0o644); err != nil {
		return "", err
	}
	return boot, nil
}
