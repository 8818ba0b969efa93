package events

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/aftercare/aftercare/internal/atomicfile"
	"github.com/aftercare/aftercare/protocol"
)

// maxJournalLine bounds one JSON entry from journalctl.
const maxJournalLine = 64 << 10 // 64 KiB

// Journal follows the systemd journal through
// `journalctl -o json --follow`, resuming after the cursor of the last
// entry it handled, which it keeps in a file. It emits authentication
// entries (facility auth/authpriv, and failed logins recognised by
// Classify) and entries of severity critical or worse; the rest of the
// journal is not security-relevant and stays on the device.
type Journal struct {
	command    string
	cursorPath string
	now        func() time.Time
}

// JournalOptions configures a Journal.
type JournalOptions struct {
	Command    string // journalctl binary; default "journalctl" on PATH
	CursorPath string // required
	Now        func() time.Time
}

// NewJournal returns a Journal.
func NewJournal(opts JournalOptions) (*Journal, error) {
	if opts.CursorPath == "" {
		return nil, errors.New("events: Journal needs CursorPath")
	}
	if opts.Command == "" {
		opts.Command = "journalctl"
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Journal{command: opts.Command, cursorPath: opts.CursorPath, now: opts.Now}, nil
}

// Name implements Source.
func (j *Journal) Name() string { return "journald" }

// Run implements Source: it runs journalctl until ctx ends or it exits.
func (j *Journal) Run(ctx context.Context, emit Emit) error {
	args := []string{"-o", "json", "--follow", "--no-pager"}
	cursor, err := os.ReadFile(j.cursorPath)
	switch {
	case err == nil && len(strings.TrimSpace(string(cursor))) > 0:
		args = append(args, "--after-cursor", strings.TrimSpace(string(cursor)))
	case err == nil || errors.Is(err, os.ErrNotExist):
		// First start: the journal's past is history, not new events.
		args = append(args, "--lines", "0")
	default:
		return fmt.Errorf("read journal cursor: %w", err)
	}
	cmd := exec.CommandContext(ctx, j.command, args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return fmt.Errorf("journalctl stdout: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", j.command, err)
	}
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 0, 64<<10), maxJournalLine)
	for sc.Scan() {
		e, cur, ok := j.entry(sc.Bytes())
		if ok {
			emit(e)
		}
		if cur != "" && ok {
			// Only after the event is queued: a crash before this line
			// repeats the entry rather than losing it.
			if err := atomicfile.WriteFile(j.cursorPath, []byte(cur+"\n"), 0o600); err != nil {
				cmd.Process.Kill()
				cmd.Wait()
				return fmt.Errorf("save journal cursor: %w", err)
			}
		}
	}
	scanErr := sc.Err()
	waitErr := cmd.Wait()
	if ctx.Err() != nil {
		return nil
	}
	if scanErr != nil {
		return fmt.Errorf("read journalctl output: %w", scanErr)
	}
	if waitErr != nil {
		return fmt.Errorf("journalctl: %w", waitErr)
	}
	return errors.New("journalctl exited")
}

// entry maps one journal JSON entry (journalctl -o json: every field a
// string, or an array of bytes for binary data) to an event. ok is false
// for entries that are not security-relevant or do not parse.
func (j *Journal) entry(line []byte) (e protocol.Event, cursor string, ok bool) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(line, &raw); err != nil {
		return e, "", false
	}
	field := func(name string) string {
		var s string
		if json.Unmarshal(raw[name], &s) == nil {
			return s
		}
		var bs []byte // binary fields arrive as arrays of numbers
		var nums []int
		if json.Unmarshal(raw[name], &nums) == nil {
			for _, n := range nums {
				bs = append(bs, byte(n))
			}
		}
		return string(bs)
	}
	cursor = field("__CURSOR")
	prio, err := strconv.Atoi(field("PRIORITY"))
	if err != nil {
		prio = 5
	}
	facility, _ := strconv.Atoi(field("SYSLOG_FACILITY"))
	app := field("SYSLOG_IDENTIFIER")
	if app == "" {
		app = field("_COMM")
	}
	cat := protocol.CategorySystem
	authFacility := field("SYSLOG_FACILITY") != "" && (facility == facilityAuth || facility == facilityAuthPriv)
	if authFacility {
		cat = protocol.CategoryAuth
	}
	e = Classify(protocol.SourceJournal, app, field("MESSAGE"), cat, protocol.SeverityFromSyslog(prio))
	if !authFacility && e.Category != protocol.CategoryAuth && prio > 2 {
		return e, cursor, false
	}
	e.Time = j.now()
	if us, err := strconv.ParseInt(field("__REALTIME_TIMESTAMP"), 10, 64); err == nil {
		e.Time = time.UnixMicro(us)
	}
	if unit := field("_SYSTEMD_UNIT"); unit != "" {
		if e.Fields == nil {
			e.Fields = map[string]string{}
		}
		e.Fields["unit"] = clip(unit)
	}
	return e, cursor, true
}
