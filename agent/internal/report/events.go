package report

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/aftercare/aftercare/protocol"
)

// AppendEvent assigns the next sequence number (shared with state reports,
// so the server sees gaps across both) to e, stores it durably and returns
// it. A zero e.Time is set to now. The oldest entries are dropped if the
// outbox would exceed its budget, and the count travels in e.Dropped.
func (o *Outbox) AppendEvent(e protocol.Event, now time.Time) (protocol.Event, error) {
	if e.Time.IsZero() {
		e.Time = now
	}
	e.Time = e.Time.UTC()
	// Validate with a placeholder sequence number: an event that the server
	// would reject must not take a place in the outbox.
	check := e
	check.Seq = 1
	if err := check.Validate(); err != nil {
		return e, fmt.Errorf("event not queued: %w", err)
	}
	err := o.append(protocol.KindEvents, func(seq, dropped uint64) any {
		e.Seq, e.Dropped = seq, dropped
		return e
	})
	return e, err
}

// batchEvents encodes the leading event entries of pending into one batch
// of at most protocol.MaxEventsPerBatch events and protocol.MaxPayloadBytes,
// and returns the payload and how many entries it holds. pending[0] must
// be an event entry.
func batchEvents(deviceID string, pending []Entry) ([]byte, int, error) {
	batch := protocol.EventBatch{Format: protocol.EventFormat, DeviceID: deviceID}
	// The batch envelope is small; each event costs its stored size plus a comma.
	size := 64 + len(deviceID)
	var payload []byte
	n := 0
	for _, e := range pending {
		if e.Kind != protocol.KindEvents || n == protocol.MaxEventsPerBatch || size+len(e.Payload)+1 > protocol.MaxPayloadBytes {
			break
		}
		var ev protocol.Event
		if err := json.Unmarshal(e.Payload, &ev); err != nil {
			return nil, 0, fmt.Errorf("outbox event %d is damaged: %w", e.Seq, err)
		}
		batch.Events = append(batch.Events, ev)
		size += len(e.Payload) + 1
		n++
	}
	if n == 0 {
		return nil, 0, fmt.Errorf("outbox event %d does not fit in a batch", pending[0].Seq)
	}
	payload, err := batch.Marshal()
	if err != nil {
		return nil, 0, fmt.Errorf("encode event batch: %w", err)
	}
	return payload, n, nil
}
