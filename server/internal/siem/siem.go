// Package siem turns stored device security events into what a SIEM
// ingests: RFC 5424 syslog messages (sent over TCP, RFC 6587, or TLS, RFC
// 5425, with octet-counting framing), ArcSight CEF lines, or JSON lines.
package siem

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/aftercare/aftercare/protocol"
	"github.com/aftercare/aftercare/server/internal/store"
)

// The export formats.
const (
	FormatRFC5424 = "rfc5424"
	FormatCEF     = "cef"
	FormatJSON    = "jsonl"
)

// Formats lists the export formats.
var Formats = []string{FormatRFC5424, FormatCEF, FormatJSON}

// enterpriseID names Aftercare's structured data elements. 32473 is the
// example enterprise number of RFC 5612; a deployment registered with IANA
// would use its own.
const enterpriseID = "32473"

// Syslog facilities (RFC 5424 §6.2.1).
const (
	facilityAuthPriv = 10
	facilityLocal0   = 16
)

// Format renders e in format f, without a trailing newline.
func Format(f string, e store.StoredEvent) (string, error) {
	switch f {
	case FormatRFC5424:
		return RFC5424(e), nil
	case FormatCEF:
		return CEF(e), nil
	case FormatJSON:
		b, err := json.Marshal(e)
		return string(b), err
	}
	return "", fmt.Errorf("export format %q is not one of %q", f, Formats)
}

// RFC5424 renders e as an RFC 5424 syslog message: HOSTNAME is the device
// ID, APP-NAME "aftercare", MSGID the category, and the structured data
// carries the site, sequence number, source and the event's fields.
func RFC5424(e store.StoredEvent) string {
	facility := facilityLocal0
	if e.Category == protocol.CategoryAuth {
		facility = facilityAuthPriv
	}
	pri := facility*8 + e.Severity.SyslogCode()
	var sd strings.Builder
	sd.WriteString("[event@" + enterpriseID)
	param(&sd, "site", e.SiteID)
	param(&sd, "seq", strconv.FormatUint(e.Seq, 10))
	param(&sd, "source", e.Source)
	param(&sd, "severity", string(e.Severity))
	if e.Dropped > 0 {
		param(&sd, "dropped", strconv.FormatUint(e.Dropped, 10))
	}
	sd.WriteString("]")
	if len(e.Fields) > 0 {
		sd.WriteString("[fields@" + enterpriseID)
		for _, k := range sortedKeys(e.Fields) {
			param(&sd, k, e.Fields[k])
		}
		sd.WriteString("]")
	}
	// §6.4: a UTF-8 MSG starts with the byte order mark.
	return fmt.Sprintf("<%d>1 %s %s aftercare - %s %s \uFEFF%s", pri, e.Time.UTC().Format(time.RFC3339Nano),
		header(e.DeviceID, 255), header(string(e.Category), 32), sd.String(), oneLine(e.Message))
}

// param appends one SD-PARAM; §6.3.3: PARAM-NAME is 1-32 printable ASCII
// but '=', ' ', ']', '"'; the value escapes '"', '\' and ']'.
func param(b *strings.Builder, name, value string) {
	name = strings.Map(func(r rune) rune {
		if r <= 32 || r >= 127 || r == '=' || r == ']' || r == '"' {
			return '_'
		}
		return r
	}, name)
	if len(name) > 32 {
		name = name[:32]
	}
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, `]`, `\]`)
	b.WriteString(" " + name + `="` + r.Replace(value) + `"`)
}

// header makes a header field: printable ASCII without spaces, at most n
// characters, "-" when empty (§6.2).
func header(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if r <= 32 || r >= 127 {
			return '_'
		}
		return r
	}, s)
	if s == "" {
		return "-"
	}
	if len(s) > n {
		s = s[:n]
	}
	return s
}

// oneLine keeps a message on one line for line-based receivers.
func oneLine(s string) string { return strings.NewReplacer("\r", `\r`, "\n", `\n`).Replace(s) }

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// cefSeverity maps a severity to CEF's 0-10.
var cefSeverity = map[protocol.Severity]int{
	protocol.SeverityDebug: 0, protocol.SeverityInfo: 1, protocol.SeverityNotice: 3, protocol.SeverityWarning: 5,
	protocol.SeverityError: 7, protocol.SeverityCritical: 8, protocol.SeverityAlert: 9, protocol.SeverityEmergency: 10,
}

// CEF renders e as an ArcSight Common Event Format line.
func CEF(e store.StoredEvent) string {
	hdr := strings.NewReplacer(`\`, `\\`, `|`, `\|`, "\n", " ", "\r", " ")
	sig := string(e.Category)
	if ev := e.Fields["event"]; ev != "" {
		sig += ":" + ev
	}
	name := e.Message
	if len(name) > 128 {
		name = name[:128]
	}
	ext := []string{
		"rt=" + strconv.FormatInt(e.Time.UnixMilli(), 10),
		"dvchost=" + extValue(e.DeviceID),
		"deviceExternalId=" + extValue(e.DeviceID),
		"cs1Label=site", "cs1=" + extValue(e.SiteID),
		"cs2Label=source", "cs2=" + extValue(e.Source),
		"cn1Label=seq", "cn1=" + strconv.FormatUint(e.Seq, 10),
		"msg=" + extValue(e.Message),
	}
	if u := e.Fields["user"]; u != "" {
		ext = append(ext, "duser="+extValue(u))
	}
	if r := e.Fields["remote"]; r != "" {
		if net.ParseIP(r) != nil {
			ext = append(ext, "src="+r)
		} else {
			ext = append(ext, "shost="+extValue(r))
		}
	}
	return fmt.Sprintf("CEF:0|Aftercare|aftercare-server|1|%s|%s|%d|%s",
		hdr.Replace(sig), hdr.Replace(name), cefSeverity[e.Severity], strings.Join(ext, " "))
}

// extValue escapes a CEF extension value: '\', '=' and line breaks.
func extValue(s string) string {
	return strings.NewReplacer(`\`, `\\`, `=`, `\=`, "\n", `\n`, "\r", `\r`).Replace(s)
}

// A Sender writes exported lines to a SIEM over TCP or TLS. It is not safe
// for concurrent use.
type Sender struct {
	conn   net.Conn
	format string
}

// dialTimeout bounds the connection to the SIEM.
const dialTimeout = 15 * time.Second

// Dial connects to target, "tcp://host:port" or "tls://host:port"; tlsConf
// (nil: system roots) verifies a TLS receiver. Syslog messages are framed
// by octet counting (RFC 6587 §3.4.1, RFC 5425 §4.3); CEF and JSON lines
// end with a newline.
func Dial(ctx context.Context, target, format string, tlsConf *tls.Config) (*Sender, error) {
	u, err := url.Parse(target)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("export target %q is not tcp://host:port or tls://host:port", target)
	}
	d := &net.Dialer{Timeout: dialTimeout}
	var conn net.Conn
	switch u.Scheme {
	case "tcp":
		conn, err = d.DialContext(ctx, "tcp", u.Host)
	case "tls":
		conf := &tls.Config{MinVersion: tls.VersionTLS12}
		if tlsConf != nil {
			conf = tlsConf.Clone()
		}
		if conf.ServerName == "" {
			conf.ServerName = u.Hostname()
		}
		conn, err = (&tls.Dialer{NetDialer: d, Config: conf}).DialContext(ctx, "tcp", u.Host)
	default:
		return nil, fmt.Errorf("export target %q: scheme must be tcp or tls", target)
	}
	if err != nil {
		return nil, fmt.Errorf("connect to SIEM %s: %w", u.Host, err)
	}
	return &Sender{conn: conn, format: format}, nil
}

// Send writes one formatted event.
func (s *Sender) Send(line string) error {
	var frame string
	if s.format == FormatRFC5424 {
		frame = strconv.Itoa(len(line)) + " " + line
	} else {
		frame = line + "\n"
	}
	s.conn.SetWriteDeadline(time.Now().Add(dialTimeout))
	if _, err := s.conn.Write([]byte(frame)); err != nil {
		return fmt.Errorf("send to SIEM: %w", err)
	}
	return nil
}

// Close closes the connection.
func (s *Sender) Close() error {
	if s == nil || s.conn == nil {
		return errors.New("siem: not connected")
	}
	return s.conn.Close()
}
