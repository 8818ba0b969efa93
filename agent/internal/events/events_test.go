package events

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aftercare/aftercare/protocol"
)

var now = time.Date(2026, 11, 23, 2, 14, 0, 0, time.UTC)

func fixedNow() time.Time { return now }

func TestClassify(t *testing.T) {
	tests := []struct {
		name, app, msg   string
		wantCat          protocol.Category
		wantUser, remote string
	}{
		{"sshd-password", "sshd", "Failed password for root from 10.0.0.9 port 51122 ssh2", protocol.CategoryAuth, "root", "10.0.0.9"},
		{"sshd-invalid-user", "sshd", "Failed password for invalid user bob from 10.0.0.7 port 2 ssh2", protocol.CategoryAuth, "bob", "10.0.0.7"},
		{"sshd-unknown-user", "sshd", "Invalid user admin from 192.0.2.4 port 4242", protocol.CategoryAuth, "admin", "192.0.2.4"},
		{"pam-unix", "sshd", "pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost=10.0.0.9  user=root", protocol.CategoryAuth, "root", "10.0.0.9"},
		{"login", "login", "FAILED LOGIN (1) on '/dev/tty1' FOR 'service', Authentication failure", protocol.CategoryAuth, "service", ""},
		{"accepted-is-not-failure", "sshd", "Accepted publickey for root from 10.0.0.9 port 5 ssh2", protocol.CategoryApp, "", ""},
		{"forged-field-name", "app", "user=root rhost=evil Failed password for", protocol.CategoryApp, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := Classify(protocol.SourceSyslog, tt.app, tt.msg, protocol.CategoryApp, protocol.SeverityInfo)
			e.Seq, e.Time = 1, now
			if err := e.Validate(); err != nil {
				t.Fatalf("Classify(%q) made an invalid event: %v", tt.msg, err)
			}
			if e.Category != tt.wantCat || e.Fields["user"] != tt.wantUser || e.Fields["remote"] != tt.remote {
				t.Fatalf("Classify(%q) = %s user=%q remote=%q; want %s %q %q", tt.msg, e.Category, e.Fields["user"], e.Fields["remote"], tt.wantCat, tt.wantUser, tt.remote)
			}
			if tt.wantCat == protocol.CategoryAuth && (e.Severity != protocol.SeverityWarning || e.Fields["event"] != EventLoginFailure) {
				t.Fatalf("Classify(%q) = severity %s event %q; want warning %s", tt.msg, e.Severity, e.Fields["event"], EventLoginFailure)
			}
		})
	}
	t.Run("invalid-utf8-and-long", func(t *testing.T) {
		e := Classify("file", "", "\xff"+strings.Repeat("é", 2000), protocol.CategoryApp, protocol.SeverityInfo)
		e.Seq, e.Time = 1, now
		if err := e.Validate(); err != nil {
			t.Fatalf("Classify(long invalid) made an invalid event: %v", err)
		}
	})
}

func TestParseSyslog(t *testing.T) {
	tests := []struct {
		name, in       string
		app, msg, host string
		facility, sev  int
		wantErr        bool
	}{
		{"rfc5424", `<38>1 2026-11-23T02:14:05.003Z pump-7 sshd 812 - - Failed password for root from 10.0.0.9 port 51122 ssh2`, "sshd", "Failed password for root from 10.0.0.9 port 51122 ssh2", "pump-7", 4, 6, false},
		{"rfc5424-sd-escaped", `<165>1 2026-11-23T02:14:05Z host infusion 1 ID47 [exampleSDID@32473 iut="3" note="a \] b"][x@1 y="z"] ` + "\uFEFF" + `dose limit override`, "infusion", "dose limit override", "host", 20, 5, false},
		{"rfc5424-nil", `<14>1 - - - - - -`, "", "", "", 1, 6, false},
		{"rfc3164-local", `<86>Nov 23 02:14:05 sshd[812]: Failed password for root from 10.0.0.9 port 51122 ssh2`, "sshd", "Failed password for root from 10.0.0.9 port 51122 ssh2", "", 10, 6, false},
		{"rfc3164-host", `<13>Nov  3 02:14:05 pump-7 infusion: pressure alarm`, "infusion", "pressure alarm", "pump-7", 1, 5, false},
		{"rfc3164-no-tag", `<13>just text`, "", "just text", "", 1, 5, false},
		{"no-pri", `hello`, "", "", "", 0, 0, true},
		{"pri-too-big", `<999>1 - - - - - -`, "", "", "", 0, 0, true},
		{"bad-5424-time", `<13>1 yesterday h a p m - x`, "", "", "", 0, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := ParseSyslog([]byte(tt.in), 2026, time.UTC)
			if (err != nil) != tt.wantErr {
				t.Fatalf("ParseSyslog(%q) error = %v, want error %v", tt.in, err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if m.App != tt.app || m.Message != tt.msg || m.Hostname != tt.host || m.Facility != tt.facility || m.Severity != tt.sev {
				t.Fatalf("ParseSyslog(%q) = %+v; want app %q msg %q host %q facility %d severity %d", tt.in, m, tt.app, tt.msg, tt.host, tt.facility, tt.sev)
			}
		})
	}
}

func FuzzParseSyslog(f *testing.F) {
	f.Add([]byte(`<38>1 2026-11-23T02:14:05.003Z pump-7 sshd 812 - [a b="\]"] msg`))
	f.Add([]byte(`<86>Nov 23 02:14:05 sshd[812]: Failed password for root from 10.0.0.9 port 51122 ssh2`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseSyslog(b, 2026, time.UTC)
		if err != nil {
			return
		}
		e := Classify(protocol.SourceSyslog, m.App, m.Message, protocol.CategoryApp, protocol.SeverityFromSyslog(m.Severity))
		e.Seq, e.Time = 1, now
		if err := e.Validate(); err != nil {
			t.Fatalf("syslog message %q made an invalid event: %v", b, err)
		}
	})
}

// collect runs src until it has emitted n events.
func collect(t *testing.T, src Source, n int, send func()) []protocol.Event {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan protocol.Event, n)
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, func(e protocol.Event) { got <- e }) }()
	send()
	var out []protocol.Event
	for len(out) < n {
		out = append(out, <-got)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("%s Run() = %v", src.Name(), err)
	}
	return out
}

func TestSyslogSocket(t *testing.T) {
	// Unix socket paths are limited to ~108 bytes; t.TempDir can be longer.
	dir, err := os.MkdirTemp("", "ev")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "log")
	s, err := ListenSyslog(path, fixedNow)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	msgs := []string{
		`<38>1 2026-11-23T02:14:05Z pump-7 sshd 812 - - Failed password for root from 10.0.0.9 port 51122 ssh2`,
		`<86>Nov 23 02:14:06 sshd[812]: Invalid user admin from 10.0.0.9 port 4242`,
		`<11>Nov 23 02:14:07 infusion: occlusion sensor fault`,
		"garbage \xff without priority",
	}
	events := collect(t, s, len(msgs), func() {
		c, err := net.Dial("unixgram", path)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for _, m := range msgs {
			if _, err := c.Write([]byte(m)); err != nil {
				t.Fatal(err)
			}
		}
	})
	want := []struct {
		cat protocol.Category
		sev protocol.Severity
	}{
		{protocol.CategoryAuth, protocol.SeverityWarning},
		{protocol.CategoryAuth, protocol.SeverityWarning},
		{protocol.CategoryApp, protocol.SeverityError},
		{protocol.CategoryApp, protocol.SeverityNotice},
	}
	for i, e := range events {
		e.Seq = 1
		if err := e.Validate(); err != nil || e.Category != want[i].cat || e.Severity != want[i].sev || !e.Time.Equal(now) {
			t.Errorf("event %d from %q = %+v (%v); want %s/%s at the device's time", i, msgs[i], e, err, want[i].cat, want[i].sev)
		}
	}
}

func TestTailFollowsRotationAndTruncation(t *testing.T) {
	dir := t.TempDir()
	path, state := filepath.Join(dir, "auth.log"), filepath.Join(dir, "tail.json")
	write := func(name, s string, flag int) {
		t.Helper()
		f, err := os.OpenFile(name, flag|os.O_WRONLY|os.O_CREATE, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString(s); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	write(path, "old history line\n", os.O_TRUNC)
	newTail := func() *Tail {
		tl, err := NewTail(TailOptions{Path: path, StatePath: state, App: "sshd", Now: fixedNow})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(tl.close)
		return tl
	}
	tl := newTail()
	var got []string
	emit := func(e protocol.Event) { got = append(got, e.Message) }
	poll := func(tl *Tail) {
		t.Helper()
		if err := tl.Poll(emit); err != nil {
			t.Fatalf("Poll() = %v", err)
		}
	}
	poll(tl)
	write(path, "Failed password for root from 10.0.0.9 port 1 ssh2\npart", os.O_APPEND)
	poll(tl)
	write(path, "ial line\n", os.O_APPEND)
	poll(tl)
	// Rotation: the old file gets one more line after the rename, then a
	// new file appears under the path.
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	write(path+".1", "last line of old file\n", os.O_APPEND)
	write(path, "first line of new file\n", os.O_TRUNC)
	poll(tl)
	// Truncation in place.
	write(path, "after truncate\n", os.O_TRUNC)
	poll(tl)
	// A restart resumes where the last one stopped.
	tl.close()
	write(path, "while stopped\n", os.O_APPEND)
	poll(newTail())
	want := []string{"Failed password for root from 10.0.0.9 port 1 ssh2", "partial line", "last line of old file", "first line of new file", "after truncate", "while stopped"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("Tail emitted %q\nwant %q", got, want)
	}
}

func TestJournalWithFakeJournalctl(t *testing.T) {
	// No journald runs in the test container: a fake journalctl on PATH
	// prints real `journalctl -o json` lines (testdata/journal.jsonl) and
	// records its arguments.
	dir := t.TempDir()
	fixture, err := filepath.Abs("testdata/journal.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	script := "#!/bin/sh\necho \"$@\" >> " + filepath.Join(dir, "args") + "\ncat " + fixture + "\n"
	if err := os.WriteFile(filepath.Join(dir, "journalctl"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	cursorPath := filepath.Join(dir, "cursor")
	j, err := NewJournal(JournalOptions{CursorPath: cursorPath, Now: fixedNow})
	if err != nil {
		t.Fatal(err)
	}
	var got []protocol.Event
	for range 2 {
		err := j.Run(context.Background(), func(e protocol.Event) { got = append(got, e) })
		if err == nil || !strings.Contains(err.Error(), "exited") {
			t.Fatalf("Run() = %v, want journalctl exited", err)
		}
	}
	// Both runs see the fixture: the sshd failure and the PAM failure
	// (auth), and the kernel error with a binary MESSAGE is not critical.
	if len(got) != 4 {
		t.Fatalf("Run() emitted %d events, want 4: %+v", len(got), got)
	}
	for _, e := range got[:2] {
		if e.Category != protocol.CategoryAuth || e.Fields["event"] != EventLoginFailure || e.Fields["unit"] != "ssh.service" || e.Fields["remote"] != "10.0.0.9" {
			t.Errorf("journal event = %+v; want an sshd login failure", e)
		}
	}
	if !got[0].Time.Equal(time.UnixMicro(1795399205000000)) {
		t.Errorf("journal event time = %v, want the entry's realtime stamp", got[0].Time)
	}
	args, _ := os.ReadFile(filepath.Join(dir, "args"))
	lines := strings.Split(strings.TrimSpace(string(args)), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "--lines 0") || !strings.Contains(lines[1], "--after-cursor s=8f1c;i=1a4;") {
		t.Fatalf("journalctl args = %q; want --lines 0 first, then --after-cursor with the last handled cursor", lines)
	}
}
