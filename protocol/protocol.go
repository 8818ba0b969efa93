// Package protocol is the wire contract between the Aftercare agent and the
// fleet server: MQTT topics and payloads, and the bodies of the device-facing
// HTTP endpoints. Both sides import it; it imports only the standard library.
//
// Every payload is untrusted on receipt. Parse functions bound the size,
// reject unknown fields and validate every field before returning.
//
// Topics live under a configurable prefix (default "aftercare/v1"), one
// subtree per device:
//
//	{prefix}/dev/{deviceID}/hint    server -> device, QoS 1: "refresh now"
//	{prefix}/dev/{deviceID}/state   device -> server, QoS 1: a StateReport
//	{prefix}/dev/{deviceID}/events  device -> server, QoS 1: an EventBatch (events.go)
//
// A hint carries no instruction the device trusts; it only makes the device
// check for an assignment sooner than its poll timer would.
package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"time"
)

// Format is the payload format version this package writes and accepts.
const Format = 1

// DefaultTopicPrefix is the topic prefix used unless configured otherwise.
const DefaultTopicPrefix = "aftercare/v1"

// MaxPayloadBytes bounds every MQTT payload and device-facing JSON body.
const MaxPayloadBytes = 16 << 10 // 16 KiB

const maxReasonBytes = 2 << 10 // 2 KiB

var (
	idPattern     = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	prefixPattern = regexp.MustCompile(`^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$`)
)

// ValidID reports whether s can name a device: 1-64 characters of letters,
// digits, '.', '_' and '-', so it can never be an MQTT wildcard or add a
// topic level.
func ValidID(s string) bool { return idPattern.MatchString(s) }

// ValidTopicPrefix reports whether p is a usable topic prefix: levels of
// letters, digits, '.', '_' and '-', no wildcards, no leading or trailing '/'.
func ValidTopicPrefix(p string) bool { return prefixPattern.MatchString(p) && len(p) <= 128 }

// Topic kinds under a device's subtree.
const (
	KindHint   = "hint"
	KindState  = "state"
	KindEvents = "events" // device security events, device -> server
)

// DeviceWritable reports whether a device may publish on a topic of kind
// under its own subtree: state and events; never the hint, which only the
// server sends. Brokers enforce this (the embedded broker's hook,
// deploy/mosquitto/aftercare.acl).
func DeviceWritable(kind string) bool { return kind == KindState || kind == KindEvents }

// DeviceTopic returns the topic of the given kind for a device.
func DeviceTopic(prefix, deviceID, kind string) string {
	return prefix + "/dev/" + deviceID + "/" + kind
}

// DeviceWildcard returns the filter matching one kind of topic of every
// device, e.g. "aftercare/v1/dev/+/state".
func DeviceWildcard(prefix, kind string) string {
	return prefix + "/dev/+/" + kind
}

// ParseDeviceTopic splits a topic under prefix into the device ID and kind.
func ParseDeviceTopic(prefix, topic string) (deviceID, kind string, err error) {
	rest, ok := strings.CutPrefix(topic, prefix+"/dev/")
	if !ok {
		return "", "", fmt.Errorf("topic %q is not under %q", topic, prefix+"/dev/")
	}
	deviceID, kind, ok = strings.Cut(rest, "/")
	if !ok || !ValidID(deviceID) || strings.Contains(kind, "/") {
		return "", "", fmt.Errorf("topic %q is not %s/dev/{device}/{kind}", topic, prefix)
	}
	return deviceID, kind, nil
}

// State is a step of an install as the device reports it.
type State string

// The states a device reports, in the order an install passes through them.
// Failed and RolledBack end an install unsuccessfully; Committed ends it
// successfully; Idle says the device runs its committed slot with nothing to do.
const (
	StateIdle        State = "idle"
	StateDownloading State = "downloading"
	StateVerified    State = "verified"
	StateInstalled   State = "installed"
	StateBooted      State = "booted"
	StateCommitted   State = "committed"
	StateFailed      State = "failed"
	StateRolledBack  State = "rolled-back"
	// StateWaiting: the image may be downloaded, but the device holds off
	// installing it (outside its maintenance window, or busy in clinical
	// use); Reason says which. It retries later and never interrupts.
	StateWaiting State = "waiting"
)

var states = []State{StateIdle, StateDownloading, StateVerified, StateInstalled, StateBooted, StateCommitted, StateFailed, StateRolledBack, StateWaiting}

// Valid reports whether s is one of the defined states.
func (s State) Valid() bool {
	for _, v := range states {
		if s == v {
			return true
		}
	}
	return false
}

// InProgress reports whether s is a step inside an install.
func (s State) InProgress() bool {
	switch s {
	case StateDownloading, StateVerified, StateInstalled, StateBooted:
		return true
	}
	return false
}

// A StateReport is one state change of a device, sent on its state topic.
// Seq increases by one for every report and event a device produces, so the
// server can drop duplicates and see gaps.
type StateReport struct {
	Format  int       `json:"v"`
	Seq     uint64    `json:"seq"`
	Time    time.Time `json:"time"`
	State   State     `json:"state"`
	Running string    `json:"running"`          // version of the slot the device runs now
	Target  string    `json:"target,omitempty"` // TUF target path of the release being installed
	Version string    `json:"version,omitempty"`
	Reason  string    `json:"reason,omitempty"` // why, for failed and rolled-back
	// Dropped counts reports the device discarded, oldest first, because its
	// on-disk buffer was full, since its previous delivered report.
	Dropped uint64 `json:"dropped,omitempty"`
}

// Validate reports every invalid field at once.
func (r *StateReport) Validate() error {
	var errs []error
	if r.Format != Format {
		errs = append(errs, fmt.Errorf("state report format %d is not supported (want %d)", r.Format, Format))
	}
	if r.Seq == 0 {
		errs = append(errs, errors.New("state report seq must be positive"))
	}
	if r.Time.IsZero() {
		errs = append(errs, errors.New("state report time is missing"))
	}
	if !r.State.Valid() {
		errs = append(errs, fmt.Errorf("state report state %q is not a known state", r.State))
	}
	if len(r.Running) > 64 || len(r.Version) > 64 || len(r.Target) > 256 {
		errs = append(errs, errors.New("state report running, version or target is too long"))
	}
	if len(r.Reason) > maxReasonBytes {
		errs = append(errs, fmt.Errorf("state report reason is %d bytes, more than the %d allowed", len(r.Reason), maxReasonBytes))
	}
	return errors.Join(errs...)
}

// A Hint asks a device to check for an assignment now. It is never trusted.
type Hint struct {
	Format int       `json:"v"`
	Time   time.Time `json:"time"`
	Reason string    `json:"reason,omitempty"` // for logs only, e.g. "rollout"
}

// EnrollRequest is the body of POST /api/v1/enroll. The device makes its
// own key (ECDSA P-256), which never leaves it, and its own device ID; CSR
// is a PEM certificate signing request for that key with the device ID as
// subject CN.
type EnrollRequest struct {
	Token            string `json:"token"`     // one-time enrollment token
	DeviceID         string `json:"device_id"` // see ValidID
	CSR              string `json:"csr"`       // PEM "CERTIFICATE REQUEST"
	Serial           string `json:"serial"`
	Model            string `json:"model"`
	HardwareRevision string `json:"hardware_revision"`
	InstalledVersion string `json:"installed_version"`
}

// EnrollResponse is the answer to an accepted enrollment. Certificate is
// the device's client certificate for the broker and the API; CA is the
// device CA certificate, which also signs the embedded broker's server
// certificate.
type EnrollResponse struct {
	DeviceID    string `json:"device_id"`
	Certificate string `json:"certificate"` // PEM
	CA          string `json:"ca"`          // PEM
	SiteID      string `json:"site_id"`
	BrokerURL   string `json:"broker_url"`
	TopicPrefix string `json:"topic_prefix"`
}

// RenewRequest is the body of POST /api/v1/device/certificate, sent over
// HTTPS with the device's current certificate: a CSR for a new key with the
// same subject CN.
type RenewRequest struct {
	CSR string `json:"csr"`
}

// RenewResponse carries the renewed certificate.
type RenewResponse struct {
	Certificate string `json:"certificate"` // PEM
}

// CheckDeviceID reports why id cannot name a device, or nil. MQTT topic
// wildcards and the level separator get their own message: a device ID
// holding them could widen the topic patterns keyed on it.
func CheckDeviceID(id string) error {
	if strings.ContainsAny(id, "+#/") {
		return fmt.Errorf("device_id %q contains '+', '#' or '/', which are MQTT wildcards or topic separators", id)
	}
	if !ValidID(id) {
		return fmt.Errorf("device_id %q must be 1-64 characters of letters, digits, '.', '_' and '-', starting with a letter or digit", id)
	}
	return nil
}

// SignedAtField is a field of the signed part of the fleet server's TUF
// timestamp metadata: the time (RFC 3339, UTC) the server signed it. A
// device keeps the newest one it verified as a floor for its clock, so a
// clock set back never makes expired metadata look fresh.
const SignedAtField = "x-aftercare-signed-at"

// AssignmentPath is the target path of a device's assignment in the
// rollout repository. The succinct hash-bin delegation puts it in the bin
// of sha256(path), which the device computes itself.
func AssignmentPath(deviceID string) string { return "devices/" + deviceID }

// AssignmentCustom is the custom field of a device's entry in the rollout
// repository. The entry's length and hashes are those of the release image;
// the device installs it only when the release repository signs the same
// length and hashes for Target.
type AssignmentCustom struct {
	Target    string `json:"target"`     // release repository target path
	RolloutID string `json:"rollout_id"` // the rollout that assigned it
	// Windows, when set, are the only times the device may install and
	// reboot: its site's weekly maintenance windows for the coming weeks,
	// computed by the server in the site's time zone and given in UTC, so
	// the device needs neither time zone data nor DST rules. Empty means
	// any time.
	Windows []Window `json:"windows,omitempty"`
}

// maxWindows bounds the windows of one assignment.
const maxWindows = 256

// A Window is one interval [Start, End) in which a device may install.
type Window struct {
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
}

// InWindow reports whether t falls inside one of windows, and when not, the
// start of the next one (zero when none is left). An empty list allows any
// time.
func InWindow(windows []Window, t time.Time) (bool, time.Time) {
	if len(windows) == 0 {
		return true, time.Time{}
	}
	var next time.Time
	for _, w := range windows {
		if !t.Before(w.Start) && t.Before(w.End) {
			return true, time.Time{}
		}
		if w.Start.After(t) && (next.IsZero() || w.Start.Before(next)) {
			next = w.Start
		}
	}
	return false, next
}

// Validate reports every invalid field at once.
func (a *AssignmentCustom) Validate() error {
	var errs []error
	if a.Target == "" || len(a.Target) > 256 {
		errs = append(errs, fmt.Errorf("assignment target %q must be 1-256 characters", a.Target))
	}
	if !ValidID(a.RolloutID) {
		errs = append(errs, fmt.Errorf("assignment rollout_id %q is not a valid ID", a.RolloutID))
	}
	if len(a.Windows) > maxWindows {
		errs = append(errs, fmt.Errorf("assignment has %d windows, more than the %d allowed", len(a.Windows), maxWindows))
	}
	for i, w := range a.Windows {
		if !w.End.After(w.Start) {
			errs = append(errs, fmt.Errorf("assignment window %d ends (%s) before it starts (%s)", i, w.End, w.Start))
		}
	}
	return errors.Join(errs...)
}

// ParseAssignmentCustom decodes and validates the custom field of a
// rollout repository entry.
func ParseAssignmentCustom(b []byte) (*AssignmentCustom, error) {
	var a AssignmentCustom
	if err := Decode(b, &a); err != nil {
		return nil, err
	}
	if err := a.Validate(); err != nil {
		return nil, err
	}
	return &a, nil
}

// Decode parses one JSON value of at most MaxPayloadBytes into v, rejecting
// unknown fields and trailing data.
func Decode(b []byte, v any) error {
	if len(b) > MaxPayloadBytes {
		return fmt.Errorf("payload is %d bytes, more than the %d allowed", len(b), MaxPayloadBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("decode %T: %w", v, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("decode %T: trailing data after the JSON value", v)
	}
	return nil
}

// ParseStateReport decodes and validates a state report payload.
func ParseStateReport(b []byte) (*StateReport, error) {
	var r StateReport
	if err := Decode(b, &r); err != nil {
		return nil, err
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return &r, nil
}

// ParseHint decodes a hint payload.
func ParseHint(b []byte) (*Hint, error) {
	var h Hint
	if err := Decode(b, &h); err != nil {
		return nil, err
	}
	if h.Format != Format {
		return nil, fmt.Errorf("hint format %d is not supported (want %d)", h.Format, Format)
	}
	return &h, nil
}
