package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"
)

// EventFormat is the version of the event batch schema this package writes
// and accepts. It moves independently of Format.
const EventFormat = 1

// Event batch bounds. A batch is one MQTT message on a device's events
// topic; the whole payload is also bounded by MaxPayloadBytes.
const (
	MaxEventsPerBatch  = 64
	MaxEventMessage    = 1 << 10 // 1 KiB
	MaxEventFields     = 16
	MaxEventFieldKey   = 64  // bytes
	MaxEventFieldValue = 256 // bytes
	maxEventSource     = 32  // bytes
)

// Sentinel errors of ParseEventBatch, one per rejection reason, so the
// server can count rejections by reason.
var (
	// ErrOversized is returned for a payload larger than MaxPayloadBytes or
	// a batch over one of the bounds above.
	ErrOversized = errors.New("protocol: event batch too large")
	// ErrWrongSchema is returned for a batch of another schema version.
	ErrWrongSchema = errors.New("protocol: event batch of an unsupported schema")
	// ErrMalformed is returned for a batch that is not valid JSON of the
	// schema or has invalid fields.
	ErrMalformed = errors.New("protocol: malformed event batch")
)

// Category says what an event is about. Stored as a string.
type Category string

// The event categories.
const (
	CategoryAuth      Category = "auth"      // logins, PAM, sshd
	CategoryIntegrity Category = "integrity" // signature or hash verification, refused metadata
	CategoryUpdate    Category = "update"    // rollbacks, unexpected slot changes
	CategoryConfig    Category = "config"    // configuration changed
	CategoryNetwork   Category = "network"
	CategorySystem    Category = "system"
	CategoryApp       Category = "app" // the device's own application
)

var categories = []Category{CategoryAuth, CategoryIntegrity, CategoryUpdate, CategoryConfig, CategoryNetwork, CategorySystem, CategoryApp}

// Categories returns every defined category.
func Categories() []Category { return append([]Category(nil), categories...) }

// Valid reports whether c is a defined category.
func (c Category) Valid() bool {
	for _, v := range categories {
		if c == v {
			return true
		}
	}
	return false
}

// Severity orders events by urgency, with the names of RFC 5424 §6.2.1.
type Severity string

// Severities, least urgent first.
const (
	SeverityDebug     Severity = "debug"
	SeverityInfo      Severity = "info"
	SeverityNotice    Severity = "notice"
	SeverityWarning   Severity = "warning"
	SeverityError     Severity = "error"
	SeverityCritical  Severity = "critical"
	SeverityAlert     Severity = "alert"
	SeverityEmergency Severity = "emergency"
)

var severities = []Severity{SeverityDebug, SeverityInfo, SeverityNotice, SeverityWarning, SeverityError, SeverityCritical, SeverityAlert, SeverityEmergency}

// Rank returns 0 for debug up to 7 for emergency, or -1 for an unknown
// severity.
func (s Severity) Rank() int {
	for i, v := range severities {
		if s == v {
			return i
		}
	}
	return -1
}

// Valid reports whether s is a defined severity.
func (s Severity) Valid() bool { return s.Rank() >= 0 }

// SyslogCode returns the RFC 5424 severity code: 7 for debug down to 0 for
// emergency.
func (s Severity) SyslogCode() int { return 7 - s.Rank() }

// SeverityFromSyslog maps an RFC 5424 severity code (0-7) to a Severity.
func SeverityFromSyslog(code int) Severity {
	if code < 0 || code > 7 {
		return SeverityNotice
	}
	return severities[7-code]
}

// Event sources the agent ships.
const (
	SourceAgent   = "agent"
	SourceJournal = "journald"
	SourceFile    = "file"
	SourceSyslog  = "syslog"
)

// An Event is one security event of a device. Seq is drawn from the same
// per-device counter as StateReport.Seq, so a gap in the union of a
// device's reports and events means something was lost.
type Event struct {
	Seq      uint64            `json:"seq"`
	Time     time.Time         `json:"time"`
	Source   string            `json:"source"`
	Category Category          `json:"category"`
	Severity Severity          `json:"severity"`
	Message  string            `json:"message"`
	Fields   map[string]string `json:"fields,omitempty"`
	// Dropped counts reports and events the device discarded, oldest first,
	// because its on-disk buffer was full, since the previous one it kept.
	Dropped uint64 `json:"dropped,omitempty"`
}

// Validate reports every invalid field at once.
func (e *Event) Validate() error {
	var errs []error
	if e.Seq == 0 {
		errs = append(errs, errors.New("event seq must be positive"))
	}
	if e.Time.IsZero() {
		errs = append(errs, fmt.Errorf("event %d time is missing", e.Seq))
	}
	if e.Source == "" || len(e.Source) > maxEventSource || !ValidID(e.Source) {
		errs = append(errs, fmt.Errorf("event %d source %q must be 1-%d characters of letters, digits, '.', '_' and '-'", e.Seq, e.Source, maxEventSource))
	}
	if !e.Category.Valid() {
		errs = append(errs, fmt.Errorf("event %d category %q is not one of %q", e.Seq, e.Category, categories))
	}
	if !e.Severity.Valid() {
		errs = append(errs, fmt.Errorf("event %d severity %q is not one of %q", e.Seq, e.Severity, severities))
	}
	if len(e.Message) > MaxEventMessage {
		errs = append(errs, fmt.Errorf("event %d message is %d bytes, more than the %d allowed: %w", e.Seq, len(e.Message), MaxEventMessage, ErrOversized))
	}
	if !utf8.ValidString(e.Message) {
		errs = append(errs, fmt.Errorf("event %d message is not valid UTF-8", e.Seq))
	}
	if len(e.Fields) > MaxEventFields {
		errs = append(errs, fmt.Errorf("event %d has %d fields, more than the %d allowed: %w", e.Seq, len(e.Fields), MaxEventFields, ErrOversized))
	}
	for k, v := range e.Fields {
		if k == "" || len(k) > MaxEventFieldKey || !ValidID(k) {
			errs = append(errs, fmt.Errorf("event %d field name %q must be 1-%d characters of letters, digits, '.', '_' and '-'", e.Seq, k, MaxEventFieldKey))
		}
		if len(v) > MaxEventFieldValue || !utf8.ValidString(v) {
			errs = append(errs, fmt.Errorf("event %d field %q value must be valid UTF-8 of at most %d bytes", e.Seq, k, MaxEventFieldValue))
		}
	}
	return errors.Join(errs...)
}

// An EventBatch is the payload on a device's events topic: one or more
// events of that device, in sequence order. DeviceID must equal the device
// of the topic, which the broker ties to the device's certificate.
type EventBatch struct {
	Format   int     `json:"v"`
	DeviceID string  `json:"device_id"`
	Events   []Event `json:"events"`
}

// Validate reports every invalid field at once.
func (b *EventBatch) Validate() error {
	var errs []error
	if b.Format != EventFormat {
		errs = append(errs, fmt.Errorf("event batch format %d is not supported (want %d): %w", b.Format, EventFormat, ErrWrongSchema))
	}
	if err := CheckDeviceID(b.DeviceID); err != nil {
		errs = append(errs, fmt.Errorf("event batch: %w", err))
	}
	switch n := len(b.Events); {
	case n == 0:
		errs = append(errs, errors.New("event batch holds no events"))
	case n > MaxEventsPerBatch:
		errs = append(errs, fmt.Errorf("event batch holds %d events, more than the %d allowed: %w", n, MaxEventsPerBatch, ErrOversized))
	}
	for i := range b.Events {
		if i > 0 && b.Events[i].Seq <= b.Events[i-1].Seq {
			errs = append(errs, fmt.Errorf("event batch seq %d follows %d; events must be in increasing sequence order", b.Events[i].Seq, b.Events[i-1].Seq))
		}
		if err := b.Events[i].Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Marshal encodes the batch.
func (b *EventBatch) Marshal() ([]byte, error) { return json.Marshal(b) }

// ParseEventBatch decodes and validates an event batch payload. Every error
// wraps exactly one of ErrOversized, ErrWrongSchema or ErrMalformed, in
// that order of precedence: a batch from a newer agent is reported as the
// wrong schema even when its fields are unknown here.
func ParseEventBatch(b []byte) (*EventBatch, error) {
	if len(b) > MaxPayloadBytes {
		return nil, fmt.Errorf("event batch is %d bytes, more than the %d allowed: %w", len(b), MaxPayloadBytes, ErrOversized)
	}
	var probe struct {
		Format *int `json:"v"`
	}
	if err := json.NewDecoder(bytes.NewReader(b)).Decode(&probe); err != nil {
		return nil, fmt.Errorf("event batch is not a JSON object: %w", errors.Join(ErrMalformed, err))
	}
	if probe.Format == nil || *probe.Format != EventFormat {
		v := "missing"
		if probe.Format != nil {
			v = fmt.Sprint(*probe.Format)
		}
		return nil, fmt.Errorf("event batch format %s is not supported (want %d): %w", v, EventFormat, ErrWrongSchema)
	}
	var batch EventBatch
	if err := Decode(b, &batch); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if err := batch.Validate(); err != nil {
		return nil, classify(err)
	}
	return &batch, nil
}

// classify makes a validation error wrap one reason: oversized when any
// part was, malformed otherwise.
func classify(err error) error {
	if errors.Is(err, ErrOversized) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrMalformed, err)
}
