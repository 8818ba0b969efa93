package events

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/aftercare/aftercare/protocol"
)

// maxDatagram bounds one syslog message read from the socket; longer ones
// are cut (RFC 5424 §6.1 lets a receiver truncate above 480 octets).
const maxDatagram = 8 << 10 // 8 KiB

// A SyslogMessage is one parsed RFC 5424 or RFC 3164 message.
type SyslogMessage struct {
	Facility int
	Severity int // RFC 5424 code: 0 emergency .. 7 debug
	Time     time.Time
	Hostname string
	App      string
	ProcID   string
	MsgID    string
	Message  string
}

// Syslog facilities that carry authentication messages (RFC 5424 §6.2.1).
const (
	facilityAuth     = 4
	facilityAuthPriv = 10
)

// ParseSyslog parses one syslog message: RFC 5424 when the version "1"
// follows the priority, otherwise RFC 3164 as glibc's syslog(3) writes it
// to a local socket ("<PRI>Mmm dd hh:mm:ss TAG[PID]: MSG", the hostname
// optional). year completes an RFC 3164 timestamp, which has none.
func ParseSyslog(b []byte, year int, loc *time.Location) (SyslogMessage, error) {
	s := strings.TrimRight(string(b), "\r\n\x00")
	var m SyslogMessage
	if !strings.HasPrefix(s, "<") {
		return m, errors.New("syslog message does not start with <PRI>")
	}
	end := strings.IndexByte(s, '>')
	if end < 2 || end > 4 {
		return m, fmt.Errorf("syslog priority %q is not 1-3 digits in <>", s[:min(len(s), 5)])
	}
	pri, err := strconv.Atoi(s[1:end])
	if err != nil || pri < 0 || pri > 191 {
		return m, fmt.Errorf("syslog priority %q is not 0-191", s[1:end])
	}
	m.Facility, m.Severity = pri/8, pri%8
	rest := s[end+1:]
	if v, ok := strings.CutPrefix(rest, "1 "); ok {
		return parse5424(m, v)
	}
	return parse3164(m, rest, year, loc)
}

// parse5424 parses what follows "<PRI>1 " (RFC 5424 §6).
func parse5424(m SyslogMessage, s string) (SyslogMessage, error) {
	parts := strings.SplitN(s, " ", 6)
	if len(parts) < 5 {
		return m, errors.New("RFC 5424 message has fewer than the TIMESTAMP HOSTNAME APP-NAME PROCID MSGID fields")
	}
	nil5424 := func(v string) string {
		if v == "-" {
			return ""
		}
		return v
	}
	if parts[0] != "-" {
		t, err := time.Parse(time.RFC3339Nano, parts[0])
		if err != nil {
			return m, fmt.Errorf("RFC 5424 timestamp %q: %w", parts[0], err)
		}
		m.Time = t
	}
	m.Hostname, m.App, m.ProcID, m.MsgID = nil5424(parts[1]), nil5424(parts[2]), nil5424(parts[3]), nil5424(parts[4])
	if len(parts) == 6 {
		m.Message = skipStructuredData(parts[5])
	}
	return m, nil
}

// skipStructuredData drops the STRUCTURED-DATA element(s) before MSG
// (RFC 5424 §6.3), honouring escaped ']' in parameter values, and a UTF-8
// byte order mark.
func skipStructuredData(s string) string {
	if strings.HasPrefix(s, "- ") || s == "-" {
		s = strings.TrimPrefix(strings.TrimPrefix(s, "-"), " ")
	} else {
		for strings.HasPrefix(s, "[") {
			i, esc := 1, false
			for ; i < len(s); i++ {
				switch {
				case esc:
					esc = false
				case s[i] == '\\':
					esc = true
				case s[i] == ']':
					goto closed
				}
			}
			return ""
		closed:
			s = s[i+1:]
		}
		s = strings.TrimPrefix(s, " ")
	}
	return strings.TrimPrefix(s, "\uFEFF")
}

// parse3164 parses what follows "<PRI>" in a BSD syslog message (RFC 3164
// §4.1.2-4.1.3): "Mmm dd hh:mm:ss [HOST] TAG[PID]: MSG".
func parse3164(m SyslogMessage, s string, year int, loc *time.Location) (SyslogMessage, error) {
	const stamp = "Jan _2 15:04:05"
	if len(s) >= len(stamp) {
		if t, err := time.ParseInLocation(stamp, s[:len(stamp)], loc); err == nil {
			m.Time = t.AddDate(year, 0, 0)
			s = strings.TrimPrefix(s[len(stamp):], " ")
		}
	}
	tag, msg, ok := strings.Cut(s, ": ")
	if ok && strings.Contains(tag, " ") {
		// "HOST TAG[PID]: MSG"
		host, t, _ := strings.Cut(tag, " ")
		m.Hostname, tag = host, t
	}
	if !ok || strings.Contains(tag, " ") || tag == "" {
		m.Message = s
		return m, nil
	}
	if i := strings.IndexByte(tag, '['); i > 0 && strings.HasSuffix(tag, "]") {
		m.ProcID = tag[i+1 : len(tag)-1]
		tag = tag[:i]
	}
	m.App, m.Message = tag, msg
	return m, nil
}

// Syslog receives the device application's syslog messages on a local
// unix datagram socket. It is a Source.
type Syslog struct {
	conn *net.UnixConn
	path string
	now  func() time.Time
}

// ListenSyslog creates the socket at path (replacing a stale one) readable
// and writable by the owner and group only.
func ListenSyslog(path string, now func() time.Time) (*Syslog, error) {
	if now == nil {
		now = time.Now
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale syslog socket %q: %w", path, err)
	}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("listen on syslog socket %q: %w", path, err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		conn.Close()
		return nil, fmt.Errorf("chmod syslog socket %q: %w", path, err)
	}
	return &Syslog{conn: conn, path: path, now: now}, nil
}

// Name implements Source.
func (s *Syslog) Name() string { return "syslog " + s.path }

// Close closes the socket and removes it.
func (s *Syslog) Close() error {
	err := s.conn.Close()
	os.Remove(s.path)
	return err
}

// Run implements Source: every datagram becomes one event; one that does
// not parse is kept as a raw app message so nothing is silently lost.
func (s *Syslog) Run(ctx context.Context, emit Emit) error {
	stop := context.AfterFunc(ctx, func() { s.conn.SetReadDeadline(time.Now()) })
	defer stop()
	buf := make([]byte, maxDatagram)
	for {
		n, _, err := s.conn.ReadFromUnix(buf)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read syslog socket: %w", err)
		}
		emit(s.event(buf[:n]))
	}
}

func (s *Syslog) event(b []byte) protocol.Event {
	now := s.now()
	m, err := ParseSyslog(b, now.Year(), now.Location())
	if err != nil {
		e := Classify(protocol.SourceSyslog, "", string(b), protocol.CategoryApp, protocol.SeverityNotice)
		e.Time = now
		return e
	}
	cat := protocol.CategoryApp
	if m.Facility == facilityAuth || m.Facility == facilityAuthPriv {
		cat = protocol.CategoryAuth
	}
	e := Classify(protocol.SourceSyslog, m.App, m.Message, cat, protocol.SeverityFromSyslog(m.Severity))
	// The device's own clock stamps the event; a sender's timestamp is
	// kept as a field only, since any local process can write anything.
	e.Time = now
	if !m.Time.IsZero() {
		if e.Fields == nil {
			e.Fields = map[string]string{}
		}
		e.Fields["sent_at"] = m.Time.UTC().Format(time.RFC3339)
	}
	return e
}
