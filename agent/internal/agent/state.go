package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/aftercare/aftercare/internal/atomicfile"
	"github.com/aftercare/aftercare/protocol"
)

const stateFormat = 1

// refusal is an assignment the device refused; it is not retried until the
// server assigns something else.
type refusal struct {
	RolloutID string `json:"rollout_id"`
	Target    string `json:"target"`
	Reason    string `json:"reason"`
}

// stateFile is the agent's own small persisted state.
type stateFile struct {
	path string

	mu sync.Mutex
	v  struct {
		Format  int      `json:"format"`
		Refused *refusal `json:"refused,omitempty"`
	} // guarded by mu
}

func openState(path string) (*stateFile, error) {
	s := &stateFile{path: path}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		s.v.Format = stateFormat
		return s, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, &s.v); err != nil || s.v.Format != stateFormat {
		return nil, fmt.Errorf("agent state %s is damaged or of another format", path)
	}
	return s, nil
}

func (s *stateFile) refused(rolloutID, target string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.v.Refused != nil && s.v.Refused.RolloutID == rolloutID && s.v.Refused.Target == target
}

func (s *stateFile) refuse(rolloutID, target, reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.v.Refused = &refusal{RolloutID: rolloutID, Target: target, Reason: reason}
	if b, err := json.Marshal(s.v); err == nil {
		atomicfile.WriteFile(s.path, b, 0o600)
	}
}

// Identity is the device's enrolled identity, kept in the state directory
// with mode 0600.
type Identity struct {
	Format      int    `json:"format"`
	DeviceID    string `json:"device_id"`
	Credential  string `json:"credential"`
	SiteID      string `json:"site_id"`
	BrokerURL   string `json:"broker_url"`
	TopicPrefix string `json:"topic_prefix"`
}

// LogValue keeps the credential out of logs.
func (id Identity) LogValue() slog.Value { return slog.StringValue("device " + id.DeviceID) }

func identityPath(stateDir string) string { return filepath.Join(stateDir, "identity.json") }

// LoadIdentity reads the identity saved in stateDir; ok is false when the
// device has not enrolled yet.
func LoadIdentity(stateDir string) (id Identity, ok bool, err error) {
	b, err := os.ReadFile(identityPath(stateDir))
	if errors.Is(err, os.ErrNotExist) {
		return Identity{}, false, nil
	}
	if err != nil {
		return Identity{}, false, err
	}
	if err := json.Unmarshal(b, &id); err != nil || id.Format != stateFormat || !protocol.ValidID(id.DeviceID) {
		return Identity{}, false, fmt.Errorf("identity %s is damaged or of another format", identityPath(stateDir))
	}
	return id, true, nil
}

// Enroll trades a one-time enrollment token for an identity and saves it in
// stateDir. It refuses to enroll a device that already has an identity.
func Enroll(ctx context.Context, httpc *http.Client, serverURL, stateDir string, req protocol.EnrollRequest) (Identity, error) {
	if _, ok, err := LoadIdentity(stateDir); err != nil || ok {
		if err == nil {
			err = fmt.Errorf("already enrolled: %s exists", identityPath(stateDir))
		}
		return Identity{}, err
	}
	body, err := json.Marshal(req)
	if err != nil {
		return Identity{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, serverURL+"/api/v1/enroll", bytes.NewReader(body))
	if err != nil {
		return Identity{}, err
	}
	hr.Header.Set("Content-Type", "application/json")
	res, err := httpc.Do(hr)
	if err != nil {
		return Identity{}, fmt.Errorf("enroll: %w", err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(io.LimitReader(res.Body, protocol.MaxPayloadBytes+1))
	if err != nil {
		return Identity{}, fmt.Errorf("enroll: %w", err)
	}
	if res.StatusCode != http.StatusCreated {
		return Identity{}, fmt.Errorf("enroll: server answered %s: %s", res.Status, strings.TrimSpace(string(b)))
	}
	var er protocol.EnrollResponse
	if err := json.Unmarshal(b, &er); err != nil || !protocol.ValidID(er.DeviceID) || er.DeviceToken == "" {
		return Identity{}, fmt.Errorf("enroll: malformed answer from the server")
	}
	id := Identity{Format: stateFormat, DeviceID: er.DeviceID, Credential: er.DeviceToken, SiteID: er.SiteID, BrokerURL: er.BrokerURL, TopicPrefix: er.TopicPrefix}
	if !protocol.ValidTopicPrefix(id.TopicPrefix) {
		return Identity{}, fmt.Errorf("enroll: server gave an invalid topic prefix %q", id.TopicPrefix)
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return Identity{}, err
	}
	b, err = json.MarshalIndent(id, "", "  ")
	if err != nil {
		return Identity{}, err
	}
	if err := atomicfile.WriteFile(identityPath(stateDir), b, 0o600); err != nil {
		return Identity{}, err
	}
	return id, nil
}
