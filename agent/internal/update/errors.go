package update

import (
	"errors"
	"fmt"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/aftercare/aftercare/agent/internal/slowread"
)

// ErrRefused is wrapped by every VerifyError: the device will not install
// the assignment because the signed metadata does not allow it.
var ErrRefused = errors.New("update: assignment refused")

// Codes name why the device refused. Each report of a refusal starts with
// one, so the server (and whoever reads the device's security events) can
// tell the attacks apart.
const (
	CodeNotSigned     = "not signed"            // the release repository has no entry for the assigned target
	CodeSignature     = "bad signature"         // metadata not signed to threshold by keys the trusted root names
	CodeExpired       = "metadata expired"      // a frozen repository, or a device clock below the signed time
	CodeRollback      = "metadata rollback"     // a version older than one already trusted
	CodeTooLarge      = "endless data"          // more bytes than signed or allowed
	CodeMismatch      = "metadata mismatch"     // a file that differs from its signed length or hash
	CodeInvalid       = "invalid metadata"      // metadata that does not parse or is inconsistent
	CodeDisagree      = "repositories disagree" // rollout and release repositories sign different images
	CodeBadAssignment = "invalid assignment"    // an assignment entry the device cannot use
	CodeModel         = "model mismatch"        // the release is not for this hardware
	CodeDowngrade     = "downgrade"             // older than the running release, without the signed rollback flag
)

// A VerifyError reports why the agent refused an assignment or a
// repository. errors.Is(err, ErrRefused) holds for every VerifyError.
type VerifyError struct {
	Target string // release target path, or "" when no target was reached
	Code   string // one of the Code constants
	Detail string // what was found, and what it likely means
	Err    error  // underlying cause, or nil
}

func (e *VerifyError) Error() string {
	msg := e.Code
	if e.Detail != "" {
		msg += ": " + e.Detail
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}
func (e *VerifyError) Unwrap() error        { return e.Err }
func (e *VerifyError) Is(target error) bool { return target == ErrRefused }

// netError marks a transport failure, as opposed to a bad response.
type netError struct{ err error }

func (e *netError) Error() string { return e.err.Error() }
func (e *netError) Unwrap() error { return e.err }

// classify turns a go-tuf refresh error of the named repository into a
// refusal with a code and a reason a person can act on. A network failure
// or an unavailable server is passed through (the device retries later),
// and so is slow retrieval, which wraps slowread.ErrTooSlow.
func classify(repo string, err error) error {
	var httpErr *metadata.ErrDownloadHTTP
	var netErr *netError
	refuse := func(code, detail string) error {
		return &VerifyError{Code: code, Detail: repo + " repository: " + detail, Err: err}
	}
	switch {
	case errors.Is(err, slowread.ErrTooSlow):
		return fmt.Errorf("%s repository: %w", repo, err)
	case errors.As(err, &netErr):
		return fmt.Errorf("%s repository unreachable: %w", repo, err)
	case errors.As(err, &httpErr) && (httpErr.StatusCode >= 500 || httpErr.StatusCode == 404):
		return fmt.Errorf("%s repository unavailable: %w", repo, err)
	case errors.Is(err, &metadata.ErrExpiredMetadata{}):
		return refuse(CodeExpired, "the repository is frozen (its signed metadata expired) or the device clock is wrong")
	case errors.Is(err, &metadata.ErrUnsignedMetadata{}):
		return refuse(CodeSignature, "metadata is not signed to threshold by keys the trusted root names; it was altered or signed with an unknown or revoked key")
	case errors.Is(err, &metadata.ErrEqualVersionNumber{}), errors.Is(err, &metadata.ErrBadVersionNumber{}):
		return refuse(CodeRollback, "metadata is older than metadata already trusted; an old repository state is being replayed")
	case errors.Is(err, &metadata.ErrDownloadLengthMismatch{}):
		return refuse(CodeTooLarge, "a metadata file is larger than signed or allowed; the download was stopped at the limit")
	case errors.Is(err, &metadata.ErrLengthOrHashMismatch{}):
		return refuse(CodeMismatch, "a metadata file does not match the length or hash its parent signed; files from different repository states were mixed, or a mirror altered one")
	}
	return refuse(CodeInvalid, "the metadata does not verify")
}
