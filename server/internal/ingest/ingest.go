// Package ingest stores the security events devices publish on their
// events topics. The MQTT bridge hands every message to Submit with a
// function that acknowledges it to the broker; Run takes the queued
// messages in groups, checks each, writes the accepted ones in one
// transaction (group commit), evaluates the alert rules in that same
// transaction, and only after the commit acknowledges the group. A server
// that stops before the commit acknowledges nothing, so the broker
// redelivers; the store skips a (device, seq) it already holds, so a
// redelivery is stored once.
//
// A message that can never be accepted is acknowledged and dropped, and
// counted by reason: oversized, malformed, wrong schema, a batch naming
// another device than its topic (the broker ties the topic to the
// certificate), an unknown or revoked device, or a device over its rate.
// One device's bad or flooding messages never hold up another's.
package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/aftercare/aftercare/protocol"
	"github.com/aftercare/aftercare/server/internal/store"
)

// Rejection reasons, as counted by Stats.
const (
	ReasonOversized       = "oversized"
	ReasonMalformed       = "malformed"
	ReasonWrongSchema     = "wrong_schema"
	ReasonIdentity        = "identity_mismatch"
	ReasonUnknownDevice   = "unknown_device"
	ReasonRevokedDevice   = "revoked_device"
	ReasonRateLimited     = "rate_limited"
	defaultMaxBatch       = 256
	defaultQueue          = 4096
	defaultRate           = 20 // events per second per device, sustained
	defaultBurst          = 600
	defaultLinger         = 2 * time.Millisecond
	maxRetryDelay         = 10 * time.Second
	firstRetryDelay       = 100 * time.Millisecond
	defaultDeviceLimiters = 200_000
)

// Reasons lists every rejection reason.
var Reasons = []string{ReasonOversized, ReasonMalformed, ReasonWrongSchema, ReasonIdentity, ReasonUnknownDevice, ReasonRevokedDevice, ReasonRateLimited}

// A Message is one MQTT message from a device's events topic.
type Message struct {
	DeviceID string // from the topic, which the broker ties to the device's certificate
	Payload  []byte
	Ack      func() // acknowledges it to the broker; called once
}

// Options configures an Ingester.
type Options struct {
	Store *store.Store // required
	Log   *slog.Logger // required
	Now   func() time.Time
	// MaxBatch bounds the messages of one group commit; default 256.
	MaxBatch int
	// Linger is how long Run waits for more messages to join a group
	// below MaxBatch before committing it; default 2 ms.
	Linger time.Duration
	// Queue is how many messages wait for Run before Submit blocks (and
	// with it the MQTT client, which is back-pressure); default 4096.
	Queue int
	// Rate and Burst bound each device: Rate events per second sustained,
	// Burst at once; defaults 20 and 600.
	Rate  float64
	Burst float64
	// OnAlert is called for every alert raised or extended, after commit;
	// nil: none.
	OnAlert func(store.Alert)
}

// Ingester stores device events. Submit and Stats are safe for concurrent
// use; Run is called once.
type Ingester struct {
	opts  Options
	queue chan Message

	mu       sync.Mutex
	stats    Stats               // guarded by mu
	limiters map[string]*limiter // guarded by mu
	changed  chan struct{}       // closed and replaced when stats change; guarded by mu
}

// Stats counts what the ingester did since New.
type Stats struct {
	Messages   int64            `json:"messages"`   // accepted messages stored (or already stored)
	Stored     int64            `json:"stored"`     // events newly stored
	Duplicates int64            `json:"duplicates"` // events already stored (redeliveries)
	Commits    int64            `json:"commits"`    // group commits
	Alerts     int64            `json:"alerts"`     // alerts raised or extended
	Rejected   map[string]int64 `json:"rejected"`   // messages, by reason
}

// New returns an Ingester.
func New(opts Options) (*Ingester, error) {
	if opts.Store == nil || opts.Log == nil {
		return nil, errors.New("ingest: Store and Log are required")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = defaultMaxBatch
	}
	if opts.Linger <= 0 {
		opts.Linger = defaultLinger
	}
	if opts.Queue <= 0 {
		opts.Queue = defaultQueue
	}
	if opts.Rate <= 0 {
		opts.Rate = defaultRate
	}
	if opts.Burst <= 0 {
		opts.Burst = defaultBurst
	}
	in := &Ingester{opts: opts, queue: make(chan Message, opts.Queue), limiters: map[string]*limiter{}, changed: make(chan struct{})}
	in.stats.Rejected = map[string]int64{}
	for _, r := range Reasons {
		in.stats.Rejected[r] = 0
	}
	return in, nil
}

// Submit queues m for Run, blocking while the queue is full.
func (in *Ingester) Submit(ctx context.Context, m Message) error {
	select {
	case in.queue <- m:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Stats returns a copy of the counters.
func (in *Ingester) Stats() Stats {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.statsLocked()
}

// WaitFor blocks until cond holds for the counters or ctx ends.
func (in *Ingester) WaitFor(ctx context.Context, cond func(Stats) bool) error {
	for {
		in.mu.Lock()
		s, ch := in.statsLocked(), in.changed
		in.mu.Unlock()
		if cond(s) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}

// notifyLocked wakes WaitFor. in.mu must be held.
func (in *Ingester) notifyLocked() {
	close(in.changed)
	in.changed = make(chan struct{})
}

// statsLocked copies the counters. in.mu must be held.
func (in *Ingester) statsLocked() Stats {
	s := in.stats
	s.Rejected = make(map[string]int64, len(in.stats.Rejected))
	for k, v := range in.stats.Rejected {
		s.Rejected[k] = v
	}
	return s
}

// Run stores queued messages until ctx ends. Messages still queued then
// are not acknowledged; the broker redelivers them.
func (in *Ingester) Run(ctx context.Context) error {
	for {
		var group []Message
		select {
		case <-ctx.Done():
			return nil
		case m := <-in.queue:
			group = append(group, m)
		}
		// Wait up to Linger for a fuller group: one commit (one fsync)
		// for many messages is most of the ingest rate.
		linger := time.NewTimer(in.opts.Linger)
	fill:
		for len(group) < in.opts.MaxBatch {
			select {
			case m := <-in.queue:
				group = append(group, m)
			case <-linger.C:
				break fill
			case <-ctx.Done():
				break fill
			}
		}
		linger.Stop()
		if err := in.process(ctx, group); err != nil {
			return nil // ctx ended while retrying: nothing acknowledged
		}
	}
}

// accepted is one message that passed the checks, with its rows.
type accepted struct {
	msg  Message
	rows []store.EventRow
}

// process checks a group, stores what passes in one transaction (retrying
// until the store takes it or ctx ends) and acknowledges.
func (in *Ingester) process(ctx context.Context, group []Message) error {
	now := in.opts.Now()
	parsed := make([]*protocol.EventBatch, len(group))
	var ids []string
	seen := map[string]bool{}
	for i, m := range group {
		b, err := protocol.ParseEventBatch(m.Payload)
		if err == nil && b.DeviceID != m.DeviceID {
			err = fmt.Errorf("batch names device %q on the topic of %q", b.DeviceID, m.DeviceID)
			in.reject(m, ReasonIdentity, err)
			continue
		}
		if err != nil {
			in.reject(m, reasonOf(err), err)
			continue
		}
		parsed[i] = b
		if !seen[m.DeviceID] {
			seen[m.DeviceID] = true
			ids = append(ids, m.DeviceID)
		}
	}
	var devices map[string]store.DeviceSite
	err := in.retry(ctx, func() error {
		var err error
		devices, err = in.opts.Store.DeviceSites(ctx, ids)
		return err
	})
	if err != nil {
		return err
	}
	var ok []accepted
	var rows []store.EventRow
	for i, m := range group {
		b := parsed[i]
		if b == nil {
			continue
		}
		d, known := devices[m.DeviceID]
		switch {
		case !known:
			in.reject(m, ReasonUnknownDevice, errors.New("device is not enrolled"))
			continue
		case d.Revoked:
			in.reject(m, ReasonRevokedDevice, errors.New("device is revoked"))
			continue
		case !in.allow(m.DeviceID, len(b.Events), now):
			in.reject(m, ReasonRateLimited, fmt.Errorf("device over %g events/s", in.opts.Rate))
			continue
		}
		a := accepted{msg: m}
		for _, e := range b.Events {
			a.rows = append(a.rows, store.EventRow{DeviceID: m.DeviceID, SiteID: d.SiteID, Event: e, ReceivedAt: now})
		}
		rows = append(rows, a.rows...)
		ok = append(ok, a)
	}
	if len(ok) == 0 {
		return nil
	}
	var inserted []store.EventRow
	var alerts []store.Alert
	err = in.retry(ctx, func() error {
		rules, err := in.opts.Store.AlertRules(ctx)
		if err != nil {
			return err
		}
		inserted, alerts, err = in.opts.Store.InsertEvents(ctx, rows, rules, now)
		return err
	})
	if err != nil {
		return err
	}
	// Durable: acknowledge.
	for _, a := range ok {
		a.msg.Ack()
	}
	in.mu.Lock()
	in.stats.Messages += int64(len(ok))
	in.stats.Stored += int64(len(inserted))
	in.stats.Duplicates += int64(len(rows) - len(inserted))
	in.stats.Commits++
	in.stats.Alerts += int64(len(alerts))
	in.notifyLocked()
	in.mu.Unlock()
	for _, a := range alerts {
		in.opts.Log.Warn("alert", "alert_id", a.ID, "rule_id", a.RuleID, "device_id", a.DeviceID, "site_id", a.SiteID, "event_count", a.Count)
		if in.opts.OnAlert != nil {
			in.opts.OnAlert(a)
		}
	}
	return nil
}

// retry runs fn until it succeeds or ctx ends, backing off between tries:
// a database that is down only delays ingestion.
func (in *Ingester) retry(ctx context.Context, fn func() error) error {
	delay := firstRetryDelay
	for {
		err := fn()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		in.opts.Log.Error("events not stored; retrying", "err", err, "retry_in", delay)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(delay*2, maxRetryDelay)
	}
}

func reasonOf(err error) string {
	switch {
	case errors.Is(err, protocol.ErrOversized):
		return ReasonOversized
	case errors.Is(err, protocol.ErrWrongSchema):
		return ReasonWrongSchema
	}
	return ReasonMalformed
}

// reject counts and acknowledges a message that can never be accepted:
// redelivery would not change the answer.
func (in *Ingester) reject(m Message, reason string, err error) {
	in.mu.Lock()
	in.stats.Rejected[reason]++
	in.notifyLocked()
	in.mu.Unlock()
	level := slog.LevelWarn
	if reason == ReasonRateLimited {
		level = slog.LevelDebug // a flood must not flood the log too
	}
	in.opts.Log.Log(context.Background(), level, "device events rejected", "device_id", m.DeviceID, "reason", reason, "bytes", len(m.Payload), "err", err)
	m.Ack()
}

// limiter is a token bucket of one device.
type limiter struct {
	tokens float64
	last   time.Time
}

// allow takes n tokens from the device's bucket if it holds them.
func (in *Ingester) allow(deviceID string, n int, now time.Time) bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	l := in.limiters[deviceID]
	if l == nil {
		if len(in.limiters) >= defaultDeviceLimiters {
			clear(in.limiters) // bounded memory; a reset only forgives
		}
		l = &limiter{tokens: in.opts.Burst, last: now}
		in.limiters[deviceID] = l
	}
	if el := now.Sub(l.last).Seconds(); el > 0 {
		l.tokens = min(in.opts.Burst, l.tokens+el*in.opts.Rate)
		l.last = now
	}
	if l.tokens < float64(n) {
		return false
	}
	l.tokens -= float64(n)
	return true
}
