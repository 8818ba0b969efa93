package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/aftercare/aftercare/internal/atomicfile"
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
