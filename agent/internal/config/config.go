// Package config is the device agent's configuration: documented defaults,
// then a YAML file (default /etc/aftercare/agent.yaml), then AFTERCARE_*
// environment variables, then flags, validated once before anything starts.
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/aftercare/aftercare/agent/internal/slowread"
	"github.com/aftercare/aftercare/firmware"
	"github.com/aftercare/aftercare/internal/confload"
)

// Config is the agent's configuration.
type Config struct {
	// ServerURL is the fleet server's base URL; required.
	ServerURL string `yaml:"server_url" env:"SERVER_URL"`
	// StateDir holds the identity, install journal, slot status, outbox and
	// metadata cache; default /var/lib/aftercare. It must survive updates
	// (a data partition, not a slot).
	StateDir string `yaml:"state_dir" env:"STATE_DIR"`
	// EnrollmentToken is the one-time token used at first start; ignored
	// once the device has enrolled.
	EnrollmentToken confload.Secret `yaml:"enrollment_token" env:"ENROLLMENT_TOKEN"`
	Serial          string          `yaml:"serial" env:"SERIAL"`
	// Model is the hardware model, matched against each release; required.
	Model            string `yaml:"model" env:"MODEL"`
	HardwareRevision string `yaml:"hardware_revision" env:"HARDWARE_REVISION"`
	// FactoryVersion is the version of the image the agent shipped in, used
	// until the agent has installed a release itself; required.
	FactoryVersion string `yaml:"factory_version" env:"FACTORY_VERSION"`
	// TrustedRoot is the release repository's root metadata shipped in the
	// image; default /etc/aftercare/root.json.
	TrustedRoot string `yaml:"trusted_root" env:"TRUSTED_ROOT"`
	// TrustedRolloutRoot is the rollout repository's root metadata shipped
	// in the image; default /etc/aftercare/rollout-root.json.
	TrustedRolloutRoot string `yaml:"trusted_rollout_root" env:"TRUSTED_ROLLOUT_ROOT"`
	// DownloadStallTimeout is the longest a metadata or image download may
	// wait for data; default 30s.
	DownloadStallTimeout time.Duration `yaml:"download_stall_timeout" env:"DOWNLOAD_STALL_TIMEOUT"`
	// DownloadMinRate is the slowest acceptable download, in bytes per
	// second averaged over a minute of waiting; default 1024. A slower
	// source is dropped and reported as slow retrieval.
	DownloadMinRate int64 `yaml:"download_min_rate" env:"DOWNLOAD_MIN_RATE"`
	// BrokerURL overrides the broker given at enrollment.
	BrokerURL string `yaml:"broker_url" env:"BROKER_URL"`
	// ServerCAFile verifies the server's HTTPS certificate (PEM) when it is
	// not from a CA in the system roots; empty means the system roots.
	ServerCAFile string `yaml:"server_ca_file" env:"SERVER_CA_FILE"`
	// PollInterval is how often the agent checks without a hint; default
	// 1h, jittered by ±20%.
	PollInterval time.Duration `yaml:"poll_interval" env:"POLL_INTERVAL"`
	// BusyHook is a local command the agent runs before it arms a new slot
	// and reboots: exit status 0 means the device is free, anything else
	// that it is in clinical use (a procedure running, a patient
	// connected); the first line of its output says why. The agent then
	// waits and asks again, never interrupting. Empty: never busy.
	BusyHook string `yaml:"busy_hook" env:"BUSY_HOOK"`
	// Bootloader is "file" (a file-backed environment in BootDir, for
	// development and the simulator; the default), "uboot" (fw_setenv on a
	// redundant U-Boot environment) or "grub" (grub-editenv on two grubenv
	// copies). See docs/agent.md.
	Bootloader string `yaml:"bootloader" env:"BOOTLOADER"`
	// BootDir is the file bootloader's directory; default StateDir/boot.
	BootDir string `yaml:"boot_dir" env:"BOOT_DIR"`
	// FwEnvConfig is the fw_env.config naming the two copies of the U-Boot
	// environment; default /etc/fw_env.config (uboot only).
	FwEnvConfig string `yaml:"fw_env_config" env:"FW_ENV_CONFIG"`
	// GrubEnv is the GRUB environment file; default /boot/grub/grubenv
	// (grub only).
	GrubEnv string `yaml:"grubenv" env:"GRUBENV"`
	// GrubEnvBackup is its second copy, written after GrubEnv; default
	// GrubEnv + ".bak" (grub only).
	GrubEnvBackup string `yaml:"grubenv_backup" env:"GRUBENV_BACKUP"`
	// KernelCmdline is read for the booted slot (rauc.slot=A or B);
	// default /proc/cmdline (uboot and grub).
	KernelCmdline string `yaml:"kernel_cmdline" env:"KERNEL_CMDLINE"`
	// BootAttempts is how many boots a committed slot gets from U-Boot
	// without being marked good again before it falls back; 1 to 9,
	// default 3 (uboot only: GRUB's TRY flag allows one).
	BootAttempts int `yaml:"boot_attempts" env:"BOOT_ATTEMPTS"`
	// SlotA and SlotB are the two system partitions (block devices, or
	// files with the file bootloader); required.
	SlotA string `yaml:"slot_a" env:"SLOT_A"`
	SlotB string `yaml:"slot_b" env:"SLOT_B"`
	// HealthCommands must each exit 0 after booting a new slot.
	HealthCommands [][]string `yaml:"health_commands"`
	// HealthUnits are systemd units that must be active after booting a
	// new slot ("pump-controller.service"); AFTERCARE_HEALTH_UNITS takes a
	// comma-separated list.
	HealthUnits []string `yaml:"health_units" env:"HEALTH_UNITS"`
	// HealthServer makes reaching the fleet server part of the health check;
	// default true. Set it false at air-gapped sites that install offline
	// bundles, or every such install would roll back.
	HealthServer bool `yaml:"health_server" env:"HEALTH_SERVER"`
	// HealthTimeout bounds the post-boot health check; default 2m.
	HealthTimeout time.Duration `yaml:"health_timeout" env:"HEALTH_TIMEOUT"`
	// RebootCommand reboots the device; default ["systemctl", "reboot"].
	// With the file bootloader the agent simulates the reboot instead.
	RebootCommand []string `yaml:"reboot_command"`
	// OutboxBytes bounds the on-disk report buffer; default 4 MiB.
	OutboxBytes int64 `yaml:"outbox_bytes" env:"OUTBOX_BYTES"`
	// LogLevel is debug, info, warn or error; default info.
	LogLevel string `yaml:"log_level" env:"LOG_LEVEL"`
	// SyslogSocket is a unix datagram socket the agent creates for the
	// device application's syslog messages (RFC 5424 or 3164), each a
	// security event; empty: none.
	SyslogSocket string `yaml:"syslog_socket" env:"SYSLOG_SOCKET"`
	// EventFiles are log files followed line by line, each line an event;
	// rotation and truncation are followed.
	EventFiles []string `yaml:"event_files" env:"EVENT_FILES"`
	// Journald follows the systemd journal with journalctl for
	// authentication events; default false.
	Journald bool `yaml:"journald" env:"JOURNALD"`
}

// Default returns the documented defaults.
func Default() Config {
	return Config{
		StateDir:             "/var/lib/aftercare",
		TrustedRoot:          "/etc/aftercare/root.json",
		TrustedRolloutRoot:   "/etc/aftercare/rollout-root.json",
		DownloadStallTimeout: 30 * time.Second,
		DownloadMinRate:      1 << 10,
		PollInterval:         time.Hour,
		Bootloader:           "file",
		FwEnvConfig:          "/etc/fw_env.config",
		GrubEnv:              "/boot/grub/grubenv",
		KernelCmdline:        "/proc/cmdline",
		BootAttempts:         3,
		HealthServer:         true,
		HealthTimeout:        2 * time.Minute,
		RebootCommand:        []string{"systemctl", "reboot"},
		OutboxBytes:          4 << 20,
		LogLevel:             "info",
	}
}

// DefaultFile is read when -config is not given, if it exists.
const DefaultFile = "/etc/aftercare/agent.yaml"

// Load builds the configuration from defaults, the file named by -config,
// the environment and flags, and validates it.
func Load(args []string, getenv func(string) string) (Config, error) {
	cfg := Default()
	fs := flag.NewFlagSet("aftercare-agent", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	file := fs.String("config", DefaultFile, "YAML configuration file")
	stateDir := fs.String("state-dir", "", "state directory (overrides state_dir)")
	if err := fs.Parse(args); err != nil {
		return cfg, fmt.Errorf("%w\n%s", err, Usage())
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected argument %q\n%s", fs.Arg(0), Usage())
	}
	explicit := false
	fs.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "config" })
	if _, err := os.Stat(*file); explicit || err == nil {
		if err := confload.File(&cfg, *file); err != nil {
			return cfg, err
		}
	}
	if err := confload.Env(&cfg, getenv); err != nil {
		return cfg, err
	}
	if *stateDir != "" {
		cfg.StateDir = *stateDir
	}
	if cfg.BootDir == "" {
		cfg.BootDir = cfg.StateDir + "/boot"
	}
	if cfg.GrubEnvBackup == "" && cfg.GrubEnv != "" {
		cfg.GrubEnvBackup = cfg.GrubEnv + ".bak"
	}
	return cfg, cfg.Validate()
}

// Usage describes the flags.
func Usage() string {
	return `usage: aftercare-agent [-config /etc/aftercare/agent.yaml] [-state-dir dir]
       aftercare-agent install-bundle [-config ...] [-state-dir dir] BUNDLE.tar

Settings come from the YAML file and AFTERCARE_* environment variables
(e.g. AFTERCARE_SERVER_URL); see docs/agent.md and deploy/agent/agent.yaml.`
}

// Validate reports every invalid field at once.
func (c Config) Validate() error {
	var errs []error
	if u, err := url.Parse(c.ServerURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, fmt.Errorf("server_url %q is not an http(s) URL", c.ServerURL))
	}
	if c.StateDir == "" {
		errs = append(errs, errors.New("state_dir is required"))
	}
	if !firmware.ValidName(c.Model) {
		errs = append(errs, fmt.Errorf("model %q must be 1-64 characters of a-z, 0-9, '.', '_', '-'", c.Model))
	}
	if !firmware.ValidVersion(c.FactoryVersion) {
		errs = append(errs, fmt.Errorf("factory_version %q is not a semantic version such as 1.0.0", c.FactoryVersion))
	}
	if c.TrustedRoot == "" {
		errs = append(errs, errors.New("trusted_root is required"))
	}
	if c.TrustedRolloutRoot == "" {
		errs = append(errs, errors.New("trusted_rollout_root is required"))
	}
	if c.DownloadStallTimeout < time.Second {
		errs = append(errs, fmt.Errorf("download_stall_timeout %s must be at least 1s", c.DownloadStallTimeout))
	}
	if c.DownloadMinRate < 1 {
		errs = append(errs, fmt.Errorf("download_min_rate %d must be at least 1 byte per second", c.DownloadMinRate))
	}
	errs = append(errs, c.validateBootloader()...)
	if c.SlotA == "" || c.SlotB == "" || c.SlotA == c.SlotB {
		errs = append(errs, fmt.Errorf("slot_a %q and slot_b %q must be two different devices or files", c.SlotA, c.SlotB))
	}
	if c.PollInterval < time.Second {
		errs = append(errs, fmt.Errorf("poll_interval %s must be at least 1s", c.PollInterval))
	}
	for _, u := range c.HealthUnits {
		if !validUnit(u) {
			errs = append(errs, fmt.Errorf("health_units entry %q is not a systemd unit name such as pump-controller.service", u))
		}
	}
	if c.OutboxBytes < 64<<10 {
		errs = append(errs, fmt.Errorf("outbox_bytes %d must be at least 64 KiB", c.OutboxBytes))
	}
	var lvl slog.Level
	if len(c.SyslogSocket) > 100 {
		errs = append(errs, fmt.Errorf("syslog_socket %q is longer than a unix socket path may be (100 bytes)", c.SyslogSocket))
	}
	if err := lvl.UnmarshalText([]byte(c.LogLevel)); err != nil {
		errs = append(errs, fmt.Errorf("log_level %q is not debug, info, warn or error", c.LogLevel))
	}
	return errors.Join(errs...)
}

// validateBootloader checks the selected bootloader's settings.
func (c Config) validateBootloader() []error {
	var errs []error
	abs := func(key, v string) {
		if !filepath.IsAbs(v) {
			errs = append(errs, fmt.Errorf("%s %q must be an absolute path (bootloader %s)", key, v, c.Bootloader))
		}
	}
	switch c.Bootloader {
	case "file":
		if c.BootDir == "" {
			errs = append(errs, errors.New("boot_dir is required with bootloader file"))
		}
	case "uboot":
		abs("fw_env_config", c.FwEnvConfig)
		abs("kernel_cmdline", c.KernelCmdline)
		// U-Boot's setexpr computes in hex: keep counters one digit.
		if c.BootAttempts < 1 || c.BootAttempts > 9 {
			errs = append(errs, fmt.Errorf("boot_attempts %d must be 1 to 9", c.BootAttempts))
		}
	case "grub":
		abs("grubenv", c.GrubEnv)
		abs("grubenv_backup", c.GrubEnvBackup)
		abs("kernel_cmdline", c.KernelCmdline)
		if c.GrubEnv != "" && filepath.Clean(c.GrubEnv) == filepath.Clean(c.GrubEnvBackup) {
			errs = append(errs, fmt.Errorf("grubenv_backup %q must be a second file, not grubenv itself", c.GrubEnvBackup))
		}
	default:
		errs = append(errs, fmt.Errorf("bootloader %q is not supported (supported: file, uboot, grub)", c.Bootloader))
	}
	return errs
}

// validUnit accepts a systemd unit name with its type suffix; it is passed
// to systemctl as one argument, so it must not look like an option.
func validUnit(u string) bool {
	dot := strings.LastIndexByte(u, '.')
	return len(u) <= 256 && dot > 0 && dot < len(u)-1 && !strings.HasPrefix(u, "-") &&
		!strings.ContainsAny(u, " \t\n/")
}

// DownloadLimits are the slow-retrieval limits of every download.
func (c Config) DownloadLimits() slowread.Limits {
	return slowread.Limits{Idle: c.DownloadStallTimeout, MinRate: c.DownloadMinRate, Window: time.Minute}
}

// Level returns the configured log level.
func (c Config) Level() slog.Level {
	var lvl slog.Level
	lvl.UnmarshalText([]byte(c.LogLevel))
	return lvl
}
