package sbom

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// checkJSON refuses a document nested deeper than maxDepth, before any
// decoder builds it, and names the line where it happens. It also turns a
// syntax error into a line and column.
func checkJSON(b []byte, maxDepth int) error {
	depth := 0
	inString, escaped := false, false
	for i, c := range b {
		if inString {
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
			continue
		}
		switch c {
		case '"':
			inString = true
		case '{', '[':
			depth++
			if depth > maxDepth {
				line, col := position(b, int64(i))
				return invalid(fmt.Sprintf("line %d column %d: JSON nested deeper than %d levels (sbom max_depth)", line, col, maxDepth))
			}
		case '}', ']':
			depth--
		}
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

// jsonError names the line and column (and field, for type errors) of a
// JSON decoding error.
func jsonError(err error, b []byte) error {
	if err == nil {
		return nil
	}
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		// Offset counts the bytes read, the bad one included.
		line, col := position(b, syn.Offset-1)
		return invalid(fmt.Sprintf("line %d column %d: %v", line, col, syn))
	case errors.As(err, &typ):
		line, col := position(b, typ.Offset)
		field := typ.Field
		if field == "" {
			field = "(document)"
		}
		return invalid(fmt.Sprintf("line %d column %d: field %s: a JSON %s cannot be a %s", line, col, field, typ.Value, typ.Type))
	}
	return invalid(err.Error())
}

// position turns a byte offset into a 1-based line and column.
func position(b []byte, offset int64) (line, col int) {
	offset = max(0, min(offset, int64(len(b))))
	head := b[:offset]
	line = bytes.Count(head, []byte("\n")) + 1
	col = int(offset) - bytes.LastIndexByte(head, '\n')
	return line, col
}
