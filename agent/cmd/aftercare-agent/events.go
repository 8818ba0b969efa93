package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"strconv"

	"github.com/aftercare/aftercare/agent/internal/config"
	"github.com/aftercare/aftercare/agent/internal/events"
)

// eventSources builds the configured security event sources and a
// function closing them.
func eventSources(cfg config.Config) ([]events.Source, func(), error) {
	var srcs []events.Source
	closeAll := func() {}
	if cfg.SyslogSocket != "" {
		s, err := events.ListenSyslog(cfg.SyslogSocket, nil)
		if err != nil {
			return nil, closeAll, fmt.Errorf("%w: syslog_socket: %w", errConfig, err)
		}
		srcs = append(srcs, s)
		closeAll = func() { s.Close() }
	}
	for i, path := range cfg.EventFiles {
		t, err := events.NewTail(events.TailOptions{
			Path: path, StatePath: filepath.Join(cfg.StateDir, "tail-"+strconv.Itoa(i)+"-"+shortHash(path)+".json"),
			App: filepath.Base(path),
		})
		if err != nil {
			closeAll()
			return nil, func() {}, fmt.Errorf("%w: event_files: %w", errConfig, err)
		}
		srcs = append(srcs, t)
	}
	if cfg.Journald {
		j, err := events.NewJournal(events.JournalOptions{CursorPath: filepath.Join(cfg.StateDir, "journal-cursor")})
		if err != nil {
			closeAll()
			return nil, func() {}, err
		}
		srcs = append(srcs, j)
	}
	return srcs, closeAll, nil
}

func shortHash(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:4])
}

// configHash identifies the effective configuration for the config-change
// event. Secrets print as REDACTED, so the hash never depends on them.
func configHash(cfg config.Config) string {
	h := sha256.Sum256([]byte(fmt.Sprintf("%+v", cfg)))
	return "sha256:" + hex.EncodeToString(h[:])
}
