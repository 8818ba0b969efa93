package events

import (
	"regexp"
	"strings"

	"github.com/aftercare/aftercare/protocol"
)

// EventLoginFailure is the "event" field of a failed login.
const EventLoginFailure = "login_failure"

// authFailure matches the failed-login lines of OpenSSH's sshd and of
// pam_unix, with the user and remote host where the line names them.
var authFailures = []*regexp.Regexp{
	// sshd: "Failed password for root from 10.0.0.9 port 51122 ssh2",
	// "Failed password for invalid user bob from ...".
	regexp.MustCompile(`^Failed (?:password|publickey|keyboard-interactive/pam|none) for (?:invalid user )?(?P<user>\S+) from (?P<remote>\S+)`),
	// sshd: "Invalid user bob from 10.0.0.9 port 4242".
	regexp.MustCompile(`^Invalid user (?P<user>\S*) from (?P<remote>\S+)`),
	// pam_unix: "pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost=10.0.0.9  user=root".
	regexp.MustCompile(`pam_unix\([^)]*\): authentication failure;.*?(?:rhost=(?P<remote>\S*))?\s*(?:user=(?P<user>\S+))?$`),
	// login(1) and su: "FAILED LOGIN (1) on '/dev/tty1' FOR 'root', Authentication failure".
	regexp.MustCompile(`FAILED LOGIN .* FOR '(?P<user>[^']*)'`),
}

// Classify turns one log message of app (the program name, may be empty)
// into an event of the given source and fallback category and severity.
// A failed login becomes category auth, severity warning, with the field
// event=login_failure and the user and remote host when known.
func Classify(source, app, msg string, fallback protocol.Category, sev protocol.Severity) protocol.Event {
	msg = truncateUTF8(strings.TrimSpace(msg), protocol.MaxEventMessage)
	e := protocol.Event{Source: source, Category: fallback, Severity: sev, Message: msg, Fields: map[string]string{}}
	if app != "" {
		e.Fields["app"] = clip(app)
	}
	for _, re := range authFailures {
		m := re.FindStringSubmatch(msg)
		if m == nil {
			continue
		}
		e.Category = protocol.CategoryAuth
		if e.Severity.Rank() < protocol.SeverityWarning.Rank() {
			e.Severity = protocol.SeverityWarning
		}
		e.Fields["event"] = EventLoginFailure
		for i, name := range re.SubexpNames() {
			if name != "" && m[i] != "" {
				e.Fields[name] = clip(m[i])
			}
		}
		break
	}
	if len(e.Fields) == 0 {
		e.Fields = nil
	}
	return e
}

func clip(s string) string { return truncateUTF8(s, protocol.MaxEventFieldValue) }

// truncateUTF8 cuts s to at most n bytes without splitting a character,
// and replaces invalid bytes so the result always validates.
func truncateUTF8(s string, n int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= n {
		return s
	}
	for n > 0 && !isRuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func isRuneStart(b byte) bool { return b&0xC0 != 0x80 }
