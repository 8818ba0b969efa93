package config_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/aftercare/aftercare/server/internal/config"
)

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestDefaultsWithKeys(t *testing.T) {
	cfg, err := config.Load([]string{"-data-dir", "/var/lib/aftercare"}, env(map[string]string{
		"AFTERCARE_SNAPSHOT_KEY": "/k/snapshot.key", "AFTERCARE_TIMESTAMP_KEY": "/k/timestamp.key",
		"AFTERCARE_ROLLOUT_KEY":  "awskms:///alias/aftercare-rollout",
		"AFTERCARE_DATABASE_URL": "postgres://u:hunter2@db/aftercare",
		"AFTERCARE_ROLLOUT_TICK": "10s",
	}))
	if err != nil {
		t.Fatalf("Load() = %v", err)
	}
	if cfg.DeviceBrokerURL != "ssl://127.0.0.1:1884" || cfg.PublicURL != "http://127.0.0.1:8080" || cfg.RolloutBinBits != 8 ||
		cfg.RolloutLeaseTTL != 40*time.Second || cfg.DeferralReminder != 24*time.Hour || cfg.RepositoryDir != "" {
		t.Fatalf("derived defaults = %+v", cfg)
	}
	if printed := fmt.Sprintf("%+v", cfg); strings.Contains(printed, "hunter2") {
		t.Fatalf("the printed config shows the database password: %s", printed)
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	_, err := config.Load([]string{"-listen", "nope"}, env(map[string]string{
		"AFTERCARE_TOPIC_PREFIX": "a/+/b", "AFTERCARE_DATABASE_URL": "mysql://x", "AFTERCARE_LOG_LEVEL": "loud",
		"AFTERCARE_ROLLOUT_BIN_BITS": "17", "AFTERCARE_ROLLOUT_LEASE_TTL": "15s", "AFTERCARE_DEFERRAL_REMINDER": "-1h",
		"AFTERCARE_PPROF_LISTEN": "0.0.0.0:6060",
	}))
	for _, want := range []string{"listen", "topic_prefix", "database_url", "snapshot_key", "timestamp_key", "rollout_key", "rollout_bin_bits", "log_level",
		"rollout_lease_ttl", "deferral_reminder", "pprof_listen"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Load() = %v, want it to name %s", err, want)
		}
	}
	if err != nil && strings.Contains(err.Error(), "mysql://x") {
		t.Error("the error repeats the database URL, which may hold a password")
	}
}

func TestBadEnvironmentValue(t *testing.T) {
	_, err := config.Load(nil, env(map[string]string{"AFTERCARE_TIMESTAMP_EXPIRY": "tomorrow"}))
	if err == nil || !strings.Contains(err.Error(), "TIMESTAMP_EXPIRY") {
		t.Fatalf("Load() = %v, want it to name AFTERCARE_TIMESTAMP_EXPIRY", err)
	}
}

func TestShippedExampleIsValid(t *testing.T) {
	if _, err := config.Load([]string{"-config", "../../../deploy/server/server.yaml"}, env(nil)); err != nil {
		t.Fatalf("deploy/server/server.yaml: %v", err)
	}
}
