// Package audit defines Aftercare's audit log entry and its hash chain.
//
// Every human decision (and every write refused for lack of permission) is
// one Entry. Entries are numbered from 1 without gaps; each carries the hash
// of the entry before it (the first one carries GenesisHash), and its own
// hash is SHA-256 over a canonical encoding of all its fields, prev_hash
// included. So editing an entry changes its hash, removing or inserting one
// breaks the numbering or the link to the previous hash, and Verify finds
// each. Removing entries from the end cannot be seen from the chain alone:
// compare the head (Verify's last seq and hash) with a copy kept elsewhere,
// e.g. in an evidence export.
//
// This package holds only plain types and the hashing; the store appends
// entries (serialised, so the chain never forks) and the API and CLI show
// them.
package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// GenesisHash is the prev_hash of the first entry.
const GenesisHash = "0000000000000000000000000000000000000000000000000000000000000000"

// Outcomes of a recorded action.
const (
	OutcomeDone   = "done"   // the decision took effect
	OutcomeDenied = "denied" // refused: the principal may not do this
)

// TimeLayout is how an entry's time is encoded for hashing and storage.
const TimeLayout = "2006-01-02T15:04:05.000000Z"

// A Record is what a caller appends: who did what to which object, and why.
type Record struct {
	Actor   string // user name, "admin" for the bootstrap token
	Role    string
	Action  string // e.g. "rollout.create", "disposition.set"
	Object  string // e.g. "rollout/3f2a...", "site/..."
	Outcome string // OutcomeDone or OutcomeDenied; empty means done
	Reason  string // the human's stated reason, or why it was refused
	Details any    // encoded as canonical JSON; nil means {}
}

// An Entry is one link of the chain.
type Entry struct {
	Seq      int64           `json:"seq"`
	At       time.Time       `json:"at"`
	Actor    string          `json:"actor"`
	Role     string          `json:"role"`
	Action   string          `json:"action"`
	Object   string          `json:"object"`
	Outcome  string          `json:"outcome"`
	Reason   string          `json:"reason"`
	Details  json.RawMessage `json:"details"` // canonical JSON, hashed as stored
	PrevHash string          `json:"prev_hash"`
	Hash     string          `json:"hash"`
}

// New makes the entry that follows prev (seq and hash; zero for the first)
// from rec at time at, with its hash.
func New(rec Record, at time.Time, prevSeq int64, prevHash string) (Entry, error) {
	details, err := Canonical(rec.Details)
	if err != nil {
		return Entry{}, fmt.Errorf("audit details: %w", err)
	}
	if prevSeq == 0 {
		prevHash = GenesisHash
	}
	outcome := rec.Outcome
	if outcome == "" {
		outcome = OutcomeDone
	}
	e := Entry{
		Seq: prevSeq + 1, At: at.UTC().Truncate(time.Microsecond), Actor: rec.Actor, Role: rec.Role, Action: rec.Action,
		Object: rec.Object, Outcome: outcome, Reason: rec.Reason, Details: details, PrevHash: prevHash,
	}
	e.Hash = e.ComputeHash()
	return e, nil
}

// Canonical encodes v as JSON with object keys sorted and no insignificant
// space; numbers keep their literal form. nil encodes as {}.
func Canonical(v any) (json.RawMessage, error) {
	if v == nil {
		return json.RawMessage("{}"), nil
	}
	b, ok := v.(json.RawMessage)
	if !ok {
		var err error
		if b, err = json.Marshal(v); err != nil {
			return nil, err
		}
	}
	// Decoding into any and encoding again sorts map keys (encoding/json
	// does); UseNumber keeps 1e3 from turning into 1000.
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var generic any
	if err := dec.Decode(&generic); err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(generic); err != nil {
		return nil, err
	}
	return json.RawMessage(bytes.TrimRight(buf.Bytes(), "\n")), nil
}

// ComputeHash returns the hex SHA-256 of the entry's canonical encoding: a
// JSON array of every field but the hash, in a fixed order, with the time
// in TimeLayout and the details as stored.
func (e Entry) ComputeHash() string {
	fields := []any{"aftercare-audit-v1", e.Seq, e.At.UTC().Format(TimeLayout), e.Actor, e.Role, e.Action, e.Object,
		e.Outcome, e.Reason, string(e.Details), e.PrevHash}
	b, _ := json.Marshal(fields) // strings and an int64 always encode
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// ErrBroken is wrapped by every chain failure Verify reports.
var ErrBroken = errors.New("audit: chain broken")

// A ChainError says where the chain breaks and what that likely means.
// errors.Is(err, ErrBroken) holds for every ChainError.
type ChainError struct {
	Seq    int64  // the entry at which the chain breaks
	Reason string // what is wrong there
}

func (e *ChainError) Error() string {
	return fmt.Sprintf("audit log broken at seq %d: %s", e.Seq, e.Reason)
}

// Is makes errors.Is(err, ErrBroken) hold.
func (e *ChainError) Is(target error) bool { return target == ErrBroken }

// A Verifier checks entries one at a time, in seq order, so a long log
// never has to be in memory at once. The zero value expects seq 1.
type Verifier struct {
	last     int64
	lastHash string
}

// Next checks the next entry. It returns a *ChainError for an entry whose
// hash does not match its fields (edited), whose seq is not the next
// (removed or inserted), or whose prev_hash is not the previous entry's
// hash (removed, inserted or re-chained).
func (v *Verifier) Next(e Entry) error {
	want := v.last + 1
	prev := v.lastHash
	if v.last == 0 {
		prev = GenesisHash
	}
	switch {
	case e.Seq < want:
		return &ChainError{Seq: e.Seq, Reason: fmt.Sprintf("seq %d repeats or goes back after %d: an entry was inserted", e.Seq, v.last)}
	case e.Seq > want:
		return &ChainError{Seq: want, Reason: fmt.Sprintf("entries %d to %d are missing: removed", want, e.Seq-1)}
	case e.Hash != e.ComputeHash():
		return &ChainError{Seq: e.Seq, Reason: "the entry's hash does not match its content: it was edited after it was written"}
	case e.PrevHash != prev:
		return &ChainError{Seq: e.Seq, Reason: "prev_hash does not match the hash of the entry before: an entry was removed, inserted or replaced before it"}
	}
	v.last, v.lastHash = e.Seq, e.Hash
	return nil
}

// Head returns the seq and hash of the last entry checked (0 and "" for
// none).
func (v *Verifier) Head() (int64, string) { return v.last, v.lastHash }

// Verify checks a whole chain in seq order.
func Verify(entries []Entry) error {
	var v Verifier
	for _, e := range entries {
		if err := v.Next(e); err != nil {
			return err
		}
	}
	return nil
}
