// Package problem names the kinds of failure the fleet server's domain
// packages report, so the HTTP edge can map each to one status code without
// knowing where it came from.
package problem

import (
	"errors"
	"strings"
)

// Sentinels wrapped by domain errors. The HTTP edge maps them to 404, 409,
// 403 and 401.
var (
	ErrNotFound     = errors.New("not found")
	ErrConflict     = errors.New("conflict")
	ErrForbidden    = errors.New("forbidden")
	ErrUnauthorized = errors.New("unauthorized")
)

// An InvalidError lists every problem with an input. It maps to 400.
type InvalidError struct {
	Problems []string
}

func (e *InvalidError) Error() string { return "invalid input: " + strings.Join(e.Problems, "; ") }

// Invalid returns an *InvalidError for the given problems, or nil when there
// are none.
func Invalid(problems ...string) error {
	if len(problems) == 0 {
		return nil
	}
	return &InvalidError{Problems: problems}
}

// InvalidFrom wraps err (typically an errors.Join of validation failures) as
// an *InvalidError with one problem per joined error.
func InvalidFrom(err error) error {
	if err == nil {
		return nil
	}
	var problems []string
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			problems = append(problems, e.Error())
		}
	} else {
		problems = strings.Split(err.Error(), "\n")
	}
	return &InvalidError{Problems: problems}
}
