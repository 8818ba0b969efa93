// Command aftercare-agent is the Aftercare device agent. It enrolls the
// device at first start, then keeps it on its assigned, signed release:
// verify, install into the inactive slot, reboot, commit or roll back, and
// report every step. See docs/agent.md.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/aftercare/aftercare/agent/internal/agent"
	"github.com/aftercare/aftercare/agent/internal/boot"
	"github.com/aftercare/aftercare/agent/internal/config"
	"github.com/aftercare/aftercare/agent/internal/health"
	"github.com/aftercare/aftercare/agent/internal/install"
	"github.com/aftercare/aftercare/firmware"
	"github.com/aftercare/aftercare/protocol"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "aftercare-agent:", err)
		os.Exit(exitCode(err))
	}
}

// errConfig marks configuration errors, which exit with status 2.
var errConfig = errors.New("configuration")

func exitCode(err error) int {
	if errors.Is(err, errConfig) {
		return 2
	}
	return 1
}

func run(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "install-bundle" {
		return installBundle(ctx, args[1:], getenv, stderr)
	}
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
	unlock, err := lockState(cfg.StateDir)
	if err != nil {
		return err
	}
	defer unlock()
	root, err := os.ReadFile(cfg.TrustedRoot)
	if err != nil {
		return fmt.Errorf("%w: trusted_root: %w", errConfig, err)
	}
	rolloutRoot, err := os.ReadFile(cfg.TrustedRolloutRoot)
	if err != nil {
		return fmt.Errorf("%w: trusted_rollout_root: %w", errConfig, err)
	}
	var serverRoots *x509.CertPool // nil: the system roots
	if cfg.ServerCAFile != "" {
		b, err := os.ReadFile(cfg.ServerCAFile)
		if err != nil {
			return fmt.Errorf("%w: server_ca_file: %w", errConfig, err)
		}
		serverRoots = x509.NewCertPool()
		if !serverRoots.AppendCertsFromPEM(b) {
			return fmt.Errorf("%w: server_ca_file %s holds no PEM certificate", errConfig, cfg.ServerCAFile)
		}
	}
	httpc := agent.NewHTTPClientTLS(&tls.Config{RootCAs: serverRoots, MinVersion: tls.VersionTLS12})
	id, ok, err := agent.LoadIdentity(cfg.StateDir)
	if err != nil {
		return err
	}
	if !ok {
		if cfg.EnrollmentToken == "" {
			return fmt.Errorf("%w: the device is not enrolled and enrollment_token is not set", errConfig)
		}
		id, err = agent.Enroll(ctx, httpc, cfg.ServerURL, cfg.StateDir, protocol.EnrollRequest{
			Token: string(cfg.EnrollmentToken), Serial: cfg.Serial, Model: cfg.Model,
			HardwareRevision: cfg.HardwareRevision, InstalledVersion: cfg.FactoryVersion,
		})
		if err != nil {
			return err
		}
		log.Info("enrolled", "device_id", id.DeviceID, "site_id", id.SiteID)
	}
	creds, err := agent.LoadCredentials(cfg.StateDir, id.DeviceID)
	if err != nil {
		return err
	}
	// From here on the device presents its certificate wherever asked.
	httpc = agent.NewHTTPClientTLS(creds.HTTPTLS(serverRoots))
	bl, fileBoot, err := openBootloader(cfg)
	if err != nil {
		return fmt.Errorf("bootloader %s: %w", cfg.Bootloader, err)
	}
	checker := health.Checker{Commands: cfg.HealthCommands, Units: cfg.HealthUnits, ServerURL: cfg.ServerURL, HTTP: httpc, Timeout: cfg.HealthTimeout}
	if !cfg.HealthServer {
		checker.ServerURL = ""
	}
	sources, closeSources, err := eventSources(cfg)
	if err != nil {
		return err
	}
	defer closeSources()
	for {
		ag, err := agent.New(agent.Options{
			ServerURL: cfg.ServerURL, Identity: id, Credentials: creds, ServerRoots: serverRoots, BrokerURL: cfg.BrokerURL,
			Model: cfg.Model, HardwareRevision: cfg.HardwareRevision, FactoryVersion: cfg.FactoryVersion,
			BootstrapRoot: root, RolloutRoot: rolloutRoot, StateDir: cfg.StateDir, Boot: bl,
			Slots:  map[firmware.Slot]string{firmware.SlotA: cfg.SlotA, firmware.SlotB: cfg.SlotB},
			Health: checker.Check, PollInterval: cfg.PollInterval, OutboxBytes: cfg.OutboxBytes,
			HTTP: httpc, Limits: cfg.DownloadLimits(), BusyHook: cfg.BusyHook, Log: log,
			ConfigHash: configHash(cfg), EventSources: sources,
		})
		if err != nil {
			return err
		}
		err = ag.Run(ctx)
		if !errors.Is(err, agent.ErrReboot) {
			return err
		}
		if err := reboot(ctx, cfg, fileBoot, log); err != nil {
			return err
		}
		if fileBoot == nil {
			<-ctx.Done()
			return nil
		}
	}
}

// reboot restarts the device into the armed slot. With the file bootloader
// (fileBoot set) there is nothing to restart: it plays the bootloader's
// part at power-on and returns, and the caller starts the agent again.
func reboot(ctx context.Context, cfg config.Config, fileBoot *boot.File, log *slog.Logger) error {
	if fileBoot != nil {
		slot, err := fileBoot.PowerOn()
		if err != nil {
			return err
		}
		log.Info("simulated reboot", "booted", slot, "boot_dir", filepath.Clean(cfg.BootDir))
		return nil
	}
	log.Info("rebooting", "command", cfg.RebootCommand)
	if out, err := exec.CommandContext(ctx, cfg.RebootCommand[0], cfg.RebootCommand[1:]...).CombinedOutput(); err != nil {
		return fmt.Errorf("reboot command %q: %w: %s", cfg.RebootCommand, err, out)
	}
	return nil
}

// openBootloader builds the configured bootloader adapter. The *boot.File
// is set only for the file bootloader, whose reboots the agent plays.
func openBootloader(cfg config.Config) (install.Bootloader, *boot.File, error) {
	switch cfg.Bootloader {
	case "uboot":
		u, err := boot.OpenUBoot(boot.UBootOptions{Config: cfg.FwEnvConfig, Cmdline: cfg.KernelCmdline, Attempts: cfg.BootAttempts})
		if err != nil {
			return nil, nil, err
		}
		return u, nil, nil
	case "grub":
		g, err := boot.OpenGRUB(boot.GRUBOptions{Env: cfg.GrubEnv, Backup: cfg.GrubEnvBackup, Cmdline: cfg.KernelCmdline})
		if err != nil {
			return nil, nil, err
		}
		return g, nil, nil
	default: // "file"; Validate refused anything else
		f, err := boot.OpenFile(cfg.BootDir)
		if err != nil {
			return nil, nil, err
		}
		return f, f, nil
	}
}
