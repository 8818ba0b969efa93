// Package jsonpos turns encoding/json errors into messages that name the
// line, column and field, so whoever wrote a rejected document can find the
// problem.
package jsonpos

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// Describe returns a message for err, an error from decoding b, naming the
// line and column (and the field, for a type mismatch). Other errors keep
// their own text.
func Describe(err error, b []byte) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		// Offset counts the bytes read, the bad one included.
		line, col := Position(b, syn.Offset-1)
		return fmt.Sprintf("line %d column %d: %v", line, col, syn)
	case errors.As(err, &typ):
		line, col := Position(b, typ.Offset)
		field := typ.Field
		if field == "" {
			field = "(document)"
		}
		return fmt.Sprintf("line %d column %d: field %s: a JSON %s cannot be a %s", line, col, field, typ.Value, typ.Type)
	}
	return err.Error()
}

// Position turns a byte offset into b into a 1-based line and column.
func Position(b []byte, offset int64) (line, col int) {
	offset = max(0, min(offset, int64(len(b))))
	head := b[:offset]
	line = bytes.Count(head, []byte("\n")) + 1
	col = int(offset) - bytes.LastIndexByte(head, '\n')
	return line, col
}

// CheckDepth returns an error naming the line where b, a JSON text, nests
// deeper than maxDepth, without decoding it.
func CheckDepth(b []byte, maxDepth int) error {
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
				line, col := Position(b, int64(i))
				return fmt.Errorf("line %d column %d: JSON nested deeper than %d levels", line, col, maxDepth)
			}
		case '}', ']':
			depth--
		}
	}
	return nil
}
