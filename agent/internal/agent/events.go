package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/aftercare/aftercare/firmware"
	"github.com/aftercare/aftercare/internal/atomicfile"
	"github.com/aftercare/aftercare/protocol"
)

// emit queues one security event in the outbox; it is the events.Emit of
// every source. An event the outbox refuses is logged, never lost silently.
func (a *Agent) emit(e protocol.Event) {
	q, err := a.outbox.AppendEvent(e, a.opts.Now())
	if err != nil {
		a.log.Error("security event not queued", "source", e.Source, "category", e.Category, "err", err)
		return
	}
	a.log.Debug("security event queued", "seq", q.Seq, "source", e.Source, "category", e.Category, "severity", e.Severity)
}

// event queues one of the agent's own security events.
func (a *Agent) event(cat protocol.Category, sev protocol.Severity, msg string, fields map[string]string) {
	for k, v := range fields {
		if v == "" {
			delete(fields, k)
		} else if len(v) > protocol.MaxEventFieldValue {
			fields[k] = v[:protocol.MaxEventFieldValue]
		}
	}
	if len(msg) > protocol.MaxEventMessage {
		msg = msg[:protocol.MaxEventMessage]
	}
	a.emit(protocol.Event{Source: protocol.SourceAgent, Category: cat, Severity: sev, Message: strings.ToValidUTF8(msg, "?"), Fields: fields})
}

// securityEvent reports a refusal found by securityCode: signed metadata
// or an image that did not verify is an integrity error; slow retrieval,
// which an attacker on the path can cause, is a network warning.
func (a *Agent) securityEvent(event, code, rolloutID, target string, err error) {
	cat, sev := protocol.CategoryIntegrity, protocol.SeverityError
	if code == "slow retrieval" {
		cat, sev = protocol.CategoryNetwork, protocol.SeverityWarning
	}
	a.event(cat, sev, event+": "+err.Error(), map[string]string{
		"event": strings.ReplaceAll(event, " ", "_"), "code": code, "rollout_id": rolloutID, "target": target,
	})
}

const agentMarksFormat = 1

// marks is what the agent remembers between starts to notice changes it
// did not make: the slot it last ran and the hash of its configuration.
type marks struct {
	Format     int           `json:"format"`
	Slot       firmware.Slot `json:"slot"`
	Version    string        `json:"version"`
	ConfigHash string        `json:"config_hash"`
}

func (a *Agent) marksPath() string { return filepath.Join(a.opts.StateDir, "event-marks.json") }

// startEvents compares the running slot and the configuration with what
// the agent saw at its previous start. installed says an install of the
// agent's own ended at this boot, so a changed slot is expected.
func (a *Agent) startEvents(installed bool) error {
	slot, running, err := a.inst.Running()
	if err != nil {
		return fmt.Errorf("read running slot: %w", err)
	}
	var prev marks
	b, err := os.ReadFile(a.marksPath())
	switch {
	case errors.Is(err, os.ErrNotExist):
		prev.Format = 0 // first start: nothing to compare
	case err != nil:
		return fmt.Errorf("read event marks: %w", err)
	default:
		if err := json.Unmarshal(b, &prev); err != nil || prev.Format != agentMarksFormat {
			a.log.Warn("event marks damaged; starting afresh", "path", a.marksPath())
			prev = marks{}
		}
	}
	if prev.Format == agentMarksFormat {
		if !installed && (prev.Slot != slot || prev.Version != running.Version) {
			a.event(protocol.CategoryUpdate, protocol.SeverityCritical,
				fmt.Sprintf("running slot changed from %s (%s) to %s (%s) without an install by the agent", prev.Slot, prev.Version, slot, running.Version),
				map[string]string{"event": "unexpected_slot_change", "from_slot": string(prev.Slot), "to_slot": string(slot), "from_version": prev.Version, "to_version": running.Version})
		}
		if a.opts.ConfigHash != "" && prev.ConfigHash != "" && prev.ConfigHash != a.opts.ConfigHash {
			a.event(protocol.CategoryConfig, protocol.SeverityWarning, "agent configuration changed since the previous start",
				map[string]string{"event": "config_changed", "from_hash": prev.ConfigHash, "to_hash": a.opts.ConfigHash})
		}
	}
	next := marks{Format: agentMarksFormat, Slot: slot, Version: running.Version, ConfigHash: a.opts.ConfigHash}
	if b, err = json.Marshal(next); err != nil {
		return err
	}
	if err := atomicfile.WriteFile(a.marksPath(), b, 0o600); err != nil {
		return fmt.Errorf("write event marks: %w", err)
	}
	return nil
}
