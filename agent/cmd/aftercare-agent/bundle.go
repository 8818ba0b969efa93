package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/aftercare/aftercare/agent/internal/agent"
	"github.com/aftercare/aftercare/agent/internal/config"
	"github.com/aftercare/aftercare/agent/internal/offline"
	"github.com/aftercare/aftercare/firmware"
)

const bundleUsage = "usage: aftercare-agent install-bundle [-config /etc/aftercare/agent.yaml] [-state-dir dir] BUNDLE.tar"

// installBundle installs an offline bundle from a local file (a USB stick
// at an air-gapped site) through the same verification as an online
// update, then reboots into it. The reports wait in the outbox until the
// agent next reaches the broker. The agent service must be stopped first:
// both lock the state directory.
func installBundle(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	if len(args) == 0 || strings.HasPrefix(args[len(args)-1], "-") {
		return fmt.Errorf("%w: %s", errConfig, bundleUsage)
	}
	path := args[len(args)-1]
	cfg, err := config.Load(args[:len(args)-1], getenv)
	if err != nil {
		return fmt.Errorf("%w: %w", errConfig, err)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: cfg.Level()}))
	root, err := os.ReadFile(cfg.TrustedRoot)
	if err != nil {
		return fmt.Errorf("%w: trusted_root: %w", errConfig, err)
	}
	rolloutRoot, err := os.ReadFile(cfg.TrustedRolloutRoot)
	if err != nil {
		return fmt.Errorf("%w: trusted_rollout_root: %w", errConfig, err)
	}
	unlock, err := lockState(cfg.StateDir)
	if err != nil {
		return err
	}
	defer unlock()
	id, ok, err := agent.LoadIdentity(cfg.StateDir)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w: the device is not enrolled; an offline bundle is made for an enrolled device's ID", errConfig)
	}
	b, err := offline.Open(path)
	if err != nil {
		return err
	}
	defer b.Close()
	if b.Manifest.DeviceID != id.DeviceID {
		return fmt.Errorf("offline bundle %s is for device %s; this device is %s", path, b.Manifest.DeviceID, id.DeviceID)
	}
	log.Info("installing offline bundle", "bundle", path, "release", b.Manifest.ReleaseID, "version", b.Manifest.Version)
	bl, fileBoot, err := openBootloader(cfg)
	if err != nil {
		return fmt.Errorf("bootloader %s: %w", cfg.Bootloader, err)
	}
	ag, err := agent.New(agent.Options{
		ServerURL: offline.BaseURL, Identity: id, BrokerURL: cfg.BrokerURL,
		Model: cfg.Model, HardwareRevision: cfg.HardwareRevision, FactoryVersion: cfg.FactoryVersion,
		BootstrapRoot: root, RolloutRoot: rolloutRoot, StateDir: cfg.StateDir, Boot: bl,
		Slots:       map[firmware.Slot]string{firmware.SlotA: cfg.SlotA, firmware.SlotB: cfg.SlotB},
		OutboxBytes: cfg.OutboxBytes, HTTP: b.Client(), Limits: cfg.DownloadLimits(), Log: log,
	})
	if err != nil {
		return err
	}
	err = ag.InstallOffline(ctx)
	if !errors.Is(err, agent.ErrReboot) {
		return fmt.Errorf("install-bundle %s: %w", path, err)
	}
	fmt.Fprintf(stderr, "installed %s from %s; the reports wait in the outbox for the next connection\n", b.Manifest.Version, path)
	return reboot(ctx, cfg, fileBoot, log)
}
