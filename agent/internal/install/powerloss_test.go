package install_test

// The power-loss harness. The real installer runs in a child process (this
// test binary, re-executed with childEnv set) that kills itself with
// SIGKILL at a chosen point: the n-th hook call (every phase of an install
// and of the commit after the reboot) or the n-th byte written to the slot.
// The parent then plays the power cut and the next power-on: it scrambles
// whatever of the new slot was not yet covered by a checkpoint (the page
// cache a power cut loses), lets the file bootloader pick a slot, checks
// the invariants, and restarts the installer until it says it is done.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aftercare/aftercare/agent/internal/boot"
	"github.com/aftercare/aftercare/agent/internal/download"
	"github.com/aftercare/aftercare/agent/internal/install"
	"github.com/aftercare/aftercare/firmware"
)

const childEnv = "AFTERCARE_POWERLOSS_CHILD"

// Exit codes of a child run.
const (
	exitDone   = 0 // committed, rolled back, or nothing to do
	exitReboot = 3 // a slot is armed: power-cycle and run again
)

// childSpec is what the parent tells a child run, as JSON in childEnv.
type childSpec struct {
	Dir        string      `json:"dir"`
	URL        string      `json:"url"`
	Job        install.Job `json:"job"`
	Checkpoint int64       `json:"checkpoint"` // install.Options.CheckpointBytes
	KillAt     int         `json:"kill_at"`    // die at this hook call (1-based); 0 never
	KillBytes  int64       `json:"kill_bytes"` // die once this many slot bytes are written; -1 never
}

// TestPowerLossChild is the child process; it does nothing in a normal run.
func TestPowerLossChild(t *testing.T) {
	spec := os.Getenv(childEnv)
	if spec == "" {
		return
	}
	os.Exit(runChild(spec))
}

func slotPaths(dir string) map[firmware.Slot]string {
	return map[firmware.Slot]string{firmware.SlotA: filepath.Join(dir, "slot-a.img"), firmware.SlotB: filepath.Join(dir, "slot-b.img")}
}

// runChild is one boot of the device: finish what the journal says, then
// install the job, printing each hook call and the outcome on stdout.
func runChild(specJSON string) int {
	var spec childSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		fmt.Println("error", err)
		return 1
	}
	out := os.Stdout
	die := func() {
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
	calls := 0
	hook := func(p install.Point) {
		calls++
		fmt.Fprintf(out, "event %d %s\n", calls, p)
		if calls == spec.KillAt {
			die()
		}
	}
	left := spec.KillBytes
	open := func(path string) (install.SlotFile, error) {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640)
		if err != nil || spec.KillBytes < 0 {
			return f, err
		}
		return &dyingFile{File: f, left: &left, die: die}, nil
	}
	bl, err := boot.OpenFile(filepath.Join(spec.Dir, "boot"))
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	inst, err := install.New(install.Options{
		Boot: bl, Slots: slotPaths(spec.Dir), Dir: spec.Dir, Log: slog.New(slog.NewJSONHandler(out, nil)),
		CheckpointBytes: spec.Checkpoint, Open: open, Hook: hook,
	}, "1.0.0")
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	ctx := context.Background()
	o, err := inst.AfterBoot(ctx, func(context.Context, install.Job) error { return nil })
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	fmt.Fprintf(out, "outcome %s %t %s\n", o.Kind, o.Resume, o.Reason)
	if o.Kind == install.Committed || o.Kind == install.RolledBack {
		return exitDone
	}
	if _, running, err := inst.Running(); err == nil && running.Version == spec.Job.Version {
		fmt.Fprintln(out, "outcome current")
		return exitDone
	}
	src := download.Source{HTTP: &http.Client{Timeout: time.Minute}, URL: spec.URL, Length: spec.Job.Image.Length}
	slot, err := inst.Install(ctx, src.Open, spec.Job)
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	if err := inst.Arm(slot, spec.Job); err != nil {
		fmt.Println("error", err)
		return 1
	}
	return exitReboot
}

// dyingFile is a slot that kills the process after *left more bytes.
type dyingFile struct {
	*os.File
	left *int64
	die  func()
}

func (d *dyingFile) Write(p []byte) (int, error) {
	if int64(len(p)) >= *d.left {
		d.File.Write(p[:*d.left])
		d.die()
	}
	*d.left -= int64(len(p))
	return d.File.Write(p)
}

// childRun is what one child run did.
type childRun struct {
	exit     int // exit code, or -1 when killed
	events   []string
	outcome  string // outcome kind
	resumed  int64  // raw offset the install resumed from; -1 when it did not
	stdout   string
	requests int
}

// rig is one device on disk: slots, state and the file bootloader.
type rig struct {
	dir  string
	boot *boot.File
}

// rigDir is a fresh directory for a device: in /dev/shm when there is one,
// since the harness plays the power cut itself (powerCut) and a disk's
// fsync latency would only slow its hundreds of installs down.
func rigDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/dev/shm", "aftercare-powerloss-")
	if err != nil {
		return t.TempDir()
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func newRig(t *testing.T, factory []byte) *rig {
	t.Helper()
	dir := rigDir(t)
	if err := os.WriteFile(slotPaths(dir)[firmware.SlotA], factory, 0o640); err != nil {
		t.Fatal(err)
	}
	bl, err := boot.OpenFile(filepath.Join(dir, "boot"))
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{dir: dir, boot: bl}
	if _, err := bl.PowerOn(); err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *rig) run(t *testing.T, spec childSpec) childRun {
	t.Helper()
	spec.Dir = r.dir
	b, _ := json.Marshal(spec)
	cmd := selfCommand("-test.run=^TestPowerLossChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), childEnv+"="+string(b))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := childRun{resumed: -1, stdout: stdout.String()}
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit) && exit.Sys().(syscall.WaitStatus).Signaled():
		res.exit = -1
	case errors.As(err, &exit):
		res.exit = exit.ExitCode()
	default:
		t.Fatalf("start child: %v", err)
	}
	sc := bufio.NewScanner(&stdout)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "event "):
			res.events = append(res.events, strings.Fields(line)[2])
		case strings.HasPrefix(line, "outcome "):
			res.outcome = strings.Fields(line)[1]
		case strings.HasPrefix(line, "{"):
			var l struct {
				Msg string `json:"msg"`
				Raw int64  `json:"raw_offset"`
			}
			if json.Unmarshal([]byte(line), &l) == nil && l.Msg == "install resumes" {
				res.resumed = l.Raw
			}
		}
	}
	if res.exit != -1 && res.exit != exitDone && res.exit != exitReboot {
		t.Fatalf("child failed (exit %d):\n%s\n%s", res.exit, stdout.String(), stderr.String())
	}
	return res
}

// stateFile reads a state file of the installer; ok is false when absent.
func (r *rig) stateFile(t *testing.T, name string, v any) bool {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(r.dir, name))
	if errors.Is(err, os.ErrNotExist) {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("state file %s does not parse after the power cut: %v\n%s", name, err, b)
	}
	return true
}

type journalFile struct {
	Format int           `json:"format"`
	Phase  string        `json:"phase"`
	Slot   firmware.Slot `json:"slot"`
}

type checkpointFile struct {
	Format int               `json:"format"`
	Slot   firmware.Slot     `json:"slot"`
	At     firmware.Position `json:"at"`
}

// powerCut plays what a power cut loses: the new slot's bytes past the
// last checkpoint (not yet fsynced when the checkpoint was saved) become
// garbage, while a write is in progress.
func (r *rig) powerCut(t *testing.T, img firmware.Image) (resumeFrom int64) {
	t.Helper()
	var j journalFile
	if !r.stateFile(t, "install.json", &j) || j.Phase != string(install.PhaseWriting) {
		var c checkpointFile
		r.stateFile(t, "install-checkpoint.json", &c)
		return -1
	}
	resumeFrom = -1
	from := int64(0)
	var c checkpointFile
	if r.stateFile(t, "install-checkpoint.json", &c) {
		if c.Format != 1 || c.Slot != j.Slot || c.At.Check(img) != nil {
			t.Fatalf("checkpoint %+v is not valid for the image", c)
		}
		from, resumeFrom = c.At.Raw, c.At.Raw
	}
	f, err := os.OpenFile(slotPaths(r.dir)[j.Slot], os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(bytes.Repeat([]byte{0xA5}, int(img.RawLength-from)), from); err != nil {
		t.Fatal(err)
	}
	return resumeFrom
}

// powerOn boots the device and checks the invariants: the booted slot holds
// the image the agent last verified for it, the state files parse, and the
// state directory holds at most 1 MiB besides the slots.
func (r *rig) powerOn(t *testing.T, factorySum string, img firmware.Image) firmware.Slot {
	t.Helper()
	slot, err := r.boot.PowerOn()
	if err != nil {
		t.Fatalf("PowerOn() = %v", err)
	}
	want, n := factorySum, int64(-1)
	if slot == firmware.SlotB {
		want, n = img.RawSHA256, img.RawLength
	}
	if got := fileSum(t, slotPaths(r.dir)[slot], n); got != want {
		t.Fatalf("the device booted slot %s holding sha256 %s, want %s: a bad slot booted", slot, got, want)
	}
	var status struct {
		Format int                                `json:"format"`
		Slots  map[firmware.Slot]install.SlotInfo `json:"slots"`
	}
	if !r.stateFile(t, "slots.json", &status) || status.Format != 1 {
		t.Fatalf("slots.json missing or of another format: %+v", status)
	}
	if info, ok := status.Slots[slot]; !ok || (slot == firmware.SlotB && info.RawSHA256 != img.RawSHA256) {
		t.Fatalf("slots.json says %+v for the booted slot %s", status.Slots, slot)
	}
	var j journalFile
	if r.stateFile(t, "install.json", &j) && (j.Format != 1 || !j.Slot.Valid()) {
		t.Fatalf("install.json = %+v", j)
	}
	var extra int64
	filepath.Walk(r.dir, func(path string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() && !strings.HasPrefix(fi.Name(), "slot-") {
			extra += fi.Size()
		}
		return nil
	})
	if extra > 1<<20 {
		t.Fatalf("the state directory holds %d bytes besides the slots, more than 1 MiB", extra)
	}
	return slot
}

func fileSum(t *testing.T, path string, n int64) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if n >= 0 {
		if int64(len(b)) < n {
			return "short"
		}
		b = b[:n]
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// killPoint is where a child dies: at hook call n of run 1 or 2 (the
// install, or the first boot after it), or after bytes slot bytes.
type killPoint struct {
	name  string
	run   int
	call  int
	bytes int64
	event string
}

func TestPowerLossAtEveryStep(t *testing.T) {
	if testing.Short() {
		t.Skip("power-loss harness: skipped in -short mode")
	}
	// A 2 MiB image in 16 frames, a checkpoint every 2: small enough for
	// hundreds of installs under -race, with boundaries enough to kill at.
	const frame = 128 << 10
	var rawBuf, factoryBuf bytes.Buffer
	writeFirmwareLike(&rawBuf, 2<<20, 1)
	writeFirmwareLike(&factoryBuf, 256<<10, 2)
	raw, factory := rawBuf.Bytes(), factoryBuf.Bytes()
	stored := encodeFrames(t, raw, frame)
	img := describe(firmware.CompressionZstd, stored, raw)
	factorySum := fileSumBytes(factory)
	job := install.Job{RolloutID: "ro1", Target: "pump/1.1.0/image.zst", Version: "1.1.0", Image: img}
	srv := newImageServer(t, stored, nil)
	base := childSpec{URL: srv.URL, Job: job, Checkpoint: 2 * frame, KillBytes: -1}

	// A run without a kill lists the hook calls of the install (run 1)
	// and of the boot that commits it (run 2).
	ref := newRig(t, factory)
	run1 := ref.run(t, base)
	if run1.exit != exitReboot {
		t.Fatalf("reference install exited %d:\n%s", run1.exit, run1.stdout)
	}
	ref.powerOn(t, factorySum, img)
	run2 := ref.run(t, base)
	if run2.exit != exitDone || run2.outcome != string(install.Committed) {
		t.Fatalf("reference boot after the install: exit %d, outcome %q", run2.exit, run2.outcome)
	}

	var points []killPoint
	for run, events := range [][]string{run1.events, run2.events} {
		for i, e := range events {
			points = append(points, killPoint{name: fmt.Sprintf("run%d-%02d-%s", run+1, i+1, e), run: run + 1, call: i + 1, bytes: -1, event: e})
		}
	}
	rng := rand.New(rand.NewPCG(5, 5))
	var offsets []int64
	for k := int64(1); k < img.RawLength/frame; k += 4 {
		offsets = append(offsets, k*frame-1, k*frame, k*frame+1)
	}
	for range 8 {
		offsets = append(offsets, 1+rng.Int64N(img.RawLength-1))
	}
	for _, off := range offsets {
		points = append(points, killPoint{name: fmt.Sprintf("write-byte-%d", off), run: 1, bytes: off, event: "write"})
	}

	var mu sync.Mutex
	resumed, rolledBack, committed := 0, 0, 0
	t.Run("kill", func(t *testing.T) {
		for _, kp := range points {
			t.Run(kp.name, func(t *testing.T) {
				t.Parallel()
				outcome, didResume := powerLossAt(t, base, kp, factory, factorySum, img)
				mu.Lock()
				defer mu.Unlock()
				if didResume {
					resumed++
				}
				switch outcome {
				case string(install.RolledBack):
					rolledBack++
				default:
					committed++
				}
			})
		}
	})
	if len(points) < 50 {
		t.Errorf("only %d kill points, want at least 50", len(points))
	}
	if !t.Failed() {
		t.Logf("power-loss harness: %d kill points (%d hook calls over install and commit, %d slot-write byte offsets); "+
			"all invariants held (booted a good slot, state files parse, <= 1 MiB extra disk); "+
			"%d resumed from a checkpoint, %d ended committed, %d reported rolled back (power lost between arming and TryOnce, or during the trial boot's health check)",
			len(points), len(run1.events)+len(run2.events), len(offsets), resumed, committed, rolledBack)
	}
}

func fileSumBytes(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// powerLossAt runs an install killed at kp, then power-cycles and restarts
// until it ends, checking the invariants at every boot.
func powerLossAt(t *testing.T, base childSpec, kp killPoint, factory []byte, factorySum string, img firmware.Image) (outcome string, resumed bool) {
	r := newRig(t, factory)
	if kp.run == 2 {
		if res := r.run(t, base); res.exit != exitReboot {
			t.Fatalf("install before the kill exited %d", res.exit)
		}
		r.powerOn(t, factorySum, img)
	}
	spec := base
	spec.KillAt, spec.KillBytes = kp.call, kp.bytes
	if res := r.run(t, spec); res.exit != -1 {
		t.Fatalf("the child was not killed at %s (exit %d):\n%s", kp.name, res.exit, res.stdout)
	}
	resumeFrom := r.powerCut(t, img)
	r.powerOn(t, factorySum, img)
	for boot := 0; ; boot++ {
		if boot == 5 {
			t.Fatalf("killed at %s: no end after %d boots", kp.name, boot)
		}
		res := r.run(t, base)
		if boot == 0 && resumeFrom >= 0 {
			if res.resumed != resumeFrom {
				t.Fatalf("killed at %s with a checkpoint at raw byte %d: the install resumed from %d (-1: not at all)\n%s", kp.name, resumeFrom, res.resumed, res.stdout)
			}
			resumed = true
		}
		if res.outcome != "" && res.outcome != string(install.NoInstall) && res.outcome != string(install.Interrupted) {
			outcome = res.outcome
		}
		if res.exit == exitDone {
			break
		}
		r.powerOn(t, factorySum, img)
	}
	booted, _ := r.boot.Booted()
	wantRollback := kp.event == string(install.PointArmed) || kp.event == string(install.PointHealthy)
	switch {
	case wantRollback && (outcome != string(install.RolledBack) || booted != firmware.SlotA):
		t.Fatalf("killed at %s: outcome %q booted %s, want rolled back to a", kp.name, outcome, booted)
	case !wantRollback && booted != firmware.SlotB:
		t.Fatalf("killed at %s: outcome %q booted %s, want the new slot b committed", kp.name, outcome, booted)
	}
	if !wantRollback {
		// Committed means the bootloader keeps booting b.
		if s := r.powerOn(t, factorySum, img); s != firmware.SlotB {
			t.Fatalf("killed at %s: the boot after the commit chose %s", kp.name, s)
		}
		if !slices.Contains([]string{string(install.Committed), "current"}, outcome) && outcome != "" {
			t.Fatalf("killed at %s: outcome %q, want committed", kp.name, outcome)
		}
		outcome = string(install.Committed)
	}
	return outcome, resumed
}

// selfCommand runs this test binary again. Under user-mode emulation (make
// test-armv7 sets AFTERCARE_TEST_EXEC=qemu-arm-static) the kernel cannot
// run the binary by itself, so the child goes through the same emulator.
func selfCommand(args ...string) *exec.Cmd {
	if wrap := os.Getenv("AFTERCARE_TEST_EXEC"); wrap != "" {
		return exec.Command(wrap, append([]string{os.Args[0]}, args...)...)
	}
	return exec.Command(os.Args[0], args...)
}
