package boot_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aftercare/aftercare/agent/internal/boot"
)

// TestGRUBCommands pins the exact grub-editenv calls: the complete
// environment to grubenv, then the same to grubenv.bak; nothing to a copy
// that already holds it; a torn copy recreated first.
func TestGRUBCommands(t *testing.T) {
	const (
		tryB    = "ORDER=B A A_OK=1 A_TRY=0 B_OK=1 B_TRY=0"
		commitB = "ORDER=B A_OK=0 A_TRY=0 B_OK=1 B_TRY=0"
		commitA = "ORDER=A A_OK=1 A_TRY=0 B_OK=0 B_TRY=0"
	)
	tests := []struct {
		name    string
		prepare func(t *testing.T, s *grubSim)
		do      func(*boot.GRUB) error
		want    string
	}{
		{"try-once-b", nil, func(g *boot.GRUB) error { return g.TryOnce(slotB) },
			"grub-editenv $DIR/grubenv set " + tryB + "\ngrub-editenv $DIR/grubenv.bak set " + tryB + "\n"},
		{"commit-b", nil, func(g *boot.GRUB) error { return g.Commit(slotB) },
			"grub-editenv $DIR/grubenv set " + commitB + "\ngrub-editenv $DIR/grubenv.bak set " + commitB + "\n"},
		{"commit-a-twice-writes-once", nil, func(g *boot.GRUB) error {
			if err := g.Commit(slotA); err != nil {
				return err
			}
			return g.Commit(slotA)
		}, "grub-editenv $DIR/grubenv set " + commitA + "\ngrub-editenv $DIR/grubenv.bak set " + commitA + "\n"},
		{"backup-torn-is-recreated", func(t *testing.T, s *grubSim) {
			os.WriteFile(s.backup, []byte("# GRUB Environment Block\nORD"), 0o644)
		}, func(g *boot.GRUB) error { return g.Commit(slotA) },
			"grub-editenv $DIR/grubenv set " + commitA + "\ngrub-editenv $DIR/grubenv.bak create\ngrub-editenv $DIR/grubenv.bak set " + commitA + "\n"},
		{"primary-missing-is-recreated", func(t *testing.T, s *grubSim) {
			os.Remove(s.env)
		}, func(g *boot.GRUB) error { return g.TryOnce(slotB) },
			"grub-editenv $DIR/grubenv create\ngrub-editenv $DIR/grubenv set " + tryB + "\ngrub-editenv $DIR/grubenv.bak set " + tryB + "\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newGRUBSim(t)
			rec := newRecorder(t, "grub-editenv")
			g, err := boot.OpenGRUB(boot.GRUBOptions{Env: s.env, Cmdline: s.cmdline, GrubEditenv: rec.tool("grub-editenv")})
			if err != nil {
				t.Fatal(err)
			}
			if tt.prepare != nil {
				tt.prepare(t, s)
			}
			rec.calls(t, s.dir)
			if err := tt.do(g); err != nil {
				t.Fatal(err)
			}
			var writes []string
			for _, call := range strings.SplitAfter(rec.calls(t, s.dir), "\n") {
				if call != "" && !strings.HasSuffix(call, " list\n") {
					writes = append(writes, call)
				}
			}
			if got := strings.Join(writes, ""); got != tt.want {
				t.Fatalf("grub-editenv calls:\n%s\nwant:\n%s", got, tt.want)
			}
			// Both copies now hold the same complete environment.
			a, _ := s.load(s.env)
			b, _ := s.load(s.backup)
			if len(a) != 5 || strings.Join(mapLines(a), " ") != strings.Join(mapLines(b), " ") {
				t.Fatalf("copies differ after the change: %v and %v", a, b)
			}
		})
	}
}

func mapLines(m map[string]string) []string {
	var out []string
	for _, k := range []string{"ORDER", "A_OK", "A_TRY", "B_OK", "B_TRY"} {
		out = append(out, k+"="+m[k])
	}
	return out
}

// TestGRUBRefusesAndChangesNothing: a missing tool, no readable copy or
// values grub.cfg would misread give an error naming the cause and leave
// both files as they were.
func TestGRUBRefusesAndChangesNothing(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(t *testing.T, s *grubSim, o *boot.GRUBOptions)
		wantErr string
		wantIs  error
	}{
		{"grub-editenv-missing", func(t *testing.T, s *grubSim, o *boot.GRUBOptions) {
			o.GrubEditenv = filepath.Join(s.dir, "no-such-grub-editenv")
		}, "no-such-grub-editenv (install grub-common)", boot.ErrNoTool},
		{"both-copies-missing", func(t *testing.T, s *grubSim, o *boot.GRUBOptions) {
			os.Remove(s.env)
			os.Remove(s.backup)
		}, "neither GRUB environment copy reads", nil},
		{"both-copies-garbage", func(t *testing.T, s *grubSim, o *boot.GRUBOptions) {
			os.WriteFile(s.env, bytes.Repeat([]byte{'x'}, 1024), 0o644)
			os.WriteFile(s.backup, nil, 0o644)
		}, "invalid environment block", nil},
		{"order-garbage", func(t *testing.T, s *grubSim, o *boot.GRUBOptions) {
			runT(t, "", "grub-editenv", s.env, "set", "ORDER=A A")
		}, `ORDER: "A A" is not an order of the slots A and B`, nil},
		{"flag-garbage", func(t *testing.T, s *grubSim, o *boot.GRUBOptions) {
			runT(t, "", "grub-editenv", s.backup, "set", "B_TRY=yes")
		}, `B_TRY="yes" is not 0 or 1`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newGRUBSim(t)
			g := s.open(t)
			opts := boot.GRUBOptions{Env: s.env, Backup: s.backup, Cmdline: s.cmdline}
			tt.prepare(t, s, &opts)
			before := snapshot(t, s.env, s.backup)
			if opts.GrubEditenv != "" {
				_, err := boot.OpenGRUB(opts)
				if !errors.Is(err, boot.ErrNoTool) {
					t.Fatalf("OpenGRUB() without grub-editenv = %v, want ErrNoTool", err)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("OpenGRUB() = %v, want an error containing %q", err, tt.wantErr)
				}
				return
			}
			err := g.TryOnce(slotB)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("TryOnce(b) = %v, want an error containing %q", err, tt.wantErr)
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Fatalf("TryOnce(b) = %v, want errors.Is %v", err, tt.wantIs)
			}
			if after := snapshot(t, s.env, s.backup); !bytes.Equal(before[0], after[0]) || !bytes.Equal(before[1], after[1]) {
				t.Fatalf("TryOnce(b) failed with %v but changed a grubenv", err)
			}
			if _, err := boot.OpenGRUB(opts); err == nil {
				t.Fatalf("OpenGRUB() on the damaged environment succeeded")
			}
		})
	}
	t.Run("no-env-path", func(t *testing.T) {
		if _, err := boot.OpenGRUB(boot.GRUBOptions{}); err == nil || !strings.Contains(err.Error(), "grubenv path is required") {
			t.Fatalf("OpenGRUB({}) = %v, want an error naming the grubenv path", err)
		}
	})
}
