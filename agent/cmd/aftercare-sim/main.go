// Command aftercare-sim runs a fleet of simulated devices against a fleet
// server: each device has its own slot files, file-backed bootloader and
// identity, and runs the real agent.
//
//	aftercare-sim -server http://127.0.0.1:8080 -root 1.root.json -rollout-root 1.rollout-root.json -dir ./sim -devices devices.json
//
// devices.json lists the devices: [{"serial": "...", "model": "...",
// "hardware_revision": "...", "version": "1.0.0", "token": "<enrollment token>"}].
// A device keeps its identity in its directory, so later runs need no tokens.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/aftercare/aftercare/agent/internal/agent"
	"github.com/aftercare/aftercare/agent/internal/sim"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "aftercare-sim:", err)
		os.Exit(1)
	}
}

// maxDevicesFileBytes bounds the devices file.
const maxDevicesFileBytes = 64 << 20 // 64 MiB

func run(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("aftercare-sim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	server := fs.String("server", "http://127.0.0.1:8080", "fleet server URL")
	rootPath := fs.String("root", "", "release repository root metadata (1.root.json); required")
	rolloutRootPath := fs.String("rollout-root", "", "rollout repository root metadata (1.rollout-root.json); required")
	dir := fs.String("dir", "./aftercare-sim", "directory holding one subdirectory per device")
	devicesPath := fs.String("devices", "", "JSON file listing the devices; required")
	poll := fs.Duration("poll", time.Minute, "poll interval of each device")
	broker := fs.String("broker", "", "broker URL, overriding the one given at enrollment")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*level)); err != nil {
		return fmt.Errorf("-log-level %q is not debug, info, warn or error", *level)
	}
	if *rootPath == "" || *rolloutRootPath == "" || *devicesPath == "" {
		return errors.New("-root, -rollout-root and -devices are required")
	}
	root, err := os.ReadFile(*rootPath)
	if err != nil {
		return err
	}
	rolloutRoot, err := os.ReadFile(*rolloutRootPath)
	if err != nil {
		return err
	}
	devices, err := readDevices(*devicesPath)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl}))
	fleet, err := sim.Start(ctx, sim.Options{
		ServerURL: *server, BootstrapRoot: root, RolloutRoot: rolloutRoot, Dir: *dir, Devices: devices,
		BrokerURL: *broker, PollInterval: *poll, HTTP: agent.NewHTTPClient(), Log: log,
	})
	if err != nil {
		return err
	}
	log.Info("simulated fleet running", "devices", len(fleet.Devices))
	return fleet.Wait()
}

func readDevices(path string) ([]sim.Device, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxDevicesFileBytes+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxDevicesFileBytes {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, maxDevicesFileBytes)
	}
	var devices []sim.Device
	if err := json.Unmarshal(b, &devices); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return devices, nil
}
