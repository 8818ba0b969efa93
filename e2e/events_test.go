package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestDeviceAuthFailuresRaiseAnAlertForItsSite runs the real agent with a
// syslog socket. The device's application logs six sshd login failures to
// it; the agent numbers them in its outbox and publishes them on its events
// topic; the server stores them and its built-in rule (5 failed logins in
// a minute) raises an alert. St. Mary's hospital IT sees the alert, the
// events and the device's timeline, exports them as RFC 5424 syslog to a
// SIEM listening on TCP, and acknowledges the alert; Lakeside's hospital
// IT sees none of it.
func TestDeviceAuthFailuresRaiseAnAlertForItsSite(t *testing.T) {
	s := startServer(t, serverOptions{})
	admin := s.cliEnv()
	runCLI(t, admin, "orgs", "create", "St. Mary Hospital")
	runCLI(t, admin, "orgs", "create", "Lakeside Clinic")
	var mary, lake site
	cliJSON(t, s, &mary, "site", "create", "St. Mary Radiology", "--organisation", "St. Mary Hospital")
	cliJSON(t, s, &lake, "site", "create", "Lakeside Cardiology", "--organisation", "Lakeside Clinic")
	runCLI(t, admin, "users", "create", "it-mary", "--role", "hospital_it", "--organisation", "St. Mary Hospital")
	runCLI(t, admin, "users", "create", "it-lakeside", "--role", "hospital_it", "--organisation", "Lakeside Clinic")
	maryEnv := []string{"AFTERCARE_SERVER=" + s.url, "AFTERCARE_TOKEN=" + strings.TrimSpace(runCLI(t, admin, "tokens", "create", "it-mary"))}
	lakeEnv := []string{"AFTERCARE_SERVER=" + s.url, "AFTERCARE_TOKEN=" + strings.TrimSpace(runCLI(t, admin, "tokens", "create", "it-lakeside"))}

	var toks struct{ Tokens []string }
	cliJSON(t, s, &toks, "site", "tokens", mary.ID, "--count", "1")
	dev := newAgentDevice(t, s, "PX1-SSH1")
	// The broker URL comes with enrollment (the embedded broker, mutual TLS).
	dev.configure(t, s, agentConfig{serverURL: s.url, token: toks.Tokens[0]})
	// Unix socket paths are short; t.TempDir() may be too long.
	sockDir, err := os.MkdirTemp("", "acev")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "log")
	f, err := os.OpenFile(dev.config, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "syslog_socket: %s\n", sock)
	f.Close()
	dev.run(t)
	d := waitDevice(t, s, dev.serial, 60*time.Second, "the device enrolled and reported", func(d devicePatch) bool { return d.LastSeq >= 1 })

	// The device's sshd logs through its syslog(3), RFC 3164 on the socket.
	waitFor(t, 30*time.Second, "the agent's syslog socket exists", func() bool { _, err := os.Stat(sock); return err == nil })
	c, err := net.Dial("unixgram", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	now := time.Now()
	for i := range 6 {
		msg := fmt.Sprintf("<38>%s sshd[812]: Failed password for root from 10.0.0.9 port %d ssh2", now.Format(time.Stamp), 51000+i)
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
	}

	type alert struct {
		ID       string `json:"id"`
		RuleID   string `json:"rule_id"`
		DeviceID string `json:"device_id"`
		Count    int    `json:"event_count"`
		AckedBy  string `json:"acked_by"`
	}
	var alerts struct{ Alerts []alert }
	waitFor(t, 60*time.Second, "St. Mary's IT sees the failed-logins alert over all six failures", func() bool {
		out, err := tryCLI(maryEnv, "alerts", "list", "--open", "--json")
		if err != nil || json.Unmarshal([]byte(out), &alerts) != nil {
			return false
		}
		return len(alerts.Alerts) == 1 && alerts.Alerts[0].Count == 6
	})
	if a := alerts.Alerts[0]; a.RuleID != "failed-logins" || a.DeviceID != d.ID {
		t.Fatalf("alert = %+v, want failed-logins on %s", a, d.ID)
	}

	// Lakeside's IT sees nothing of it.
	var none struct {
		Alerts []alert
		Events []json.RawMessage
	}
	if err := json.Unmarshal([]byte(runCLI(t, lakeEnv, "alerts", "list", "--json")), &none); err != nil || len(none.Alerts) != 0 {
		t.Fatalf("Lakeside's IT alerts: %+v, %v", none.Alerts, err)
	}
	if err := json.Unmarshal([]byte(runCLI(t, lakeEnv, "events", "list", "--json")), &none); err != nil || len(none.Events) != 0 {
		t.Fatalf("Lakeside's IT events: %d, %v", len(none.Events), err)
	}
	if _, err := tryCLI(lakeEnv, "events", "timeline", d.ID); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("Lakeside's IT reading St. Mary's timeline: %v", err)
	}
	if _, err := tryCLI(lakeEnv, "alerts", "ack", alerts.Alerts[0].ID); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("Lakeside's IT acknowledging St. Mary's alert: %v", err)
	}

	// St. Mary's IT: the timeline interleaves the state report and the
	// events, with no gap.
	tl := runCLI(t, maryEnv, "events", "timeline", d.ID, "--from", now.Add(-time.Hour).UTC().Format(time.RFC3339))
	if strings.Count(tl, "Failed password for root") != 6 || !strings.Contains(tl, "report") || !strings.Contains(tl, "no gaps") {
		t.Fatalf("timeline:\n%s", tl)
	}

	// Export to a SIEM: real RFC 5424 messages over TCP.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan []string, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer conn.Close()
		got <- readOctetCounted(conn)
	}()
	runCLI(t, maryEnv, "events", "export", "--category", "auth", "--format", "rfc5424", "--siem", "tcp://"+ln.Addr().String())
	msgs := <-got
	if len(msgs) != 6 {
		t.Fatalf("the SIEM received %d messages, want 6: %q", len(msgs), msgs)
	}
	for _, m := range msgs {
		if !strings.HasPrefix(m, "<84>1 ") || !strings.Contains(m, " "+d.ID+" aftercare - auth [event@32473 site=\""+mary.ID+"\"") ||
			!strings.Contains(m, `event="login_failure"`) || !strings.Contains(m, "Failed password for root from 10.0.0.9") {
			t.Fatalf("SIEM message is not the expected RFC 5424 line: %q", m)
		}
	}

	out := runCLI(t, maryEnv, "alerts", "ack", alerts.Alerts[0].ID, "--reason", "ticket INC-4711: pen test")
	if !strings.Contains(out, "acknowledged by it-mary") {
		t.Fatalf("alerts ack printed %q", out)
	}
	audit := runCLI(t, admin, "audit", "list", "--limit", "1000")
	if !strings.Contains(audit, "alert.ack") || !strings.Contains(audit, "INC-4711") {
		t.Fatalf("the audit log lacks the acknowledgement:\n%s", audit)
	}
}

// readOctetCounted reads RFC 6587 octet-counted frames until the sender
// closes the connection.
func readOctetCounted(conn net.Conn) []string {
	br := bufio.NewReader(conn)
	var out []string
	for {
		n, err := br.ReadString(' ')
		if err != nil {
			return out
		}
		size, err := strconv.Atoi(strings.TrimSpace(n))
		if err != nil || size <= 0 || size > 64<<10 {
			return out
		}
		b := make([]byte, size)
		if _, err := io.ReadFull(br, b); err != nil {
			return out
		}
		out = append(out, string(b))
	}
}
