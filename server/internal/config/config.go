// Package config is the fleet server's configuration: documented defaults,
// then a YAML file, then AFTERCARE_* environment variables, then flags,
// validated once before anything starts.
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"github.com/aftercare/aftercare/internal/confload"
	"github.com/aftercare/aftercare/protocol"
)

// Secret is a credential read from configuration; it never prints.
type Secret = confload.Secret

// Config is the fleet server's configuration.
type Config struct {
	// Listen is the HTTP address of the API, the console and the TUF
	// repository; default "127.0.0.1:8080".
	Listen string `yaml:"listen" env:"LISTEN"`
	// PublicURL is how devices and people reach Listen; default
	// "http://" + Listen.
	PublicURL string `yaml:"public_url" env:"PUBLIC_URL"`
	// DataDir holds the database (by default), the TUF repository, release
	// blobs and SBOMs (unless RepositoryDir is set) and the instance ID;
	// default "./aftercare-data".
	DataDir string `yaml:"data_dir" env:"DATA_DIR"`
	// RepositoryDir holds what every replica of the server must see alike:
	// the release and rollout TUF repositories, release SBOMs and uploads
	// being published. Empty: DataDir/repository, with SBOMs and uploads
	// in DataDir. Replicas point it at one shared volume (NFS, a shared
	// disk) and share one PostgreSQL database; each keeps a DataDir of
	// its own.
	RepositoryDir string `yaml:"repository_dir" env:"REPOSITORY_DIR"`
	// DatabaseURL is "sqlite:///path" or "postgres://..."; default
	// "sqlite://" + DataDir + "/aftercare.db".
	DatabaseURL Secret `yaml:"database_url" env:"DATABASE_URL"`
	// TLSCertFile and TLSKeyFile make Listen serve HTTPS (PEM files, the
	// certificate chain first). Devices then use their client certificate
	// on the device routes, e.g. certificate renewal. Empty serves plain
	// HTTP, for a TLS-terminating proxy in front or for tests; device
	// certificate renewal then is not available.
	TLSCertFile string `yaml:"tls_cert_file" env:"TLS_CERT_FILE"`
	TLSKeyFile  string `yaml:"tls_key_file" env:"TLS_KEY_FILE"`

	// DeviceCACert and DeviceCAKey are the device CA (PEM, ECDSA P-256).
	// Empty: the CA is created at first start in DataDir (device-ca.pem,
	// device-ca.key with mode 0600).
	DeviceCACert string `yaml:"device_ca_cert" env:"DEVICE_CA_CERT"`
	DeviceCAKey  string `yaml:"device_ca_key" env:"DEVICE_CA_KEY"`
	// DeviceCertValidity is how long a device certificate is valid;
	// devices renew in the last third. Default 2160h (90 days).
	DeviceCertValidity time.Duration `yaml:"device_cert_validity" env:"DEVICE_CERT_VALIDITY"`

	// BrokerURL is an external MQTT broker, e.g. "ssl://broker:8883". Empty
	// runs the embedded broker on EmbeddedBrokerListen.
	BrokerURL      string `yaml:"broker_url" env:"BROKER_URL"`
	BrokerUsername string `yaml:"broker_username" env:"BROKER_USERNAME"`
	BrokerPassword Secret `yaml:"broker_password" env:"BROKER_PASSWORD"`
	// BrokerCAFile verifies an external broker's TLS certificate (PEM);
	// empty uses the system roots.
	BrokerCAFile string `yaml:"broker_ca_file" env:"BROKER_CA_FILE"`
	// BrokerClientCert and BrokerClientKey are the server's client
	// certificate for an external broker that takes identities from
	// certificates (deploy/mosquitto/aftercare-mtls.conf): a certificate
	// from the device CA with CN "aftercare:server" (see
	// docs/security-model.md). Empty: none is presented.
	BrokerClientCert string `yaml:"broker_client_cert" env:"BROKER_CLIENT_CERT"`
	BrokerClientKey  string `yaml:"broker_client_key" env:"BROKER_CLIENT_KEY"`
	// EmbeddedBrokerListen is the embedded broker's address; it serves MQTT
	// over TLS and requires a client certificate from the device CA.
	// Default "127.0.0.1:1884".
	EmbeddedBrokerListen string `yaml:"embedded_broker_listen" env:"EMBEDDED_BROKER_LISTEN"`
	// PprofListen serves Go's runtime profiles (net/http/pprof, under
	// /debug/pprof/) on a loopback address, for profiling the server;
	// empty (the default) serves none.
	PprofListen string `yaml:"pprof_listen" env:"PPROF_LISTEN"`
	// DeviceBrokerURL is the broker URL devices are given at enrollment;
	// default: BrokerURL, or the embedded broker's address.
	DeviceBrokerURL string `yaml:"device_broker_url" env:"DEVICE_BROKER_URL"`
	// TopicPrefix is the MQTT topic prefix; default "aftercare/v1".
	TopicPrefix string `yaml:"topic_prefix" env:"TOPIC_PREFIX"`
	// ShareGroup names the shared subscription replicas split reports
	// through; default "aftercare".
	ShareGroup string `yaml:"share_group" env:"SHARE_GROUP"`

	// AdminToken is the bearer token of the administrator API. Empty
	// generates one into DataDir/admin-token (mode 0600) at first start.
	AdminToken Secret `yaml:"admin_token" env:"ADMIN_TOKEN"`

	// ReleaseRoot is the release repository's root metadata: the first
	// (1.root.json from `aftercare keys init`), required until the
	// repository is initialised; later, the next version (after a
	// rotation of the online keys) is installed at start, and an older or
	// equal one is ignored.
	ReleaseRoot string `yaml:"release_root" env:"RELEASE_ROOT"`
	// SnapshotKey and TimestampKey are the release repository's online
	// keys: file paths or KMS URIs (awskms://, gcpkms://, azurekms://,
	// hashivault://); required.
	SnapshotKey  string `yaml:"snapshot_key" env:"SNAPSHOT_KEY"`
	TimestampKey string `yaml:"timestamp_key" env:"TIMESTAMP_KEY"`
	// RolloutRoot is the rollout repository's root metadata
	// (1.rollout-root.json from `aftercare keys init`), handled like
	// ReleaseRoot.
	RolloutRoot string `yaml:"rollout_root" env:"ROLLOUT_ROOT"`
	// RolloutKey is the online key that signs the rollout repository (a
	// file path or KMS URI); required.
	RolloutKey string `yaml:"rollout_key" env:"ROLLOUT_KEY"`
	// RolloutBinBits splits device assignments into 2^bits hash bins, so
	// a device downloads its bin only; default 8 (256 bins, a good fit
	// from a few thousand to some tens of thousands of devices). 0 puts
	// all assignments into one file. Fixed once the repository is first
	// published.
	RolloutBinBits int `yaml:"rollout_bin_bits" env:"ROLLOUT_BIN_BITS"`
	// RolloutTick is how often the rollout scheduler promotes waves and
	// assigns devices; default 10s.
	RolloutTick time.Duration `yaml:"rollout_tick" env:"ROLLOUT_TICK"`
	// RolloutLeaseTTL is how long the replica running the rollout
	// scheduler holds its lease without renewing it: after a replica dies,
	// another takes over within this time. Default max(4 ticks, 30s); at
	// least 2 ticks, at most 1h.
	RolloutLeaseTTL time.Duration `yaml:"rollout_lease_ttl" env:"ROLLOUT_LEASE_TTL"`
	// DeferralReminder is how long before a site's deferral ends the
	// scheduler records a reminder for the site's IT and the release
	// engineer; default 24h, 0 turns reminders off (the end of a deferral
	// is recorded still).
	DeferralReminder time.Duration `yaml:"deferral_reminder" env:"DEFERRAL_REMINDER"`
	// MaxDeferralCritical .. MaxDeferralLow bound how long a site may defer
	// a patch of each severity; defaults 7, 30, 90 and 180 days.
	MaxDeferralCritical time.Duration `yaml:"max_deferral_critical" env:"MAX_DEFERRAL_CRITICAL"`
	MaxDeferralHigh     time.Duration `yaml:"max_deferral_high" env:"MAX_DEFERRAL_HIGH"`
	MaxDeferralMedium   time.Duration `yaml:"max_deferral_medium" env:"MAX_DEFERRAL_MEDIUM"`
	MaxDeferralLow      time.Duration `yaml:"max_deferral_low" env:"MAX_DEFERRAL_LOW"`
	// TimestampExpiry is how long a signed timestamp is valid; default 24h.
	TimestampExpiry time.Duration `yaml:"timestamp_expiry" env:"TIMESTAMP_EXPIRY"`

	// MaxBundleBytes is the largest release bundle accepted; default 2 GiB.
	MaxBundleBytes int64 `yaml:"max_bundle_bytes" env:"MAX_BUNDLE_BYTES"`
	// LogLevel is debug, info, warn or error; default info.
	LogLevel string `yaml:"log_level" env:"LOG_LEVEL"`

	// Vuln configures vulnerability monitoring (AFTERCARE_VULN_*).
	Vuln Vuln `yaml:"vuln" envPrefix:"VULN_"`
}

// Vuln configures vulnerability monitoring: SBOM bounds, feeds, triage
// SLAs and notifications. See docs/vulnerability-monitoring.md.
type Vuln struct {
	// MaxSBOMBytes, SBOMMaxDepth and SBOMMaxComponents bound one release
	// SBOM; defaults 64 MiB, 64 levels, 50,000 components.
	MaxSBOMBytes      int64 `yaml:"max_sbom_bytes" env:"MAX_SBOM_BYTES"`
	SBOMMaxDepth      int   `yaml:"sbom_max_depth" env:"SBOM_MAX_DEPTH"`
	SBOMMaxComponents int   `yaml:"sbom_max_components" env:"SBOM_MAX_COMPONENTS"`
	// MaxFeedBytes bounds one feed file as uploaded or downloaded; default
	// 1 GiB. Decompressed content is bounded at 4 GiB.
	MaxFeedBytes int64 `yaml:"max_feed_bytes" env:"MAX_FEED_BYTES"`
	// Sync fetches the feeds from their URLs every SyncInterval; default
	// off: no internet is assumed, feeds are imported from files.
	Sync         bool          `yaml:"sync" env:"SYNC"`
	SyncInterval time.Duration `yaml:"sync_interval" env:"SYNC_INTERVAL"` // default 6h
	// Feeds lists what Sync fetches, each with URLs tried in order (local
	// mirrors first). Empty: KEV, EPSS, NVD's modified feed and the OSV
	// ecosystems in OSVEcosystems, from their public URLs.
	Feeds         []FeedSource `yaml:"feeds"`
	OSVEcosystems []string     `yaml:"osv_ecosystems" env:"OSV_ECOSYSTEMS"` // default Debian, Alpine, Go
	// SLA is the time to triage per reason (kev, critical, high, epss);
	// defaults 48h, 48h, 168h, 168h.
	SLA map[string]time.Duration `yaml:"sla" env:"SLA"`
	// EPSSThreshold opens triage for an EPSS score at or above it; default
	// 0.5; 0 turns the EPSS reason off.
	EPSSThreshold *float64 `yaml:"epss_threshold" env:"EPSS_THRESHOLD"`
	// WebhookURL receives a JSON POST for each triage item opened or
	// escalated; WebhookSecret signs it (X-Aftercare-Signature).
	WebhookURL    string `yaml:"webhook_url" env:"WEBHOOK_URL"`
	WebhookSecret Secret `yaml:"webhook_secret" env:"WEBHOOK_SECRET"`
	// SMTP sends the same notifications by email when SMTPAddr is set.
	SMTPAddr     string   `yaml:"smtp_addr" env:"SMTP_ADDR"` // host:port
	SMTPUsername string   `yaml:"smtp_username" env:"SMTP_USERNAME"`
	SMTPPassword Secret   `yaml:"smtp_password" env:"SMTP_PASSWORD"`
	SMTPFrom     string   `yaml:"smtp_from" env:"SMTP_FROM"`
	SMTPTo       []string `yaml:"smtp_to" env:"SMTP_TO"`
	// VEXAuthor and VEXProductPURL name the manufacturer and a release in
	// exported VEX; defaults "Aftercare" and "pkg:generic/%s@%s" (product,
	// version).
	VEXAuthor      string `yaml:"vex_author" env:"VEX_AUTHOR"`
	VEXProductPURL string `yaml:"vex_product_purl" env:"VEX_PRODUCT_PURL"`
}

// A FeedSource is one feed to sync.
type FeedSource struct {
	Name string   `yaml:"name"` // e.g. "kev", "osv:Debian"
	Kind string   `yaml:"kind"` // osv, nvd, kev or epss
	URLs []string `yaml:"urls"` // tried in order
}

// Default returns the documented defaults.
func Default() Config {
	return Config{
		Listen:               "127.0.0.1:8080",
		DataDir:              "./aftercare-data",
		EmbeddedBrokerListen: "127.0.0.1:1884",
		TopicPrefix:          protocol.DefaultTopicPrefix,
		ShareGroup:           "aftercare",
		TimestampExpiry:      24 * time.Hour,
		RolloutBinBits:       8,
		RolloutTick:          10 * time.Second,
		DeferralReminder:     24 * time.Hour,
		MaxDeferralCritical:  7 * 24 * time.Hour,
		MaxDeferralHigh:      30 * 24 * time.Hour,
		MaxDeferralMedium:    90 * 24 * time.Hour,
		MaxDeferralLow:       180 * 24 * time.Hour,
		MaxBundleBytes:       2 << 30,
		DeviceCertValidity:   90 * 24 * time.Hour,
		LogLevel:             "info",
		Vuln: Vuln{
			MaxSBOMBytes: 64 << 20, SBOMMaxDepth: 64, SBOMMaxComponents: 50_000,
			MaxFeedBytes: 1 << 30, SyncInterval: 6 * time.Hour,
			OSVEcosystems: []string{"Debian", "Alpine", "Go"},
			SLA: map[string]time.Duration{
				"kev": 48 * time.Hour, "critical": 48 * time.Hour, "high": 7 * 24 * time.Hour, "epss": 7 * 24 * time.Hour,
			},
			VEXAuthor: "Aftercare", VEXProductPURL: "pkg:generic/%s@%s",
		},
	}
}

// Load builds the configuration from defaults, the file named by -config,
// the environment and the other flags, and validates it.
func Load(args []string, getenv func(string) string) (Config, error) {
	cfg := Default()
	fs := flag.NewFlagSet("aftercare-server", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	file := fs.String("config", "", "YAML configuration file")
	listen := fs.String("listen", "", "HTTP listen address (overrides listen)")
	dataDir := fs.String("data-dir", "", "data directory (overrides data_dir)")
	if err := fs.Parse(args); err != nil {
		return cfg, fmt.Errorf("%w\n%s", err, Usage())
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected argument %q\n%s", fs.Arg(0), Usage())
	}
	if *file != "" {
		if err := confload.File(&cfg, *file); err != nil {
			return cfg, err
		}
	}
	if err := confload.Env(&cfg, getenv); err != nil {
		return cfg, err
	}
	if *listen != "" {
		cfg.Listen = *listen
	}
	if *dataDir != "" {
		cfg.DataDir = *dataDir
	}
	cfg.fillDerived()
	return cfg, cfg.Validate()
}

// Usage describes the flags and where the rest of the configuration comes from.
func Usage() string {
	return `usage: aftercare-server [-config file.yaml] [-listen addr] [-data-dir dir]

Every setting can come from the YAML file or from an AFTERCARE_* environment
variable (e.g. AFTERCARE_DATABASE_URL); flags win over both. See
docs/configuration.md for the list.`
}

func (c *Config) fillDerived() {
	if c.PublicURL == "" {
		c.PublicURL = "http://" + c.Listen
		if c.TLSCertFile != "" {
			c.PublicURL = "https://" + c.Listen
		}
	}
	if c.RolloutLeaseTTL == 0 {
		c.RolloutLeaseTTL = max(4*c.RolloutTick, 30*time.Second)
	}
	if c.DatabaseURL == "" && c.DataDir != "" {
		c.DatabaseURL = Secret("sqlite://" + filepath.Join(c.DataDir, "aftercare.db"))
	}
	if c.DeviceBrokerURL == "" {
		if c.BrokerURL != "" {
			c.DeviceBrokerURL = c.BrokerURL
		} else {
			c.DeviceBrokerURL = "ssl://" + c.EmbeddedBrokerListen
		}
	}
}

// Validate reports every invalid field at once, naming the field and value.
func (c Config) Validate() error {
	var errs []error
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		errs = append(errs, fmt.Errorf("listen %q is not host:port", c.Listen))
	}
	if u, err := url.Parse(c.PublicURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, fmt.Errorf("public_url %q is not an http(s) URL", c.PublicURL))
	}
	if c.DataDir == "" {
		errs = append(errs, errors.New("data_dir is required"))
	}
	if s := string(c.DatabaseURL); !strings.HasPrefix(s, "sqlite:") && !strings.HasPrefix(s, "postgres://") && !strings.HasPrefix(s, "postgresql://") {
		errs = append(errs, errors.New("database_url must start with sqlite: or postgres:// (value not shown: it may hold a password)"))
	}
	if c.BrokerURL != "" {
		if u, err := url.Parse(c.BrokerURL); err != nil || u.Host == "" {
			errs = append(errs, fmt.Errorf("broker_url %q is not a URL such as tcp://host:1883", c.BrokerURL))
		}
	} else if _, _, err := net.SplitHostPort(c.EmbeddedBrokerListen); err != nil {
		errs = append(errs, fmt.Errorf("embedded_broker_listen %q is not host:port", c.EmbeddedBrokerListen))
	}
	if c.PprofListen != "" {
		if host, _, err := net.SplitHostPort(c.PprofListen); err != nil || !isLoopback(host) {
			errs = append(errs, fmt.Errorf("pprof_listen %q must be a loopback host:port such as 127.0.0.1:6060 (profiles show the server's internals)", c.PprofListen))
		}
	}
	if !protocol.ValidTopicPrefix(c.TopicPrefix) {
		errs = append(errs, fmt.Errorf("topic_prefix %q must be levels of letters, digits, '.', '_', '-' separated by '/'", c.TopicPrefix))
	}
	if !protocol.ValidID(c.ShareGroup) {
		errs = append(errs, fmt.Errorf("share_group %q must be letters, digits, '.', '_', '-'", c.ShareGroup))
	}
	if c.SnapshotKey == "" {
		errs = append(errs, errors.New("snapshot_key is required (the online snapshot key from `aftercare keys init`)"))
	}
	if c.TimestampKey == "" {
		errs = append(errs, errors.New("timestamp_key is required (the online timestamp key from `aftercare keys init`)"))
	}
	if c.RolloutKey == "" {
		errs = append(errs, errors.New("rollout_key is required (the online rollout key from `aftercare keys init`)"))
	}
	if c.RolloutTick < 100*time.Millisecond || c.RolloutTick > time.Hour {
		errs = append(errs, fmt.Errorf("rollout_tick %s must be between 100ms and 1h", c.RolloutTick))
	}
	if c.RolloutLeaseTTL < 2*c.RolloutTick || c.RolloutLeaseTTL > time.Hour {
		errs = append(errs, fmt.Errorf("rollout_lease_ttl %s must be at least 2 rollout ticks (%s) and at most 1h", c.RolloutLeaseTTL, 2*c.RolloutTick))
	}
	if c.DeferralReminder < 0 || c.DeferralReminder > 365*24*time.Hour {
		errs = append(errs, fmt.Errorf("deferral_reminder %s must be between 0 (off) and 1 year", c.DeferralReminder))
	}
	for name, d := range map[string]time.Duration{"max_deferral_critical": c.MaxDeferralCritical, "max_deferral_high": c.MaxDeferralHigh,
		"max_deferral_medium": c.MaxDeferralMedium, "max_deferral_low": c.MaxDeferralLow} {
		if d < 0 || d > 3*365*24*time.Hour {
			errs = append(errs, fmt.Errorf("%s %s must be between 0 and 3 years", name, d))
		}
	}
	if c.RolloutBinBits < 0 || c.RolloutBinBits > 16 {
		errs = append(errs, fmt.Errorf("rollout_bin_bits %d must be between 0 (one file) and 16 (65536 bins)", c.RolloutBinBits))
	}
	if c.TimestampExpiry < time.Hour {
		errs = append(errs, fmt.Errorf("timestamp_expiry %s must be at least 1h", c.TimestampExpiry))
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		errs = append(errs, fmt.Errorf("tls_cert_file %q and tls_key_file go together: set both or neither", c.TLSCertFile))
	}
	if (c.DeviceCACert == "") != (c.DeviceCAKey == "") {
		errs = append(errs, fmt.Errorf("device_ca_cert %q and device_ca_key go together: set both or neither", c.DeviceCACert))
	}
	if (c.BrokerClientCert == "") != (c.BrokerClientKey == "") {
		errs = append(errs, fmt.Errorf("broker_client_cert %q and broker_client_key go together: set both or neither", c.BrokerClientCert))
	}
	if c.DeviceCertValidity < time.Minute || c.DeviceCertValidity > 5*365*24*time.Hour {
		errs = append(errs, fmt.Errorf("device_cert_validity %s must be from 1m to 43800h (5 years)", c.DeviceCertValidity))
	}
	if c.MaxBundleBytes < 1<<20 {
		errs = append(errs, fmt.Errorf("max_bundle_bytes %d must be at least 1 MiB", c.MaxBundleBytes))
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(c.LogLevel)); err != nil {
		errs = append(errs, fmt.Errorf("log_level %q is not debug, info, warn or error", c.LogLevel))
	}
	errs = append(errs, c.Vuln.validate()...)
	return errors.Join(errs...)
}

func (v Vuln) validate() []error {
	var errs []error
	if v.MaxSBOMBytes < 1<<10 {
		errs = append(errs, fmt.Errorf("vuln.max_sbom_bytes %d must be at least 1 KiB", v.MaxSBOMBytes))
	}
	if v.SBOMMaxDepth < 8 || v.SBOMMaxDepth > 10_000 {
		errs = append(errs, fmt.Errorf("vuln.sbom_max_depth %d must be from 8 to 10000", v.SBOMMaxDepth))
	}
	if v.SBOMMaxComponents < 1 {
		errs = append(errs, fmt.Errorf("vuln.sbom_max_components %d must be at least 1", v.SBOMMaxComponents))
	}
	if v.MaxFeedBytes < 1<<20 {
		errs = append(errs, fmt.Errorf("vuln.max_feed_bytes %d must be at least 1 MiB", v.MaxFeedBytes))
	}
	if v.SyncInterval < time.Minute {
		errs = append(errs, fmt.Errorf("vuln.sync_interval %s must be at least 1m", v.SyncInterval))
	}
	if v.EPSSThreshold != nil && (*v.EPSSThreshold < 0 || *v.EPSSThreshold > 1) {
		errs = append(errs, fmt.Errorf("vuln.epss_threshold %v must be from 0 to 1", *v.EPSSThreshold))
	}
	if v.WebhookURL != "" {
		if u, err := url.Parse(v.WebhookURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("vuln.webhook_url %q is not an http(s) URL", v.WebhookURL))
		}
	}
	if v.SMTPAddr != "" {
		if _, _, err := net.SplitHostPort(v.SMTPAddr); err != nil {
			errs = append(errs, fmt.Errorf("vuln.smtp_addr %q is not host:port", v.SMTPAddr))
		}
		if v.SMTPFrom == "" || len(v.SMTPTo) == 0 {
			errs = append(errs, errors.New("vuln.smtp_from and vuln.smtp_to are required with vuln.smtp_addr"))
		}
	}
	if !strings.Contains(v.VEXProductPURL, "%s") {
		errs = append(errs, fmt.Errorf("vuln.vex_product_purl %q must hold %%s for the product and %%s for the version", v.VEXProductPURL))
	}
	return errs
}

// Level returns the configured log level.
func (c Config) Level() slog.Level {
	var lvl slog.Level
	lvl.UnmarshalText([]byte(c.LogLevel))
	return lvl
}

// MaxDeferral returns the longest deferral per severity.
func (c Config) MaxDeferral() map[string]time.Duration {
	return map[string]time.Duration{"critical": c.MaxDeferralCritical, "high": c.MaxDeferralHigh,
		"medium": c.MaxDeferralMedium, "low": c.MaxDeferralLow}
}

// isLoopback reports whether host is "localhost" or a loopback IP.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
