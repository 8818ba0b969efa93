package install

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/aftercare/aftercare/firmware"
)

// How a write resumes.
//
// Every CheckpointBytes of raw image, at the first frame boundary after
// it, the writer fsyncs the slot and then atomically replaces
// install-checkpoint.json with the boundary: stored and raw offsets and
// the states of both SHA-256 hashes, with the job it belongs to. Whatever
// the slot held past that offset when the power failed does not matter: it
// is written again. A later Install of the same job into the same slot
// requests the stored image from the checkpoint's offset (an HTTP Range
// request), restores both hashes, seeks the slot to the raw offset and
// goes on; the digests checked at the end still cover the whole image. A
// server that ignores the Range and sends the whole image restarts the
// hashes from zero. A gzip image has no boundary and restarts from zero.
// The checkpoint is the only extra disk an install uses (under 1 KiB).

// checkpointFormat is the format version of install-checkpoint.json.
const checkpointFormat = 1

// maxStalledAttempts is how many downloads in a row may fail without
// saving a new checkpoint before Install gives up until the next check.
const maxStalledAttempts = 2

// readBackBytes is the read size of the read-back.
const readBackBytes = 1 << 20 // 1 MiB

// A checkpoint is a point of a write that is durable in the slot.
type checkpoint struct {
	Format int               `json:"format"`
	Slot   firmware.Slot     `json:"slot"`
	Target string            `json:"target"`
	Image  firmware.Image    `json:"image"` // the signed description the hashes are checked against
	At     firmware.Position `json:"at"`
	Saved  time.Time         `json:"saved"`
}

// Fetch opens the stored image from byte offset of the stored stream. It
// returns the body and the offset the body really starts at, which is 0
// when the server ignored the request for a range. The body must deliver
// no more than the signed length, or StreamImage refuses it.
type Fetch func(ctx context.Context, offset int64) (body io.ReadCloser, start int64, err error)

func (i *Installer) checkpointPath() string {
	return filepath.Join(i.opts.Dir, "install-checkpoint.json")
}

// checkpointFor returns the saved checkpoint when it belongs to job in slot
// and can be resumed from.
func (i *Installer) checkpointFor(slot firmware.Slot, job Job) (checkpoint, bool) {
	var c checkpoint
	if err := readJSON(i.checkpointPath(), &c); err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			i.opts.Log.Warn("install checkpoint unreadable; the write starts over", "err", err)
		}
		return c, false
	}
	if c.Format != checkpointFormat || c.Slot != slot || c.Target != job.Target || c.Image != job.Image {
		return c, false
	}
	if err := c.At.Check(job.Image); err != nil || c.At.Stored == 0 {
		i.opts.Log.Warn("install checkpoint invalid; the write starts over", "err", err)
		return c, false
	}
	return c, true
}

func (i *Installer) clearCheckpoint() error {
	if err := os.Remove(i.checkpointPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove install checkpoint: %w", err)
	}
	return nil
}

// Write streams the stored image from r into the inactive slot, as Install
// does with a source that cannot resume.
func (i *Installer) Write(ctx context.Context, r io.Reader, job Job) (firmware.Slot, error) {
	used := false
	fetch := func(context.Context, int64) (io.ReadCloser, int64, error) {
		if used {
			return nil, 0, errors.New("the image source cannot be read twice")
		}
		used = true
		return io.NopCloser(r), 0, nil
	}
	return i.Install(ctx, fetch, job)
}

// Install streams the stored image into the inactive slot, verifying
// lengths and digests while it streams, then fsyncs and reads the slot
// back. It resumes from the checkpoint of an earlier, interrupted Install
// of the same job, and after a download that fails or ends early it
// fetches again from the last checkpoint (while attempts make progress).
//
// On a mismatch or a slot failure the journal and checkpoint are cleared;
// after a download failure they stay, and the next Install resumes. Either
// way the slot is left marked invalid and the bootloader untouched.
func (i *Installer) Install(ctx context.Context, fetch Fetch, job Job) (firmware.Slot, error) {
	booted, err := i.opts.Boot.Booted()
	if err != nil {
		return "", err
	}
	slot := booted.Other()
	log := i.opts.Log.With("target", job.Target, "slot", slot)
	var from firmware.Position
	var j journal
	c, resume := i.checkpointFor(slot, job)
	if resume && readJSON(i.journalPath(), &j) == nil && j.Phase == PhaseWriting && j.Slot == slot &&
		j.Job.Target == job.Target && j.Job.Image == job.Image {
		from = c.At
		log.Info("install resumes", "stored_offset", from.Stored, "raw_offset", from.Raw)
		// Arm may have recorded the slot before a power cut; it is being
		// rewritten, so it is not valid until the read-back passes again.
		if err := i.setSlot(slot, nil); err != nil {
			return "", err
		}
	} else {
		if err := i.clearCheckpoint(); err != nil {
			return "", err
		}
		// Clear the slot's status before its first byte changes: from
		// here until the read-back passes, nothing may treat it as valid.
		if err := i.setSlot(slot, nil); err != nil {
			return "", err
		}
		if err := writeJSON(i.journalPath(), journal{Format: stateFormat, Phase: PhaseWriting, Slot: slot, Job: job, Started: i.opts.Now()}); err != nil {
			return "", err
		}
	}
	i.hook(PointJournal)
	err = i.writeSlot(ctx, slot, fetch, job, from)
	if err == nil {
		err = i.readBack(ctx, slot, job.Image)
	}
	if err != nil {
		// A download that failed, or an agent that is stopping, leaves
		// the checkpoint for the next Install.
		if !resumable(err) && ctx.Err() == nil {
			i.clearJournal()
		}
		return "", err
	}
	i.hook(PointVerified)
	// Record the verified image, so an agent that restarts while the
	// install waits for its window arms it without downloading it again.
	if err := writeJSON(i.journalPath(), journal{Format: stateFormat, Phase: PhaseVerified, Slot: slot, Job: job, Started: i.opts.Now()}); err != nil {
		return "", err
	}
	if err := i.clearCheckpoint(); err != nil {
		return "", err
	}
	return slot, nil
}

// resumable tells whether a failed write can go on from its checkpoint:
// the source failed or stopped early, which says nothing against the bytes
// already written. A fetch refused for contradicting the signed
// description (firmware.ErrMismatch) is not.
func resumable(err error) bool {
	var re *firmware.ReadError
	var fe *fetchError
	switch {
	case errors.Is(err, firmware.ErrTruncated):
		return true
	case errors.Is(err, firmware.ErrMismatch):
		return false
	}
	return errors.As(err, &re) || errors.As(err, &fe)
}

// incomplete is the error of a download given up after attempts without
// progress. A stream that ended early is not reported as a mismatch (it
// proves nothing against the image); a source error stays wrapped, so the
// caller can tell slow retrieval.
func incomplete(job Job, saved firmware.Position, err error) error {
	next := "the next install starts over"
	if saved.Stored > 0 {
		next = fmt.Sprintf("%d of %d bytes are saved and the next install resumes there", saved.Stored, job.Image.Length)
	}
	if errors.Is(err, firmware.ErrTruncated) {
		return fmt.Errorf("download of %s stopped %d times without progress; %s: %v", job.Target, maxStalledAttempts, next, err)
	}
	return fmt.Errorf("download of %s stopped %d times without progress; %s: %w", job.Target, maxStalledAttempts, next, err)
}

// A fetchError is a Fetch that failed before any image byte arrived.
type fetchError struct{ err error }

func (e *fetchError) Error() string { return e.err.Error() }
func (e *fetchError) Unwrap() error { return e.err }

func (i *Installer) openSlot(path string) (SlotFile, error) {
	if i.opts.Open != nil {
		return i.opts.Open(path)
	}
	return os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640)
}

// writeSlot writes the image from position from, fetching again from the
// last checkpoint while attempts make progress.
func (i *Installer) writeSlot(ctx context.Context, slot firmware.Slot, fetch Fetch, job Job, from firmware.Position) error {
	f, err := i.openSlot(i.opts.Slots[slot])
	if err != nil {
		return fmt.Errorf("open slot %s: %w", slot, err)
	}
	defer f.Close()
	w := &slotWriter{i: i, f: f, slot: slot, job: job, saved: from}
	for stalled := 0; ; {
		before := w.saved.Stored
		err := w.attempt(ctx, fetch, w.saved)
		if err == nil {
			break
		}
		if w.saved.Stored > before {
			stalled = 0
		} else {
			stalled++
		}
		if !resumable(err) || ctx.Err() != nil {
			return err
		}
		if stalled >= maxStalledAttempts {
			return incomplete(job, w.saved, err)
		}
		i.opts.Log.Warn("download interrupted; resuming from the last checkpoint", "target", job.Target, "stored_offset", w.saved.Stored, "err", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync slot %s: %w", slot, err)
	}
	i.hook(PointWritten)
	if err := f.Close(); err != nil {
		return fmt.Errorf("close slot %s: %w", slot, err)
	}
	return nil
}

// A slotWriter is one write of an image into a slot and its checkpoints.
type slotWriter struct {
	i     *Installer
	f     SlotFile
	slot  firmware.Slot
	job   Job
	saved firmware.Position // the last durable checkpoint, or where the write began
}

// attempt fetches the stored image from pos and streams it into the slot.
func (w *slotWriter) attempt(ctx context.Context, fetch Fetch, pos firmware.Position) error {
	body, start, err := fetch(ctx, pos.Stored)
	if err != nil {
		return &fetchError{err}
	}
	defer body.Close()
	w.i.hook(PointFetched)
	if start != pos.Stored {
		if start != 0 {
			return fmt.Errorf("download from byte %d started at byte %d instead", pos.Stored, start)
		}
		// RFC 9110 §14.2: a server may ignore Range and send 200 with the
		// whole body, so the hashes restart from zero.
		w.i.opts.Log.Info("server ignored the range request; the write starts over", "target", w.job.Target, "stored_offset", pos.Stored)
		pos = firmware.Position{}
	}
	if _, err := w.f.Seek(pos.Raw, io.SeekStart); err != nil {
		return fmt.Errorf("seek slot %s to byte %d: %w", w.slot, pos.Raw, err)
	}
	opts := firmware.StreamOptions{AtBoundary: w.atBoundary}
	if pos.Stored > 0 {
		opts.From = &pos
	}
	if err := firmware.StreamImage(ctx, w.f, body, w.job.Image, opts); err != nil {
		return fmt.Errorf("slot %s: %w", w.slot, err)
	}
	return nil
}

// atBoundary saves a checkpoint when CheckpointBytes were written since
// the last: sync the slot first, so the checkpoint never claims bytes the
// slot may lose.
func (w *slotWriter) atBoundary(p firmware.Position) error {
	w.i.hook(PointFrame)
	if p.Raw-w.saved.Raw < w.i.opts.CheckpointBytes {
		return nil
	}
	if err := w.f.Sync(); err != nil {
		return fmt.Errorf("sync slot %s: %w", w.slot, err)
	}
	w.i.hook(PointSlotSynced)
	c := checkpoint{Format: checkpointFormat, Slot: w.slot, Target: w.job.Target, Image: w.job.Image, At: p, Saved: w.i.opts.Now()}
	if err := writeJSON(w.i.checkpointPath(), c); err != nil {
		return fmt.Errorf("save install checkpoint: %w", err)
	}
	w.saved = p
	w.i.hook(PointCheckpoint)
	return nil
}

// readBack hashes what the slot holds now, catching writes the medium lost.
func (i *Installer) readBack(ctx context.Context, slot firmware.Slot, img firmware.Image) error {
	f, err := i.openSlot(i.opts.Slots[slot])
	if err != nil {
		return fmt.Errorf("open slot %s for read-back: %w", slot, err)
	}
	defer f.Close()
	h := sha256.New()
	buf := make([]byte, readBackBytes)
	var n int64
	for n < img.RawLength {
		if err := ctx.Err(); err != nil {
			return err
		}
		k, err := io.ReadFull(f, buf[:min(int64(len(buf)), img.RawLength-n)])
		h.Write(buf[:k])
		n += int64(k)
		if err != nil {
			if err == io.ErrUnexpectedEOF || err == io.EOF {
				break
			}
			return fmt.Errorf("read back slot %s: %w", slot, err)
		}
		i.hook(PointReadBack)
	}
	if got := hex.EncodeToString(h.Sum(nil)); n != img.RawLength || got != img.RawSHA256 {
		return fmt.Errorf("read back slot %s: %d bytes with sha256 %s, wrote %d with %s; the storage did not keep what was written",
			slot, n, got, img.RawLength, img.RawSHA256)
	}
	return nil
}
