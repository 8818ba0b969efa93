// Package install writes a verified image into the inactive slot of an A/B
// device and carries the install across the reboot.
//
// The order of steps is what keeps a device bootable whatever instant the
// power fails:
//
//  1. The install journal records "writing" and the target slot's status is
//     cleared, so a crash mid-write can never leave the slot looking valid.
//  2. The image streams into the inactive slot (decode, hash, write), is
//     fsynced, and read back and hashed again. Every CheckpointBytes, at a
//     frame boundary, the slot is fsynced and a checkpoint saved, so a
//     dropped connection or a restart resumes there (see write.go).
//  3. Only then is the slot's status set and the journal moved to "armed",
//     and the bootloader told to try the slot once.
//  4. After the reboot, AfterBoot sees which slot booted: the new one runs
//     the health check and commits, or the bootloader fell back and the
//     install is reported rolled back.
//
// The running slot is never opened for writing. Until TryOnce the
// bootloader boots the running slot; after it, a failed boot falls back.
package install

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/aftercare/aftercare/firmware"
	"github.com/aftercare/aftercare/internal/atomicfile"
)

// A Bootloader chooses which slot the device boots.
// Implementations live in agent/internal/boot.
type Bootloader interface {
	// Booted returns the slot the running system booted from.
	Booted() (firmware.Slot, error)
	// TryOnce makes the next boot, and only the next boot, use s.
	TryOnce(s firmware.Slot) error
	// Commit makes s, the running slot, the default.
	Commit(s firmware.Slot) error
}

// stateFormat is the format version of the journal and slot status files.
const stateFormat = 1

// Phase is where an install stands in the journal.
type Phase string

// The phases an install passes through.
const (
	PhaseWriting      Phase = "writing"       // the slot is being overwritten
	PhaseVerified     Phase = "verified"      // written and read back; waits to be armed (maintenance window, busy device)
	PhaseArmed        Phase = "armed"         // verified, the bootloader will try it once
	PhaseHealthFailed Phase = "health-failed" // booted but unhealthy; waiting for the fallback boot
)

// A Job describes one install.
type Job struct {
	RolloutID string         `json:"rollout_id"`
	Target    string         `json:"target"` // TUF target path
	Version   string         `json:"version"`
	Image     firmware.Image `json:"image"`
}

// journal is the install in progress, persisted across reboots.
type journal struct {
	Format  int           `json:"format"`
	Phase   Phase         `json:"phase"`
	Slot    firmware.Slot `json:"slot"`
	Job     Job           `json:"job"`
	Reason  string        `json:"reason,omitempty"` // why, for PhaseHealthFailed
	Started time.Time     `json:"started"`
}

// SlotInfo is what the agent knows about a slot's contents.
type SlotInfo struct {
	Version   string    `json:"version"`
	RawSHA256 string    `json:"raw_sha256,omitempty"`
	Installed time.Time `json:"installed,omitempty"`
}

type slotStatus struct {
	Format int                        `json:"format"`
	Slots  map[firmware.Slot]SlotInfo `json:"slots"`
}

// Options configures an Installer.
type Options struct {
	Boot  Bootloader               // required
	Slots map[firmware.Slot]string // device or file path of each slot; required
	Dir   string                   // state directory for the journal, checkpoint and slot status; required
	Log   *slog.Logger             // required
	Now   func() time.Time         // nil means time.Now
	// CheckpointBytes is how much raw image is written between
	// checkpoints (each one an fsync of the slot and a small file); 0
	// means DefaultCheckpointBytes.
	CheckpointBytes int64
	// Open opens a slot for reading and writing; nil opens the slot path.
	// For tests only.
	Open func(path string) (SlotFile, error)
	// Hook, when not nil, is called at each named point of an install
	// (see the Point constants) so a test can stop the process there.
	// Calls never overlap, but PointFrame, PointSlotSynced and
	// PointCheckpoint come from the goroutine writing the slot. For tests
	// only.
	Hook func(Point)
}

// DefaultCheckpointBytes is the default distance between checkpoints.
const DefaultCheckpointBytes = 32 << 20 // 32 MiB

// A SlotFile is an open slot: a block device or, in tests, a file.
type SlotFile interface {
	io.ReadWriteSeeker
	io.Closer
	Sync() error
}

// A Point names a step of an install, for Options.Hook.
type Point string

// The points at which an install calls Options.Hook, in order.
const (
	PointJournal      Point = "journal"       // the journal says "writing"; the slot is not touched yet
	PointFetched      Point = "fetched"       // a download (or its resumption) answered
	PointFrame        Point = "frame"         // a frame boundary: its bytes are written, not synced
	PointSlotSynced   Point = "slot-synced"   // the slot is synced up to a checkpoint, not yet recorded
	PointCheckpoint   Point = "checkpoint"    // a checkpoint file is written
	PointWritten      Point = "written"       // the whole image is written and synced
	PointReadBack     Point = "read-back"     // a chunk of the slot was read back
	PointVerified     Point = "verified"      // the read-back matched
	PointSlotRecorded Point = "slot-recorded" // Arm: slots.json holds the new slot
	PointArmed        Point = "armed"         // Arm: the journal says "armed"; TryOnce comes next
	PointTried        Point = "tried"         // Arm: TryOnce returned
	PointHealthy      Point = "healthy"       // AfterBoot: the health check passed; Commit comes next
	PointCommitted    Point = "committed"     // AfterBoot: the bootloader committed; the journal is still there
	PointFinished     Point = "finished"      // AfterBoot: the journal is gone
)

func (i *Installer) hook(p Point) {
	if i.opts.Hook != nil {
		i.opts.Hook(p)
	}
}

// Installer installs images into the inactive slot. It is not safe for
// concurrent use; the agent runs one install at a time.
type Installer struct {
	opts Options
}

// New returns an Installer. factoryVersion names the version of the booted
// slot when no slot status exists yet (the first start after manufacture).
func New(opts Options, factoryVersion string) (*Installer, error) {
	if opts.Boot == nil || opts.Slots[firmware.SlotA] == "" || opts.Slots[firmware.SlotB] == "" || opts.Dir == "" || opts.Log == nil {
		return nil, errors.New("install: Boot, both Slots, Dir and Log are required")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.CheckpointBytes <= 0 {
		opts.CheckpointBytes = DefaultCheckpointBytes
	}
	i := &Installer{opts: opts}
	if _, err := os.Stat(i.statusPath()); errors.Is(err, os.ErrNotExist) {
		booted, err := opts.Boot.Booted()
		if err != nil {
			return nil, err
		}
		st := slotStatus{Format: stateFormat, Slots: map[firmware.Slot]SlotInfo{booted: {Version: factoryVersion}}}
		if err := i.writeStatus(st); err != nil {
			return nil, err
		}
	}
	return i, nil
}

func (i *Installer) statusPath() string  { return filepath.Join(i.opts.Dir, "slots.json") }
func (i *Installer) journalPath() string { return filepath.Join(i.opts.Dir, "install.json") }

func (i *Installer) readStatus() (slotStatus, error) {
	var st slotStatus
	if err := readJSON(i.statusPath(), &st); err != nil {
		return st, err
	}
	if st.Format != stateFormat {
		return st, fmt.Errorf("slot status %s has format %d, want %d", i.statusPath(), st.Format, stateFormat)
	}
	if st.Slots == nil {
		st.Slots = map[firmware.Slot]SlotInfo{}
	}
	return st, nil
}

func (i *Installer) writeStatus(st slotStatus) error { return writeJSON(i.statusPath(), st) }

func (i *Installer) setSlot(s firmware.Slot, info *SlotInfo) error {
	st, err := i.readStatus()
	if err != nil {
		return err
	}
	if info == nil {
		delete(st.Slots, s)
	} else {
		st.Slots[s] = *info
	}
	return i.writeStatus(st)
}

// Running returns the booted slot and what it holds.
func (i *Installer) Running() (firmware.Slot, SlotInfo, error) {
	booted, err := i.opts.Boot.Booted()
	if err != nil {
		return "", SlotInfo{}, err
	}
	st, err := i.readStatus()
	if err != nil {
		return "", SlotInfo{}, err
	}
	return booted, st.Slots[booted], nil
}

// Arm records the verified slot's contents and tells the bootloader to try
// it once. After Arm the device must reboot.
func (i *Installer) Arm(slot firmware.Slot, job Job) error {
	if err := i.setSlot(slot, &SlotInfo{Version: job.Version, RawSHA256: job.Image.RawSHA256, Installed: i.opts.Now()}); err != nil {
		return err
	}
	i.hook(PointSlotRecorded)
	if err := writeJSON(i.journalPath(), journal{Format: stateFormat, Phase: PhaseArmed, Slot: slot, Job: job, Started: i.opts.Now()}); err != nil {
		return err
	}
	i.hook(PointArmed)
	// The checkpoint served the write, which is over.
	if err := i.clearCheckpoint(); err != nil {
		return err
	}
	// Power loss before this line boots the old slot, which is still
	// primary; the journal then reads "armed" with the old slot booted,
	// which AfterBoot reports as a rollback.
	if err := i.opts.Boot.TryOnce(slot); err != nil {
		return err
	}
	i.hook(PointTried)
	return nil
}

// Outcome says what AfterBoot found.
type Outcome struct {
	Kind   OutcomeKind
	Job    Job
	Reason string // for Unhealthy, RolledBack and Interrupted
	// Resume is set for Interrupted when a checkpoint was saved: Install
	// of the same job continues from it.
	Resume bool
}

// OutcomeKind is the result of an install seen after a boot.
type OutcomeKind string

// The outcomes AfterBoot reports.
const (
	NoInstall   OutcomeKind = ""            // nothing was in progress
	Committed   OutcomeKind = "committed"   // booted the new slot, healthy, committed
	Unhealthy   OutcomeKind = "unhealthy"   // booted the new slot, health check failed: reboot to fall back
	RolledBack  OutcomeKind = "rolled-back" // the bootloader booted the old slot
	Interrupted OutcomeKind = "interrupted" // the agent stopped while writing the slot
	Waiting     OutcomeKind = "waiting"     // a verified image waits in the inactive slot to be armed
)

// AfterBoot finishes an install the journal says was in progress: it runs
// health on the new slot and commits it, or reports the fallback. health is
// called only when the new slot booted.
//
// Whenever the booted slot is not a trial, AfterBoot commits it again:
// RAUC's "mark good". U-Boot's and GRUB's boot scripts count every boot
// of the committed slot, and fall back once it has not been marked good
// for its attempts.
func (i *Installer) AfterBoot(ctx context.Context, health func(context.Context, Job) error) (Outcome, error) {
	var j journal
	if err := readJSON(i.journalPath(), &j); errors.Is(err, os.ErrNotExist) {
		return Outcome{}, i.markGood()
	} else if err != nil {
		return Outcome{}, err
	}
	booted, err := i.opts.Boot.Booted()
	if err != nil {
		return Outcome{}, err
	}
	out := Outcome{Job: j.Job}
	switch {
	case j.Phase == PhaseWriting:
		// The slot's status was cleared before writing began.
		out.Kind, out.Reason = Interrupted, "the agent stopped while writing slot "+string(j.Slot)
		if booted != j.Slot {
			if err := i.markGood(); err != nil {
				return Outcome{}, err
			}
		}
		if c, ok := i.checkpointFor(j.Slot, j.Job); ok && booted != j.Slot {
			// Keep the journal and the checkpoint: the next Install of
			// this job goes on from there.
			out.Resume = true
			out.Reason += fmt.Sprintf("; %d of %d bytes are saved and the install resumes from there", c.At.Stored, j.Job.Image.Length)
			i.opts.Log.Info("install interrupted", "target", j.Job.Target, "slot", j.Slot, "resume_from", c.At.Stored)
			return out, nil
		}
	case j.Phase == PhaseVerified && booted != j.Slot:
		// The agent restarted (or the old slot rebooted) while a written
		// image waited for its window: keep it, Written checks it again.
		if err := i.markGood(); err != nil {
			return Outcome{}, err
		}
		out.Kind, out.Reason = Waiting, "slot "+string(j.Slot)+" holds the verified image and waits to be armed"
		i.opts.Log.Info("verified install waits", "target", j.Job.Target, "slot", j.Slot)
		return out, nil
	case booted != j.Slot:
		out.Kind = RolledBack
		out.Reason = j.Reason
		if out.Reason == "" {
			out.Reason = fmt.Sprintf("the bootloader booted slot %s instead of the new slot %s", booted, j.Slot)
		}
		// The new slot failed; never let it look installable again.
		if err := i.setSlot(j.Slot, nil); err != nil {
			return Outcome{}, err
		}
		if err := i.markGood(); err != nil {
			return Outcome{}, err
		}
	case j.Phase == PhaseHealthFailed:
		// Still on the new slot after a failed health check: the
		// fallback reboot has not happened yet.
		return Outcome{Kind: Unhealthy, Job: j.Job, Reason: j.Reason}, nil
	default:
		if err := health(ctx, j.Job); err != nil {
			j.Phase, j.Reason = PhaseHealthFailed, "health check failed on slot "+string(j.Slot)+": "+err.Error()
			if err := writeJSON(i.journalPath(), j); err != nil {
				return Outcome{}, err
			}
			return Outcome{Kind: Unhealthy, Job: j.Job, Reason: j.Reason}, nil
		}
		i.hook(PointHealthy)
		if err := i.opts.Boot.Commit(booted); err != nil {
			return Outcome{}, fmt.Errorf("commit slot %s: %w", booted, err)
		}
		i.hook(PointCommitted)
		out.Kind = Committed
	}
	if err := i.clearJournal(); err != nil {
		return Outcome{}, err
	}
	i.hook(PointFinished)
	i.opts.Log.Info("install finished", "outcome", out.Kind, "target", j.Job.Target, "reason", out.Reason)
	return out, nil
}

// markGood commits the booted slot again, which re-arms the bootloader's
// boot counter for it.
func (i *Installer) markGood() error {
	booted, err := i.opts.Boot.Booted()
	if err != nil {
		return err
	}
	if err := i.opts.Boot.Commit(booted); err != nil {
		return fmt.Errorf("mark slot %s good: %w", booted, err)
	}
	return nil
}

// clearJournal ends the install on disk: the checkpoint first, so a crash
// between the two never leaves a checkpoint without its journal.
func (i *Installer) clearJournal() error {
	if err := i.clearCheckpoint(); err != nil {
		return err
	}
	if err := os.Remove(i.journalPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove install journal: %w", err)
	}
	return atomicfile.SyncDir(i.opts.Dir)
}

// Abandon drops an interrupted write (its journal and checkpoint), or a
// verified image waiting to be armed, that no install will use, for when
// the assignment changed or went away. It leaves an armed or booted
// install alone.
func (i *Installer) Abandon() error {
	var j journal
	if err := readJSON(i.journalPath(), &j); err != nil || (j.Phase != PhaseWriting && j.Phase != PhaseVerified) {
		return nil
	}
	i.opts.Log.Info("unarmed install abandoned", "phase", j.Phase, "target", j.Job.Target, "slot", j.Slot)
	return i.clearJournal()
}

// Written returns the inactive slot when an earlier Install, before the
// agent restarted, left job's image there verified and waiting to be
// armed, and the slot still reads back as that image. Otherwise it drops
// the stale record and the caller installs again.
func (i *Installer) Written(ctx context.Context, job Job) (firmware.Slot, bool) {
	var j journal
	if err := readJSON(i.journalPath(), &j); err != nil || j.Phase != PhaseVerified {
		return "", false
	}
	booted, err := i.opts.Boot.Booted()
	if err != nil || j.Slot != booted.Other() || j.Job.Target != job.Target || j.Job.Image != job.Image {
		return "", false
	}
	if err := i.readBack(ctx, j.Slot, job.Image); err != nil {
		i.opts.Log.Warn("the waiting image no longer reads back; it is downloaded again", "target", job.Target, "slot", j.Slot, "err", err)
		if err := i.clearJournal(); err != nil {
			i.opts.Log.Warn("cannot drop the waiting install", "err", err)
		}
		return "", false
	}
	return j.Slot, true
}

// maxStateBytes bounds the agent's own state files.
const maxStateBytes = 1 << 20 // 1 MiB

func readJSON(path string, v any) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxStateBytes+1))
	if err != nil {
		return err
	}
	if len(b) > maxStateBytes {
		return fmt.Errorf("%s is larger than %d bytes", path, maxStateBytes)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(path, b, 0o600)
}
