package boot_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aftercare/aftercare/agent/internal/boot"
	"github.com/aftercare/aftercare/firmware"
)

// TestUBootCommands pins the exact fw_setenv calls: one per change, all
// variables in one script on stdin, nothing when the environment already
// holds them.
func TestUBootCommands(t *testing.T) {
	tests := []struct {
		name string
		do   func(*boot.UBoot) error
		want string
	}{
		{"try-once-b", func(u *boot.UBoot) error { return u.TryOnce(slotB) },
			"fw_setenv -c $DIR/fw_env.config -s -\n< BOOT_ORDER=B A\n< BOOT_B_LEFT=1\n< BOOT_A_LEFT=3\n"},
		{"try-once-a", func(u *boot.UBoot) error { return u.TryOnce(slotA) },
			"fw_setenv -c $DIR/fw_env.config -s -\n< BOOT_ORDER=A B\n< BOOT_A_LEFT=1\n< BOOT_B_LEFT=3\n"},
		{"commit-b", func(u *boot.UBoot) error { return u.Commit(slotB) },
			"fw_setenv -c $DIR/fw_env.config -s -\n< BOOT_ORDER=B\n< BOOT_B_LEFT=3\n< BOOT_A_LEFT=0\n"},
		{"commit-a-twice-writes-once", func(u *boot.UBoot) error {
			if err := u.Commit(slotA); err != nil {
				return err
			}
			return u.Commit(slotA)
		}, "fw_setenv -c $DIR/fw_env.config -s -\n< BOOT_ORDER=A\n< BOOT_A_LEFT=3\n< BOOT_B_LEFT=0\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newUBootSim(t)
			s.powerOn(t)
			rec := newRecorder(t, "fw_printenv", "fw_setenv")
			u := s.open(t, boot.UBootOptions{FwPrintenv: rec.tool("fw_printenv"), FwSetenv: rec.tool("fw_setenv")})
			rec.calls(t, s.dir)
			if err := tt.do(u); err != nil {
				t.Fatal(err)
			}
			var writes []string
			for _, call := range strings.SplitAfter(rec.calls(t, s.dir), "\n") {
				if call != "" && !strings.HasPrefix(call, "fw_printenv ") {
					writes = append(writes, call)
				}
			}
			if got := strings.Join(writes, ""); got != tt.want {
				t.Fatalf("fw_setenv calls:\n%s\nwant:\n%s", got, tt.want)
			}
		})
	}
}

// TestUBootAttempts checks a configured attempt count reaches the
// environment and the boot script honours it.
func TestUBootAttempts(t *testing.T) {
	s := newUBootSim(t)
	s.powerOn(t)
	u := s.open(t, boot.UBootOptions{Attempts: 5})
	if err := u.Commit(slotA); err != nil {
		t.Fatal(err)
	}
	if got := s.vars(t)["BOOT_A_LEFT"]; got != "5" {
		t.Fatalf("BOOT_A_LEFT after Commit(a) with 5 attempts = %q, want 5", got)
	}
	for _, bad := range []int{-1, 10} {
		if _, err := boot.OpenUBoot(boot.UBootOptions{Config: s.config, Cmdline: s.cmdline, Attempts: bad}); err == nil || !strings.Contains(err.Error(), "attempts") {
			t.Errorf("OpenUBoot(Attempts: %d) = %v, want an error naming attempts", bad, err)
		}
	}
}

// TestUBootRefusesAndChangesNothing: a missing tool, an unreadable
// environment or values the boot script would misread give an error that
// names the cause, and leave both copies as they were.
func TestUBootRefusesAndChangesNothing(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(t *testing.T, s *ubootSim, opts *boot.UBootOptions)
		wantErr string
		wantIs  error
	}{
		{"fw_setenv-missing", func(t *testing.T, s *ubootSim, o *boot.UBootOptions) {
			o.FwSetenv = filepath.Join(s.dir, "no-such-fw_setenv")
		}, "no-such-fw_setenv (install libubootenv-tool)", boot.ErrNoTool},
		{"both-copies-corrupt", func(t *testing.T, s *ubootSim, o *boot.UBootOptions) {
			for _, c := range s.copies {
				os.WriteFile(c, bytes.Repeat([]byte{0xff}, ubootEnvSize), 0o644)
			}
		}, "read U-Boot environment: fw_printenv -c", nil},
		{"fw_env.config-gone", func(t *testing.T, s *ubootSim, o *boot.UBootOptions) {
			os.Remove(s.config)
		}, "fw_env.config", nil},
		{"boot-order-garbage", func(t *testing.T, s *ubootSim, o *boot.UBootOptions) {
			runT(t, "BOOT_ORDER=A C\n", "fw_setenv", "-c", s.config, "-s", "-")
		}, `BOOT_ORDER: "A C" is not an order of the slots A and B`, nil},
		{"counter-garbage", func(t *testing.T, s *ubootSim, o *boot.UBootOptions) {
			runT(t, "BOOT_B_LEFT=0x10\n", "fw_setenv", "-c", s.config, "-s", "-")
		}, `BOOT_B_LEFT="0x10" is not a count from 0 to 9`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newUBootSim(t)
			s.powerOn(t)
			u := s.open(t, boot.UBootOptions{})
			opts := boot.UBootOptions{Config: s.config, Cmdline: s.cmdline}
			tt.prepare(t, s, &opts)
			before := snapshot(t, s.copies[0], s.copies[1])
			if opts.FwSetenv != "" {
				var err error
				if u, err = boot.OpenUBoot(opts); err != nil {
					t.Fatal(err)
				}
			}
			err := u.TryOnce(slotB) // u was opened before the damage, or without a tool
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("TryOnce(b) = %v, want an error containing %q", err, tt.wantErr)
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Fatalf("TryOnce(b) = %v, want errors.Is %v", err, tt.wantIs)
			}
			if after := snapshot(t, s.copies[0], s.copies[1]); !bytes.Equal(before[0], after[0]) || !bytes.Equal(before[1], after[1]) {
				t.Fatalf("TryOnce(b) failed with %v but changed the environment", err)
			}
			if _, err := boot.OpenUBoot(opts); err == nil && opts.FwSetenv == "" {
				t.Fatalf("OpenUBoot() on the damaged environment succeeded")
			}
		})
	}
	t.Run("fw_printenv-missing", func(t *testing.T) {
		s := newUBootSim(t)
		_, err := boot.OpenUBoot(boot.UBootOptions{Config: s.config, Cmdline: s.cmdline, FwPrintenv: "aftercare-no-such-fw_printenv"})
		if !errors.Is(err, boot.ErrNoTool) || !strings.Contains(err.Error(), "aftercare-no-such-fw_printenv") {
			t.Fatalf("OpenUBoot() without fw_printenv = %v, want ErrNoTool naming the tool", err)
		}
	})
}

// TestUBootOneCopyTorn: a copy torn by a power cut (bad CRC) is ignored by
// the tools and the boot script alike; the next change rewrites it.
func TestUBootOneCopyTorn(t *testing.T) {
	s := newUBootSim(t)
	s.powerOn(t)
	u := s.open(t, boot.UBootOptions{})
	if err := u.TryOnce(slotB); err != nil {
		t.Fatal(err)
	}
	// Tear the copy just written (the one with the higher flags byte).
	newest := s.copies[0]
	if c := snapshot(t, s.copies[0], s.copies[1]); c[1][4] > c[0][4] {
		newest = s.copies[1]
	}
	b, _ := os.ReadFile(newest)
	b[20] ^= 0xff
	os.WriteFile(newest, b, 0o644)
	if got := s.powerOn(t); got != slotA {
		t.Fatalf("power-on with the TryOnce copy torn booted %s, want a (the older copy)", got)
	}
	if err := u.Commit(slotA); err != nil {
		t.Fatalf("Commit(a) over a torn copy = %v", err)
	}
	if got := s.vars(t)["BOOT_ORDER"]; got != "A" {
		t.Fatalf("BOOT_ORDER after Commit(a) = %q, want A", got)
	}
}

func TestBootedFromCmdline(t *testing.T) {
	tests := []struct {
		name, cmdline string
		want          firmware.Slot
		wantErr       string
	}{
		{"a", "console=ttyS0 root=/dev/mmcblk0p2 rauc.slot=A rootwait\n", slotA, ""},
		{"b-lower-case", "rauc.slot=b", slotB, ""},
		{"missing", "console=ttyS0 root=/dev/mmcblk0p2", "", "has no rauc.slot="},
		{"other-slot-name", "rauc.slot=R", "", `rauc.slot="R" is not A or B`},
		{"prefix-only", "xrauc.slot=A", "", "has no rauc.slot="},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newUBootSim(t)
			s.powerOn(t)
			u := s.open(t, boot.UBootOptions{})
			os.WriteFile(s.cmdline, []byte(tt.cmdline), 0o644)
			got, err := u.Booted()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Booted() with %q = %s, %v; want error containing %q", tt.cmdline, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("Booted() with %q = %s, %v; want %s", tt.cmdline, got, err, tt.want)
			}
		})
	}
	t.Run("unreadable", func(t *testing.T) {
		g, err := boot.OpenGRUB(boot.GRUBOptions{Env: newGRUBSim(t).env, Cmdline: filepath.Join(t.TempDir(), "nope")})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := g.Booted(); err == nil || !strings.Contains(err.Error(), "kernel command line") {
			t.Fatalf("Booted() without a command line file = %v, want an error naming it", err)
		}
	})
}
