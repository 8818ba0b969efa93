package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/aftercare/aftercare/agent/internal/config"
	"github.com/aftercare/aftercare/agent/internal/install"
)

func TestOpenBootloader(t *testing.T) {
	dir := t.TempDir()
	cfg := config.Default()
	cfg.BootDir = filepath.Join(dir, "boot")
	bl, file, err := openBootloader(cfg)
	if err != nil || file == nil || bl != install.Bootloader(file) {
		t.Fatalf("openBootloader(file) = %v, %v, %v; want the file adapter, played at reboot", bl, file, err)
	}
	cfg.Bootloader, cfg.FwEnvConfig = "uboot", filepath.Join(dir, "fw_env.config")
	if bl, file, err = openBootloader(cfg); err == nil || bl != nil || file != nil || !strings.Contains(err.Error(), "fw_env.config") {
		t.Fatalf("openBootloader(uboot, no fw_env.config) = %v, %v, %v; want an error naming fw_env.config", bl, file, err)
	}
	cfg.Bootloader, cfg.GrubEnv = "grub", ""
	if bl, _, err = openBootloader(cfg); err == nil || bl != nil || !strings.Contains(err.Error(), "grubenv") {
		t.Fatalf("openBootloader(grub, no grubenv) = %v, %v; want an error naming grubenv", bl, err)
	}
}
