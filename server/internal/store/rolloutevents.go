package store

import (
	"context"
	"fmt"
	"time"
)

// A RolloutEvent is something the rollout scheduler did by itself: a wave
// opened, the rollout halted or completed, a deferral reminder, a deferral
// ended. Key names it once per rollout.
type RolloutEvent struct {
	RolloutID string    `json:"rollout_id"`
	Key       string    `json:"key"`
	Kind      string    `json:"kind"`
	SiteID    string    `json:"site_id,omitempty"`
	Detail    string    `json:"detail"`
	At        time.Time `json:"at"`
}

// insertRolloutEvents records events. A key the rollout recorded already
// fails the transaction: the step that made it was based on a stale read.
func insertRolloutEvents(ctx context.Context, q *txq, events []RolloutEvent) error {
	for _, e := range events {
		// The step's plan update holds the rollout's row, so no other
		// step numbers an event of this rollout meanwhile.
		if _, err := q.exec(ctx, `INSERT INTO rollout_events (rollout_id, seq, event_key, kind, site_id, detail, at)
			SELECT ?, COALESCE(MAX(seq), 0) + 1, ?, ?, ?, ?, ? FROM rollout_events WHERE rollout_id = ?`,
			e.RolloutID, e.Key, e.Kind, e.SiteID, e.Detail, formatTime(e.At), e.RolloutID); err != nil {
			return fmt.Errorf("record rollout event %s: %w", e.Key, err)
		}
	}
	return nil
}

// RolloutEventKeys returns the keys of a rollout's events.
func (s *Store) RolloutEventKeys(ctx context.Context, rolloutID string) (map[string]bool, error) {
	rows, err := s.direct().query(ctx, `SELECT event_key FROM rollout_events WHERE rollout_id = ?`, rolloutID)
	if err != nil {
		return nil, fmt.Errorf("list rollout event keys: %w", err)
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var k string
		if err := rows.Scan(&k); err != nil {
			return nil, err
		}
		out[k] = true
	}
	return out, rows.Err()
}

// RolloutEvents returns the events of a rollout (all when rolloutID is
// empty), of one site's when siteID is set, oldest first.
func (s *Store) RolloutEvents(ctx context.Context, rolloutID, siteID string) ([]RolloutEvent, error) {
	rows, err := s.direct().query(ctx, `SELECT rollout_id, event_key, kind, site_id, detail, at FROM rollout_events
		WHERE (? = '' OR rollout_id = ?) AND (? = '' OR site_id = ?) ORDER BY at, rollout_id, seq`,
		rolloutID, rolloutID, siteID, siteID)
	if err != nil {
		return nil, fmt.Errorf("list rollout events: %w", err)
	}
	out, err := collect(rows, func(sc interface{ Scan(...any) error }) (RolloutEvent, error) {
		var e RolloutEvent
		var at string
		err := sc.Scan(&e.RolloutID, &e.Key, &e.Kind, &e.SiteID, &e.Detail, &at)
		e.At = parseTime(at)
		return e, err
	})
	if out == nil && err == nil {
		out = []RolloutEvent{} // no events: empty, not nil
	}
	return out, err
}
