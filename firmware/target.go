package firmware

import (
	"encoding/json"
	"fmt"
)

// TargetCustom is the custom field of a release's entry in the signed TUF
// targets metadata. Because the targets role signs it, a device reads the
// release's version, models and raw image digest from here and nowhere else.
type TargetCustom struct {
	Manifest Manifest `json:"aftercare"`
	// AllowRollback, signed by the release keys, lets devices that run a
	// newer version install this release: the only way back to an older
	// release. It is a decision of release engineering, made when signing,
	// not part of the bundle.
	AllowRollback bool `json:"allow_rollback,omitempty"`
}

// ParseTargetCustom decodes and validates the custom field of a targets
// entry; raw is nil when the entry has none.
func ParseTargetCustom(raw *json.RawMessage) (*TargetCustom, error) {
	if raw == nil {
		return nil, fmt.Errorf("targets entry has no aftercare manifest in its custom field")
	}
	if len(*raw) > MaxManifestBytes*2 {
		return nil, fmt.Errorf("targets entry custom field is %d bytes, too large", len(*raw))
	}
	var c TargetCustom
	if err := json.Unmarshal(*raw, &c); err != nil {
		return nil, fmt.Errorf("decode targets entry custom field: %w", err)
	}
	if err := c.Manifest.Validate(); err != nil {
		return nil, fmt.Errorf("targets entry manifest: %w", err)
	}
	return &c, nil
}

// RawMessage encodes c for a targets entry's custom field.
func (c *TargetCustom) RawMessage() *json.RawMessage {
	b, err := json.Marshal(c)
	if err != nil {
		panic("firmware: marshal target custom: " + err.Error())
	}
	raw := json.RawMessage(b)
	return &raw
}
