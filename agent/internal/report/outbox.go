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
	if n := len(seqs); n > 0 && seqs[n-1] > o.c.LastSeq {
		o.c.LastSeq = seqs[n-1]
	}
	return o, nil
}

func (o *Outbox) counterPath() string { return filepath.Join(o.dir, "counter.json") }

func (o *Outbox) entryPath(seq uint64) string {
	return filepath.Join(o.dir, fmt.Sprintf("%020d.json", seq))
}

// seqs lists the queued sequence numbers in order.
func (o *Outbox) seqs() ([]uint64, error) {
	entries, err := os.ReadDir(o.dir)
	if err != nil {
		return nil, err
	}
	var out []uint64
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || len(name) != 20 {
			continue
		}
		if seq, err := strconv.ParseUint(name, 10, 64); err == nil {
			out = append(out, seq)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out, nil
}

// Notify is signalled after every Append.
func (o *Outbox) Notify() <-chan struct{} { return o.notify }

// Append assigns the next sequence number and time to r, stores it durably
// and returns it. The oldest reports are dropped if the outbox would exceed
// its budget.
func (o *Outbox) Append(r protocol.StateReport, now time.Time) (protocol.StateReport, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	r.Format = protocol.Format
	r.Seq = o.c.LastSeq + 1
	r.Time = now.UTC()
	b, err := json.Marshal(r)
	if err != nil {
		return r, err
	}
	// Make room first: what is dropped now must be counted in this report.
	// The count adds at most 32 bytes to the encoding.
	if err := o.makeRoomLocked(int64(len(b)) + 32); err != nil {
		return r, err
	}
	r.Dropped = o.c.Dropped
	if b, err = json.Marshal(r); err != nil {
		return r, err
	}
	if err := atomicfile.WriteFile(o.entryPath(r.Seq), b, 0o600); err != nil {
		return r, err
	}
	o.c.LastSeq, o.c.Dropped = r.Seq, 0
	if err := o.saveLocked(); err != nil {
		return r, err
	}
	select {
	case o.notify <- struct{}{}:
	default:
	}
	return r, nil
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
	for i, seq := range seqs {
		if fi, err := os.Stat(o.entryPath(seq)); err == nil {
			sizes[i] = fi.Size()
			total += fi.Size()
		}
	}
	for i := 0; total+need > o.maxBytes && i < len(seqs); i++ {
		var dropped protocol.StateReport
		if b, err := os.ReadFile(o.entryPath(seqs[i])); err == nil {
			json.Unmarshal(b, &dropped)
		}
		if err := os.Remove(o.entryPath(seqs[i])); err != nil {
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

// An Entry is one queued report as stored.
type Entry struct {
	Seq     uint64
	Payload []byte
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
	for _, seq := range seqs {
		b, err := readBounded(o.entryPath(seq))
		if err != nil {
			return nil, err
		}
		out = append(out, Entry{Seq: seq, Payload: b})
	}
	return out, nil
}

// Delivered removes a report the broker acknowledged.
func (o *Outbox) Delivered(seq uint64) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if err := os.Remove(o.entryPath(seq)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
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
