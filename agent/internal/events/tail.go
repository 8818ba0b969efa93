package events

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"

	"github.com/aftercare/aftercare/internal/atomicfile"
	"github.com/aftercare/aftercare/protocol"
)

// maxLine bounds one line of a tailed file; a longer line is cut.
const maxLine = 8 << 10 // 8 KiB

const tailStateFormat = 1

// tailState is where a Tail stopped, persisted so a restart neither
// repeats nor skips lines.
type tailState struct {
	Format int    `json:"format"`
	Inode  uint64 `json:"inode"`
	Offset int64  `json:"offset"`
}

// Tail follows a log file line by line, each line one event. It follows
// rotation (a new file under the path: the rest of the old one is read
// first) and truncation (the file got shorter: read again from the start).
// It is a Source; Poll is one step of Run.
type Tail struct {
	path      string
	statePath string
	app       string
	interval  time.Duration
	now       func() time.Time

	f       *os.File
	st      tailState
	partial []byte
}

// TailOptions configures a Tail.
type TailOptions struct {
	Path      string        // the file to follow; required
	StatePath string        // where the position is kept; required
	App       string        // the "app" field of its events; may be empty
	Interval  time.Duration // poll interval; default 1s
	Now       func() time.Time
}

// NewTail returns a Tail. A file seen for the first time is read from its
// end: old lines are history, not new events.
func NewTail(opts TailOptions) (*Tail, error) {
	if opts.Path == "" || opts.StatePath == "" {
		return nil, errors.New("events: Tail needs Path and StatePath")
	}
	if opts.Interval <= 0 {
		opts.Interval = time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	t := &Tail{path: opts.Path, statePath: opts.StatePath, app: opts.App, interval: opts.Interval, now: opts.Now}
	b, err := os.ReadFile(opts.StatePath)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if fi, err := os.Stat(opts.Path); err == nil {
			t.st = tailState{Format: tailStateFormat, Inode: inode(fi), Offset: fi.Size()}
		}
	case err != nil:
		return nil, fmt.Errorf("read tail state: %w", err)
	default:
		if err := json.Unmarshal(b, &t.st); err != nil || t.st.Format != tailStateFormat {
			return nil, fmt.Errorf("tail state %s is damaged or of another format", opts.StatePath)
		}
	}
	return t, nil
}

// Name implements Source.
func (t *Tail) Name() string { return "file " + t.path }

// Run implements Source.
func (t *Tail) Run(ctx context.Context, emit Emit) error {
	defer t.close()
	for {
		if err := t.Poll(emit); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(t.interval):
		}
	}
}

func (t *Tail) close() {
	if t.f != nil {
		t.f.Close()
		t.f = nil
	}
}

func inode(fi os.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}

// Poll emits the complete lines written since the last call.
func (t *Tail) Poll(emit Emit) error {
	if t.f != nil {
		// Finish the open file first: after a rotation its last lines are
		// only reachable through this handle.
		if err := t.readAll(emit); err != nil {
			return err
		}
	}
	fi, err := os.Stat(t.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil // rotated away and not yet recreated
	}
	if err != nil {
		return fmt.Errorf("stat %s: %w", t.path, err)
	}
	switch {
	case t.f == nil || inode(fi) != t.st.Inode:
		t.close()
		f, err := os.Open(t.path)
		if err != nil {
			return fmt.Errorf("open %s: %w", t.path, err)
		}
		ofi, err := f.Stat()
		if err != nil {
			f.Close()
			return fmt.Errorf("stat %s: %w", t.path, err)
		}
		if inode(ofi) != t.st.Inode || ofi.Size() < t.st.Offset {
			t.st = tailState{Format: tailStateFormat, Inode: inode(ofi)}
			t.partial = nil
		}
		if _, err := f.Seek(t.st.Offset, io.SeekStart); err != nil {
			f.Close()
			return fmt.Errorf("seek %s: %w", t.path, err)
		}
		t.f = f
	case fi.Size() < t.st.Offset:
		// Truncated in place (copytruncate): start over.
		if _, err := t.f.Seek(0, io.SeekStart); err != nil {
			return fmt.Errorf("seek %s: %w", t.path, err)
		}
		t.st.Offset, t.partial = 0, nil
	}
	return t.readAll(emit)
}

func (t *Tail) readAll(emit Emit) error {
	buf := make([]byte, 32<<10)
	emitted := false
	for {
		n, err := t.f.Read(buf)
		if n > 0 {
			t.st.Offset += int64(n)
			t.lines(buf[:n], emit)
			emitted = true
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", t.path, err)
		}
	}
	if !emitted {
		return nil
	}
	b, _ := json.Marshal(t.st)
	if err := atomicfile.WriteFile(t.statePath, b, 0o600); err != nil {
		return fmt.Errorf("save tail state: %w", err)
	}
	return nil
}

// lines emits every complete line in partial+b and keeps the rest. The
// offset saved counts a partial line as read; it is small, and a crash
// mid-line loses at most that line's start.
func (t *Tail) lines(b []byte, emit Emit) {
	t.partial = append(t.partial, b...)
	for {
		i := bytes.IndexByte(t.partial, '\n')
		if i < 0 {
			if len(t.partial) > maxLine {
				t.emitLine(t.partial[:maxLine], emit)
				t.partial = nil
			}
			return
		}
		if line := bytes.TrimRight(t.partial[:i], "\r"); len(line) > 0 {
			t.emitLine(line[:min(len(line), maxLine)], emit)
		}
		t.partial = t.partial[i+1:]
	}
}

func (t *Tail) emitLine(line []byte, emit Emit) {
	e := Classify(protocol.SourceFile, t.app, string(line), protocol.CategoryApp, protocol.SeverityNotice)
	e.Time = t.now()
	emit(e)
}
