package sbom

import (
	"encoding/json"

	"github.com/aftercare/aftercare/server/internal/jsonpos"
)

// checkJSON refuses a document nested deeper than maxDepth before any
// decoder builds it, and a document that is not JSON, naming the line.
func checkJSON(b []byte, maxDepth int) error {
	if err := jsonpos.CheckDepth(b, maxDepth); err != nil {
		return invalid(err.Error() + " (sbom max_depth)")
	}
	if !json.Valid(b) {
		var v any
		return jsonError(json.Unmarshal(b, &v), b)
	}
	return nil
}

// jsonUnmarshal decodes b into v, turning errors into line-numbered ones.
func jsonUnmarshal(b []byte, v any) error {
	return jsonError(json.Unmarshal(b, v), b)
}

// jsonError names the line and column (and field) of a decoding error.
func jsonError(err error, b []byte) error {
	if err == nil {
		return nil
	}
	return invalid(jsonpos.Describe(err, b))
}
