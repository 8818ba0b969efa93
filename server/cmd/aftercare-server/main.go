// Command aftercare-server is the Aftercare fleet server: HTTP API, TUF
// release repository, MQTT bridge and, by default, an embedded broker and
// SQLite database. See docs/configuration.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"
	// Sites' maintenance windows name IANA time zones; the server must
	// know them even on a host without tzdata.
	_ "time/tzdata"

	"github.com/aftercare/aftercare/server/internal/config"
	"github.com/aftercare/aftercare/server/internal/server"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "aftercare-server:", err)
		os.Exit(exitCode(err))
	}
}

// errConfig marks configuration errors, which exit with status 2.
var errConfig = errors.New("configuration")

func exitCode(err error) int {
	if errors.Is(err, errConfig) || errors.Is(err, flag.ErrHelp) {
		return 2
	}
	return 1
}

func run(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	cfg, err := config.Load(args, getenv)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(stderr, config.Usage())
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: %w", errConfig, err)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: cfg.Level()}))
	log.Info("effective configuration", "config", cfg)
	srv, err := server.Start(ctx, cfg, getenv, log)
	if err != nil {
		return err
	}
	<-ctx.Done()
	log.Info("shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return srv.Shutdown(shutdownCtx)
}
