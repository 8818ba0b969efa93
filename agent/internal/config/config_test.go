package config_test

import (
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/aftercare/aftercare/agent/internal/config"
)

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "agent.yaml")
	os.WriteFile(p, []byte(body), 0o600)
	return p
}

const valid = `
server_url: http://fleet.example:8080
model: pump-x1
factory_version: 1.0.0
slot_a: /dev/mmcblk0p2
slot_b: /dev/mmcblk0p3
enrollment_token: ace_secret
`

func TestLoadOrderFileThenEnvThenFlags(t *testing.T) {
	p := writeFile(t, valid+"poll_interval: 10m\n")
	cfg, err := config.Load([]string{"-config", p, "-state-dir", "/data/aftercare"}, env(map[string]string{"AFTERCARE_POLL_INTERVAL": "5m",
		"AFTERCARE_HEALTH_UNITS": "pump.service,alarm.service", "AFTERCARE_HEALTH_SERVER": "false"}))
	if err != nil {
		t.Fatalf("Load() = %v", err)
	}
	if cfg.PollInterval != 5*time.Minute || cfg.StateDir != "/data/aftercare" || cfg.Model != "pump-x1" || cfg.BootDir != "/data/aftercare/boot" ||
		strings.Join(cfg.HealthUnits, " ") != "pump.service alarm.service" || cfg.HealthServer {
		t.Fatalf("Load() = %+v", cfg)
	}
	if s := cfg.EnrollmentToken.String(); s != "REDACTED" {
		t.Fatalf("the enrollment token prints as %q", s)
	}
}

func TestDefaultChecksTheServer(t *testing.T) {
	if !config.Default().HealthServer {
		t.Fatal("Default().HealthServer = false; the health check must reach the server unless told otherwise")
	}
}

func TestLoadReportsEveryProblem(t *testing.T) {
	p := writeFile(t, "server_url: ftp://x\nmodel: Pump!\nslot_a: /dev/a\nslot_b: /dev/a\npoll_interval: 1ms\n"+
		"download_stall_timeout: 1ms\ndownload_min_rate: 0\ntrusted_rollout_root: \"\"\n"+
		"health_units: [\"--force\", \"pump\"]\n")
	_, err := config.Load([]string{"-config", p}, env(nil))
	for _, want := range []string{"server_url", "model", "factory_version", "slot_a", "poll_interval", "download_stall_timeout", "download_min_rate", "trusted_rollout_root",
		`health_units entry "--force"`, `health_units entry "pump"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Load() = %v, want it to name %s", err, want)
		}
	}
}

func TestLoadRejectsUnknownKeys(t *testing.T) {
	p := writeFile(t, valid+"pol_interval: 5m\n")
	if _, err := config.Load([]string{"-config", p}, env(nil)); err == nil || !strings.Contains(err.Error(), "pol_interval") {
		t.Fatalf("Load(typo) = %v, want it to name the unknown key", err)
	}
}

func TestShippedExampleIsValid(t *testing.T) {
	if _, err := config.Load([]string{"-config", "../../../deploy/agent/agent.yaml"}, env(nil)); err != nil {
		t.Fatalf("deploy/agent/agent.yaml: %v", err)
	}
}

func TestBootloaderSettings(t *testing.T) {
	tests := []struct {
		name    string
		extra   string
		env     map[string]string
		wantErr []string // each must appear; none means valid
		check   func(t *testing.T, c config.Config)
	}{
		{"default-is-file", "", nil, nil, func(t *testing.T, c config.Config) {
			if c.Bootloader != "file" || c.BootAttempts != 3 || c.KernelCmdline != "/proc/cmdline" {
				t.Errorf("defaults = %q, %d, %q", c.Bootloader, c.BootAttempts, c.KernelCmdline)
			}
		}},
		{"uboot", "bootloader: uboot\nfw_env_config: /etc/fw_env.config\nboot_attempts: 5\n", nil, nil, func(t *testing.T, c config.Config) {
			if c.FwEnvConfig != "/etc/fw_env.config" || c.BootAttempts != 5 {
				t.Errorf("uboot settings = %q, %d", c.FwEnvConfig, c.BootAttempts)
			}
		}},
		{"grub-backup-default", "bootloader: grub\ngrubenv: /boot/efi/EFI/debian/grubenv\n", nil, nil, func(t *testing.T, c config.Config) {
			if c.GrubEnvBackup != "/boot/efi/EFI/debian/grubenv.bak" {
				t.Errorf("grubenv_backup = %q, want grubenv + .bak", c.GrubEnvBackup)
			}
		}},
		{"from-env", "", map[string]string{"AFTERCARE_BOOTLOADER": "grub", "AFTERCARE_KERNEL_CMDLINE": "/run/cmdline"}, nil, func(t *testing.T, c config.Config) {
			if c.Bootloader != "grub" || c.KernelCmdline != "/run/cmdline" {
				t.Errorf("from env = %q, %q", c.Bootloader, c.KernelCmdline)
			}
		}},
		{"unknown-bootloader", "bootloader: barebox\n", nil, []string{`bootloader "barebox" is not supported (supported: file, uboot, grub)`}, nil},
		{"uboot-attempts-out-of-range", "bootloader: uboot\nboot_attempts: 10\n", nil, []string{"boot_attempts 10 must be 1 to 9"}, nil},
		{"uboot-relative-paths", "bootloader: uboot\nfw_env_config: fw_env.config\nkernel_cmdline: cmdline\n", nil,
			[]string{`fw_env_config "fw_env.config" must be an absolute path`, `kernel_cmdline "cmdline" must be an absolute path`}, nil},
		{"grub-backup-is-grubenv", "bootloader: grub\ngrubenv: /boot/grub/grubenv\ngrubenv_backup: /boot/grub/grubenv\n", nil,
			[]string{"grubenv_backup \"/boot/grub/grubenv\" must be a second file"}, nil},
		{"grub-no-env", "bootloader: grub\ngrubenv: \"\"\n", nil, []string{`grubenv "" must be an absolute path`}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := writeFile(t, valid+tt.extra)
			cfg, err := config.Load([]string{"-config", p}, env(tt.env))
			if len(tt.wantErr) == 0 {
				if err != nil {
					t.Fatalf("Load() = %v", err)
				}
				tt.check(t, cfg)
				return
			}
			for _, want := range tt.wantErr {
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("Load() = %v, want it to contain %q", err, want)
				}
			}
		})
	}
}

// The example configuration shows every option, set or commented out.
func TestShippedExampleShowsEveryOption(t *testing.T) {
	b, err := os.ReadFile("../../../deploy/agent/agent.yaml")
	if err != nil {
		t.Fatal(err)
	}
	typ := reflect.TypeFor[config.Config]()
	for i := range typ.NumField() {
		key, _, _ := strings.Cut(typ.Field(i).Tag.Get("yaml"), ",")
		if key != "" && !regexp.MustCompile(`(?m)^#? ?`+regexp.QuoteMeta(key)+`:`).Match(b) {
			t.Errorf("deploy/agent/agent.yaml does not show %s", key)
		}
	}
}
