package config_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aftercare/aftercare/server/internal/config"
)

var keys = map[string]string{"AFTERCARE_SNAPSHOT_KEY": "/k/s", "AFTERCARE_TIMESTAMP_KEY": "/k/t", "AFTERCARE_ROLLOUT_KEY": "/k/r"}

func with(extra map[string]string) func(string) string {
	m := map[string]string{}
	for k, v := range keys {
		m[k] = v
	}
	for k, v := range extra {
		m[k] = v
	}
	return env(m)
}

func TestVulnFromEnvironmentAndFile(t *testing.T) {
	cfg, err := config.Load(nil, with(map[string]string{
		"AFTERCARE_VULN_SYNC": "true", "AFTERCARE_VULN_SLA": "kev:24h,critical:24h,high:72h,epss:72h",
		"AFTERCARE_VULN_EPSS_THRESHOLD": "0.2", "AFTERCARE_VULN_SMTP_TO": "a@x.org,b@x.org",
		"AFTERCARE_VULN_SMTP_ADDR": "127.0.0.1:25", "AFTERCARE_VULN_SMTP_FROM": "aftercare@x.org",
		"AFTERCARE_VULN_SMTP_PASSWORD": "hunter2",
	}))
	if err != nil {
		t.Fatal(err)
	}
	v := cfg.Vuln
	if !v.Sync || v.SLA["kev"] != 24*time.Hour || *v.EPSSThreshold != 0.2 || len(v.SMTPTo) != 2 || v.SyncInterval != 6*time.Hour {
		t.Errorf("Vuln = %+v", v)
	}
	file := filepath.Join(t.TempDir(), "server.yaml")
	os.WriteFile(file, []byte("vuln:\n  feeds:\n    - name: kev\n      kind: kev\n      urls: [http://mirror.local/kev.json, https://www.cisa.gov/x.json]\n"), 0o600)
	cfg, err = config.Load([]string{"-config", file}, with(nil))
	if err != nil || len(cfg.Vuln.Feeds) != 1 || cfg.Vuln.Feeds[0].URLs[0] != "http://mirror.local/kev.json" {
		t.Fatalf("Load(feeds file) = %+v, %v", cfg.Vuln.Feeds, err)
	}
}

func TestVulnValidate(t *testing.T) {
	_, err := config.Load(nil, with(map[string]string{
		"AFTERCARE_VULN_EPSS_THRESHOLD": "3", "AFTERCARE_VULN_WEBHOOK_URL": "ftp://x", "AFTERCARE_VULN_SMTP_ADDR": "mail",
		"AFTERCARE_VULN_MAX_SBOM_BYTES": "10", "AFTERCARE_VULN_VEX_PRODUCT_PURL": "pkg:generic/pump",
	}))
	for _, want := range []string{"vuln.epss_threshold 3", "vuln.webhook_url", "vuln.smtp_addr \"mail\"", "vuln.smtp_from", "vuln.max_sbom_bytes 10", "vuln.vex_product_purl"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Load() = %v, want it to name %s", err, want)
		}
	}
}
