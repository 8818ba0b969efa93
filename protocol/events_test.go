package protocol_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aftercare/aftercare/protocol"
)

func TestParseEventBatch(t *testing.T) {
	const ev = `{"seq":1,"time":"2026-11-23T02:00:00Z","source":"agent","category":"auth","severity":"warning","message":"m"}`
	many := strings.TrimSuffix(strings.Repeat(strings.Replace(ev, `"seq":1`, `"seq":SEQ`, 1)+",", 65), ",")
	for i := 1; strings.Contains(many, "SEQ"); i++ {
		many = strings.Replace(many, "SEQ", itoa(i), 1)
	}
	tests := []struct {
		name, payload string
		want          error
		wantText      string
	}{
		{"valid", `{"v":1,"device_id":"d1","events":[` + ev + `]}`, nil, ""},
		{"future-schema", `{"v":2,"device_id":"d1","events":[{"new":"shape"}]}`, protocol.ErrWrongSchema, "format 2"},
		{"no-version", `{"device_id":"d1","events":[` + ev + `]}`, protocol.ErrWrongSchema, "format missing"},
		{"not-json", `{"v":1,`, protocol.ErrMalformed, "not a JSON object"},
		{"unknown-field", `{"v":1,"device_id":"d1","events":[` + ev + `],"admin":true}`, protocol.ErrMalformed, "unknown field"},
		{"trailing", `{"v":1,"device_id":"d1","events":[` + ev + `]}{}`, protocol.ErrMalformed, "trailing data"},
		{"empty", `{"v":1,"device_id":"d1","events":[]}`, protocol.ErrMalformed, "no events"},
		{"wildcard-device", `{"v":1,"device_id":"d/+","events":[` + ev + `]}`, protocol.ErrMalformed, "wildcards"},
		{"bad-category", `{"v":1,"device_id":"d1","events":[` + strings.Replace(ev, `"auth"`, `"root"`, 1) + `]}`, protocol.ErrMalformed, `category "root"`},
		{"bad-severity", `{"v":1,"device_id":"d1","events":[` + strings.Replace(ev, `"warning"`, `"loud"`, 1) + `]}`, protocol.ErrMalformed, `severity "loud"`},
		{"zero-seq", `{"v":1,"device_id":"d1","events":[` + strings.Replace(ev, `"seq":1`, `"seq":0`, 1) + `]}`, protocol.ErrMalformed, "seq must be positive"},
		{"out-of-order", `{"v":1,"device_id":"d1","events":[` + strings.Replace(ev, `"seq":1`, `"seq":5`, 1) + "," + ev + `]}`, protocol.ErrMalformed, "increasing sequence"},
		{"no-time", `{"v":1,"device_id":"d1","events":[` + strings.Replace(ev, `"time":"2026-11-23T02:00:00Z",`, ``, 1) + `]}`, protocol.ErrMalformed, "time is missing"},
		{"bad-field-name", `{"v":1,"device_id":"d1","events":[` + strings.Replace(ev, `"message":"m"`, `"message":"m","fields":{"a b":"c"}`, 1) + `]}`, protocol.ErrMalformed, `field name "a b"`},
		{"long-message", `{"v":1,"device_id":"d1","events":[` + strings.Replace(ev, `"message":"m"`, `"message":"`+strings.Repeat("x", protocol.MaxEventMessage+1)+`"`, 1) + `]}`, protocol.ErrOversized, "message is 1025 bytes"},
		{"too-many-events", `{"v":1,"device_id":"d1","events":[` + many + `]}`, protocol.ErrOversized, "65 events"},
		{"oversized-payload", `{"v":1,"device_id":"d1","events":[` + strings.Replace(ev, `"message":"m"`, `"message":"`+strings.Repeat("x", protocol.MaxPayloadBytes)+`"`, 1) + `]}`, protocol.ErrOversized, "more than the 16384 allowed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := protocol.ParseEventBatch([]byte(tt.payload))
			if tt.want == nil {
				if err != nil || b == nil || len(b.Events) != 1 {
					t.Fatalf("ParseEventBatch() = %v, %v; want one event", b, err)
				}
				return
			}
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.wantText) {
				t.Fatalf("ParseEventBatch() error = %v; want %v containing %q", err, tt.want, tt.wantText)
			}
			reasons := 0
			for _, r := range []error{protocol.ErrOversized, protocol.ErrWrongSchema, protocol.ErrMalformed} {
				if errors.Is(err, r) {
					reasons++
				}
			}
			if reasons != 1 {
				t.Fatalf("ParseEventBatch() error %v wraps %d reasons, want exactly 1", err, reasons)
			}
		})
	}
}

func itoa(i int) string {
	var b [20]byte
	n := len(b)
	for {
		n--
		b[n] = byte('0' + i%10)
		i /= 10
		if i == 0 {
			return string(b[n:])
		}
	}
}

func TestSeverityOrderAndSyslogCodes(t *testing.T) {
	if protocol.SeverityWarning.Rank() <= protocol.SeverityInfo.Rank() {
		t.Fatal("warning must rank above info")
	}
	for code := 0; code <= 7; code++ {
		if got := protocol.SeverityFromSyslog(code).SyslogCode(); got != code {
			t.Errorf("SeverityFromSyslog(%d).SyslogCode() = %d", code, got)
		}
	}
}

func FuzzParseEventBatch(f *testing.F) {
	names, _ := filepath.Glob("testdata/events/*.json")
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		batch, err := protocol.ParseEventBatch(b)
		if err != nil {
			return
		}
		out, err := batch.Marshal()
		if err != nil {
			t.Fatalf("Marshal() of a parsed batch: %v", err)
		}
		again, err := protocol.ParseEventBatch(out)
		if err != nil {
			t.Fatalf("ParseEventBatch(Marshal(batch)) = %v; a parsed batch must parse again", err)
		}
		out2, _ := again.Marshal()
		if !bytes.Equal(out, out2) {
			t.Fatalf("round trip changed the batch:\n%s\n%s", out, out2)
		}
	})
}
