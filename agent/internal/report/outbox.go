// Package report delivers the agent's state reports to the server.
//
// Every report is first appended to an on-disk outbox: one fsynced file per
// report, named by its sequence number, so a report the agent logged
// survives a crash, a reboot or weeks offline. A sender publishes the
// outbox in sequence order over MQTT with QoS 1 and deletes a file only
// after the broker acknowledged it. The server de-duplicates on (device,
// sequence), so a report sent twice after a crash counts once.
//
// The outbox is bounded: when a new report would exceed the byte budget,
// the oldest reports are dropped, and the number dropped travels in the
// next report so the loss itself is reported.
package report

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aftercare/aftercare/internal/atomicfile"
	"github.com/aftercare/aftercare/protocol"
)

// DefaultMaxBytes is the outbox budget unless configured otherwise.
const DefaultMaxBytes = 4 << 20 // 4 MiB

const counterFormat = 1

// counter is the outbox's persisted bookkeeping.
type counter struct {
	Format  int    `json:"format"`
	LastSeq uint64 `json:"last_seq"` // highest sequence number ever assigned
	Dropped uint64 `json:"dropped"`  // reports dropped and not yet reported
}

// Outbox is the agent's on-disk queue of reports. It is safe for concurrent
// use by the goroutines of one process.
type Outbox struct {
	dir      string
	maxBytes int64
	notify   chan struct{}

	mu sync.Mutex
	c  counter // guarded by mu
}

// OpenOutbox opens or creates the outbox in dir with a byte budget.
func OpenOutbox(dir string, maxBytes int64) (*Outbox, error) {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxBytes
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	o := &Outbox{dir: dir, maxBytes: maxBytes, notify: make(chan struct{}, 1)}
	b, err := os.ReadFile(o.counterPath())
	switch {
	case errors.Is(err, os.ErrNotExist):
		o.c = counter{Format: counterFormat}
	case err != nil:
		return nil, err
	default:
		if err := json.Unmarshal(b, &o.c); err != nil || o.c.Format != counterFormat {
			return nil, fmt.Errorf("outbox counter %s is damaged or of another format", o.counterPath())
		}
	}
	// A crash between writing a report and the counter leaves the files
	// ahead of the counter; never reuse a sequence number.
	seqs, err := o.seqs()
	if err != nil {
		return nil, err
	}
	if n := len(seqs); n > 0 && seqs[n-1].seq > o.c.LastSeq {
		o.c.LastSeq = seqs[n-1].seq
	}
	return o, nil
}

func (o *Outbox) counterPath() string { return filepath.Join(o.dir, "counter.json") }

// eventSuffix marks an entry holding a protocol.Event; other entries hold
// a protocol.StateReport.
const eventSuffix = ".event"

func (o *Outbox) entryPath(seq uint64) string {
	return filepath.Join(o.dir, fmt.Sprintf("%020d.json", seq))
}

func (o *Outbox) eventPath(seq uint64) string {
	return filepath.Join(o.dir, fmt.Sprintf("%020d%s.json", seq, eventSuffix))
}

func (o *Outbox) path(seq uint64, kind string) string {
	if kind == protocol.KindEvents {
		return o.eventPath(seq)
	}
	return o.entryPath(seq)
}

// queued is one entry file: its sequence number and topic kind.
type queued struct {
	seq  uint64
	kind string
}

// seqs lists the queued entries in sequence order.
func (o *Outbox) seqs() ([]queued, error) {
	entries, err := os.ReadDir(o.dir)
	if err != nil {
		return nil, err
	}
	var out []queued
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok {
			continue
		}
		kind := protocol.KindState
		if n, ok := strings.CutSuffix(name, eventSuffix); ok {
			name, kind = n, protocol.KindEvents
		}
		if len(name) != 20 {
			continue
		}
		if seq, err := strconv.ParseUint(name, 10, 64); err == nil {
			out = append(out, queued{seq, kind})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].seq < out[j].seq })
	return out, nil
}

// Notify is signalled after every Append.
func (o *Outbox) Notify() <-chan struct{} { return o.notify }

// Append assigns the next sequence number and time to r, stores it durably
// and returns it. The oldest reports and events are dropped if the outbox
// would exceed its budget.
func (o *Outbox) Append(r protocol.StateReport, now time.Time) (protocol.StateReport, error) {
	r.Format = protocol.Format
	r.Time = now.UTC()
	err := o.append(protocol.KindState, func(seq, dropped uint64) any {
		r.Seq, r.Dropped = seq, dropped
		return r
	})
	return r, err
}

// append stores the entry that encode makes for the next sequence number
// and the count of entries dropped so far.
func (o *Outbox) append(kind string, encode func(seq, dropped uint64) any) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	seq := o.c.LastSeq + 1
	b, err := json.Marshal(encode(seq, 0))
	if err != nil {
		return fmt.Errorf("encode outbox entry: %w", err)
	}
	// Make room first: what is dropped now must be counted in this entry.
	// The count adds at most 32 bytes to the encoding.
	if err := o.makeRoomLocked(int64(len(b)) + 32); err != nil {
		return fmt.Errorf("make room in the outbox: %w", err)
	}
	if b, err = json.Marshal(encode(seq, o.c.Dropped)); err != nil {
		return fmt.Errorf("encode outbox entry: %w", err)
	}
	if err := atomicfile.WriteFile(o.path(seq, kind), b, 0o600); err != nil {
		return fmt.Errorf("write outbox entry: %w", err)
	}
	o.c.LastSeq, o.c.Dropped = seq, 0
	if err := o.saveLocked(); err != nil {
		return fmt.Errorf("write outbox counter: %w", err)
	}
	select {
	case o.notify <- struct{}{}:
	default:
	}
	return nil
}

// makeRoomLocked drops the oldest reports until need more bytes fit.
// o.mu must be held.
func (o *Outbox) makeRoomLocked(need int64) error {
	seqs, err := o.seqs()
	if err != nil {
		return err
	}
	var total int64
	sizes := make([]int64, len(seqs))
	for i, q := range seqs {
		if fi, err := os.Stat(o.path(q.seq, q.kind)); err == nil {
			sizes[i] = fi.Size()
			total += fi.Size()
		}
	}
	for i := 0; total+need > o.maxBytes && i < len(seqs); i++ {
		// Reports and events both carry their count as "dropped".
		var dropped struct {
			Dropped uint64 `json:"dropped"`
		}
		p := o.path(seqs[i].seq, seqs[i].kind)
		if b, err := os.ReadFile(p); err == nil {
			json.Unmarshal(b, &dropped)
		}
		if err := os.Remove(p); err != nil {
			return err
		}
		// A dropped report takes the count it carried with it.
		o.c.Dropped += 1 + dropped.Dropped
		total -= sizes[i]
	}
	return nil
}

func (o *Outbox) saveLocked() error {
	b, err := json.Marshal(o.c)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(o.counterPath(), b, 0o600)
}

// An Entry is one queued report or event as stored.
type Entry struct {
	Seq     uint64
	Kind    string // protocol.KindState or protocol.KindEvents
	Payload []byte // a protocol.StateReport or one protocol.Event
}

// Pending returns the queued reports in sequence order.
func (o *Outbox) Pending() ([]Entry, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	seqs, err := o.seqs()
	if err != nil {
		return nil, err
	}
	out := make([]Entry, 0, len(seqs))
	for _, q := range seqs {
		b, err := readBounded(o.path(q.seq, q.kind))
		if err != nil {
			return nil, err
		}
		out = append(out, Entry{Seq: q.seq, Kind: q.kind, Payload: b})
	}
	return out, nil
}

// Delivered removes a report or event the broker acknowledged.
func (o *Outbox) Delivered(seq uint64) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, p := range []string{o.entryPath(seq), o.eventPath(seq)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

func readBounded(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, protocol.MaxPayloadBytes+1))
	if err != nil {
		return nil, err
	}
	if len(b) > protocol.MaxPayloadBytes {
		return nil, fmt.Errorf("outbox entry %s is larger than a payload may be", path)
	}
	return b, nil
}
