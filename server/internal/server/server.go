// Package server assembles the fleet server from its parts: store, release
// repository, broker (embedded or external), MQTT bridge, domain services
// and HTTP API. aftercare-server's main calls Start and waits.
package server

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/aftercare/aftercare/firmware"
	"github.com/aftercare/aftercare/internal/atomicfile"
	"github.com/aftercare/aftercare/server/internal/access"
	"github.com/aftercare/aftercare/server/internal/api"
	"github.com/aftercare/aftercare/server/internal/broker"
	"github.com/aftercare/aftercare/server/internal/config"
	"github.com/aftercare/aftercare/server/internal/deviceca"
	"github.com/aftercare/aftercare/server/internal/fleet"
	"github.com/aftercare/aftercare/server/internal/ingest"
	"github.com/aftercare/aftercare/server/internal/mqttbridge"
	"github.com/aftercare/aftercare/server/internal/release"
	"github.com/aftercare/aftercare/server/internal/rollout"
	"github.com/aftercare/aftercare/server/internal/store"
	"github.com/aftercare/aftercare/server/internal/tufrepo"
	"github.com/aftercare/aftercare/signing"
	"github.com/aftercare/aftercare/signing/kms"
)

// OnlineKeyPassphraseEnv names the environment variable holding the
// passphrase of encrypted online keys.
const OnlineKeyPassphraseEnv = "AFTERCARE_ONLINE_KEY_PASSPHRASE"

// repoRefreshInterval is how often the server checks whether metadata needs
// re-signing and publishes any assignment a failed publish left out.
const repoRefreshInterval = 10 * time.Minute

// Server is a running fleet server.
type Server struct {
	cfg       config.Config
	log       *slog.Logger
	store     *store.Store
	broker    *broker.Broker // nil with an external broker
	bridge    *mqttbridge.Bridge
	ingest    *ingest.Ingester
	endIngest func() // stops the event ingester; nil before it starts
	ca        *deviceca.CA
	fleet     *fleet.Service
	repo      *tufrepo.Repo
	rollout   *tufrepo.Rollout
	rollouts  *rollout.Engine
	http      *http.Server
	httpAddr  net.Addr
	pprof     *http.Server // nil unless cfg.PprofListen is set
	brokerURL string
	done      chan struct{}
	cancel    context.CancelFunc
}

// Start builds every part from cfg and starts serving. getenv supplies the
// online key passphrase when the keys are encrypted.
func Start(ctx context.Context, cfg config.Config, getenv func(string) string, log *slog.Logger) (_ *Server, err error) {
	s := &Server{cfg: cfg, log: log, done: make(chan struct{})}
	defer func() {
		if err != nil {
			s.closeParts()
		}
	}()
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	adminToken, err := adminToken(cfg)
	if err != nil {
		return nil, err
	}
	if s.store, err = store.Open(ctx, string(cfg.DatabaseURL)); err != nil {
		return nil, err
	}
	warnUnshared(cfg, log)
	if s.repo, err = openRepo(ctx, cfg, s.store, getenv, log); err != nil {
		return nil, err
	}
	people, err := access.New(access.Options{Store: s.store, Log: log.With("component", "access"), AdminToken: adminToken})
	if err != nil {
		return nil, err
	}
	vulns, err := newVuln(cfg, s.store, people, log)
	if err != nil {
		return nil, err
	}
	releases, err := release.New(release.Options{
		Store: s.store, Repo: s.repo, Log: log,
		StagingDir: sharedDir(cfg, "staging"),
		SBOMDir:    sharedDir(cfg, "sboms"),
		SBOMs:      vulns,
	})
	if err != nil {
		return nil, err
	}
	if err := releases.Sync(ctx); err != nil {
		return nil, fmt.Errorf("sync release catalog: %w", err)
	}
	if err := vulns.IngestPending(ctx, releases); err != nil {
		return nil, fmt.Errorf("ingest release SBOMs: %w", err)
	}
	if s.rollout, err = openRollout(ctx, cfg, s.store, s.repo, getenv, log); err != nil {
		return nil, err
	}
	if s.ca, err = deviceca.Open(cfg.DataDir, cfg.DeviceCACert, cfg.DeviceCAKey, time.Now()); err != nil {
		return nil, err
	}
	fl, err := fleet.New(fleet.Options{
		Store: s.store, Log: log, TopicPrefix: cfg.TopicPrefix,
		CA: s.ca, CertValidity: cfg.DeviceCertValidity, CRLPath: filepath.Join(cfg.DataDir, deviceca.CRLFile),
	})
	if err != nil {
		return nil, err
	}
	s.fleet = fl
	if err := fl.WriteCRL(ctx); err != nil {
		return nil, err
	}
	// Wave promotion, deferral expiry and rate steps run in one replica at
	// a time: the one holding the scheduler lease.
	schedulerLease := s.store.Lease(rolloutSchedulerLease, instanceID(cfg.DataDir), rolloutLeaseTTL(cfg), nil)
	if s.rollouts, err = rollout.New(rollout.Options{Store: s.store, Log: log.With("component", "rollout"), Publisher: s.rollout,
		Releases: releaseFlags{s.repo}, MaxDeferral: cfg.MaxDeferral(), DeferralReminder: cfg.DeferralReminder, TickInterval: cfg.RolloutTick,
		Audit: people.AuditRollout, Leader: schedulerLease, ReportsFeed: true}); err != nil {
		return nil, err
	}
	if err := s.connectBroker(ctx, fl); err != nil {
		return nil, err
	}
	handler, err := api.New(api.Options{
		Fleet: fl, Releases: releases, Repo: s.repo, Rollout: s.rollout,
		Vuln: vulns, FeedSync: s.feedSync(vulns), MaxFeedBytes: cfg.Vuln.MaxFeedBytes,
		RepoDir: releaseRepoDir(cfg), RolloutDir: rolloutRepoDir(cfg), Access: people, Store: s.store,
		IngestStats:    s.ingest.Stats,
		MaxBundleBytes: cfg.MaxBundleBytes, Log: log, Rollouts: s.rollouts,
	})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", cfg.Listen, err)
	}
	s.httpAddr = ln.Addr()
	s.http = &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	if cfg.TLSCertFile != "" {
		if s.http.TLSConfig, err = httpsConfig(cfg, s.ca); err != nil {
			ln.Close()
			return nil, err
		}
		ln = tls.NewListener(ln, s.http.TLSConfig)
	}
	bg, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go func() {
		defer close(s.done)
		if err := s.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server stopped", "err", err)
		}
	}()
	if cfg.PprofListen != "" {
		if err := s.servePprof(cfg.PprofListen); err != nil {
			return nil, err
		}
	}
	go s.refreshRepo(bg)
	go s.rollouts.Run(bg)
	s.startVuln(bg, vulns)
	log.Info("fleet server started", "listen", s.httpAddr.String(), "public_url", cfg.PublicURL, "broker", s.brokerURL,
		"embedded_broker", s.broker != nil, "database", dbKind(cfg), "data_dir", cfg.DataDir)
	return s, nil
}

// recordReport stores a device's state report and tells the rollout
// engine, whose next step then reads that device's outcome.
func (s *Server) recordReport(ctx context.Context, deviceID string, payload []byte) error {
	if err := s.fleet.RecordReport(ctx, deviceID, payload); err != nil {
		return err
	}
	s.rollouts.Reported(deviceID)
	return nil
}

func (s *Server) connectBroker(ctx context.Context, fl *fleet.Service) error {
	cfg := s.cfg
	in, submit, err := s.startIngest()
	if err != nil {
		return err
	}
	s.ingest = in
	opts := mqttbridge.Options{
		BrokerURL: cfg.BrokerURL, ClientID: "aftercare-server-" + instanceID(cfg.DataDir),
		Username: cfg.BrokerUsername, Password: string(cfg.BrokerPassword),
		TopicPrefix: cfg.TopicPrefix, ShareGroup: cfg.ShareGroup, OnState: s.recordReport, OnEvents: submit, Log: s.log.With("component", "mqtt"),
	}
	deviceBroker := cfg.DeviceBrokerURL
	if cfg.BrokerURL == "" {
		b, clientTLS, err := startEmbeddedBroker(cfg, s.ca, fl, s.log)
		if err != nil {
			return err
		}
		s.broker = b
		fl.SetCutoff(b)
		opts.BrokerURL, opts.TLS = b.URL(), clientTLS
		if strings.HasSuffix(cfg.EmbeddedBrokerListen, ":0") {
			deviceBroker = b.URL()
		}
	} else {
		t, err := externalBrokerTLS(cfg)
		if err != nil {
			return err
		}
		opts.TLS = t
	}
	s.brokerURL = opts.BrokerURL
	fl.SetDeviceBroker(deviceBroker)
	bridge, err := mqttbridge.Open(ctx, opts)
	if err != nil {
		return err
	}
	s.bridge = bridge
	s.rollouts.SetHinter(bridge)
	return nil
}

// repositoryDir holds the TUF repositories, shared by replicas.
func repositoryDir(cfg config.Config) string {
	if cfg.RepositoryDir != "" {
		return cfg.RepositoryDir
	}
	return filepath.Join(cfg.DataDir, "repository")
}

func releaseRepoDir(cfg config.Config) string { return filepath.Join(repositoryDir(cfg), "release") }
func rolloutRepoDir(cfg config.Config) string { return filepath.Join(repositoryDir(cfg), "rollout") }

// sharedDir is where files every replica must see go: under repository_dir
// when it is set, else in the data directory as before it existed. Uploads
// are staged there too, so a staged image moves into the repository with a
// rename on one file system.
func sharedDir(cfg config.Config, name string) string {
	if cfg.RepositoryDir != "" {
		return filepath.Join(cfg.RepositoryDir, name)
	}
	return filepath.Join(cfg.DataDir, name)
}

// warnUnshared names the per-replica state that makes replicas sharing a
// repository directory disagree.
func warnUnshared(cfg config.Config, log *slog.Logger) {
	if cfg.RepositoryDir == "" {
		return
	}
	if cfg.DeviceCACert == "" {
		log.Warn("repository_dir is set but device_ca_cert is not: each replica makes its own device CA in its data_dir, and devices enrolled through one replica are refused by the broker certificates of another; give every replica the same device_ca_cert and device_ca_key")
	}
	if cfg.AdminToken == "" {
		log.Warn("repository_dir is set but admin_token is not: each replica generates its own bootstrap admin token into its data_dir; give every replica the same admin_token")
	}
}

// readRoot reads a configured root metadata file; an empty path is nil.
func readRoot(field, path string) ([]byte, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", field, err)
	}
	return b, nil
}

func openRepo(ctx context.Context, cfg config.Config, st *store.Store, getenv func(string) string, log *slog.Logger) (*tufrepo.Repo, error) {
	pass := signing.PassphraseFromEnv(getenv, OnlineKeyPassphraseEnv)
	snap, err := kms.LoadSigner(ctx, cfg.SnapshotKey, pass)
	if err != nil {
		return nil, fmt.Errorf("snapshot_key: %w", err)
	}
	ts, err := kms.LoadSigner(ctx, cfg.TimestampKey, pass)
	if err != nil {
		return nil, fmt.Errorf("timestamp_key: %w", err)
	}
	root, err := readRoot("release_root", cfg.ReleaseRoot)
	if err != nil {
		return nil, err
	}
	repo, err := tufrepo.Open(tufrepo.Options{
		Dir:            releaseRepoDir(cfg),
		SnapshotSigner: snap, TimestampSigner: ts, TimestampExpiry: cfg.TimestampExpiry,
		Log: log.With("component", "tufrepo", "repository", "release"), Exclusive: st.Exclusive,
	}, root)
	if errors.Is(err, tufrepo.ErrNotInitialized) {
		return nil, errors.New("the release repository is not initialised: set release_root to the 1.root.json made by `aftercare keys init`")
	}
	if err != nil {
		return nil, fmt.Errorf("release repository: %w", err)
	}
	return repo, nil
}

func openRollout(ctx context.Context, cfg config.Config, st *store.Store, release *tufrepo.Repo, getenv func(string) string, log *slog.Logger) (*tufrepo.Rollout, error) {
	key, err := kms.LoadSigner(ctx, cfg.RolloutKey, signing.PassphraseFromEnv(getenv, OnlineKeyPassphraseEnv))
	if err != nil {
		return nil, fmt.Errorf("rollout_key: %w", err)
	}
	root, err := readRoot("rollout_root", cfg.RolloutRoot)
	if err != nil {
		return nil, err
	}
	r, err := tufrepo.OpenRollout(tufrepo.RolloutOptions{
		Dir: rolloutRepoDir(cfg), Signer: key, Release: release, Source: assignmentSource{st},
		BinBits: cfg.RolloutBinBits, TimestampExpiry: cfg.TimestampExpiry, Exclusive: st.Exclusive,
		Log: log.With("component", "tufrepo", "repository", "rollout"),
	}, root)
	if errors.Is(err, tufrepo.ErrNotInitialized) {
		return nil, errors.New("the rollout repository is not initialised: set rollout_root to the 1.rollout-root.json made by `aftercare keys init`")
	}
	if err != nil {
		return nil, fmt.Errorf("rollout repository: %w", err)
	}
	// Publish what the assignments table holds now, including anything a
	// crash kept from being published.
	if err := r.Sync(ctx); err != nil {
		return nil, fmt.Errorf("publish the rollout repository: %w", err)
	}
	return r, nil
}

// assignmentSource reads the assignments table for the rollout repository.
type assignmentSource struct{ st *store.Store }

func (a assignmentSource) AssignedDevices(ctx context.Context) ([]string, error) {
	return a.st.AssignedDevices(ctx)
}

func (a assignmentSource) Assignments(ctx context.Context, deviceIDs []string) ([]tufrepo.Assignment, error) {
	rows, err := a.st.AssignmentsOf(ctx, deviceIDs)
	if err != nil {
		return nil, err
	}
	var sites []string
	for _, r := range rows {
		sites = append(sites, r.SiteID)
	}
	// Install and reboot only inside the site's maintenance windows: they
	// go into each device's signed entry.
	windows, err := rollout.SiteWindows(ctx, a.st, time.Now(), sites)
	if err != nil {
		return nil, err
	}
	out := make([]tufrepo.Assignment, len(rows))
	for i, r := range rows {
		out[i] = tufrepo.Assignment{DeviceID: r.DeviceID, RolloutID: r.RolloutID, TargetPath: r.TargetPath, Windows: windows[r.SiteID]}
	}
	return out, nil
}

// releaseFlags answers for allow_rollback from the release repository's
// signed targets.
type releaseFlags struct{ repo *tufrepo.Repo }

func (f releaseFlags) AllowsRollback(targetPath string) (bool, error) {
	tf, ok := f.repo.Target(targetPath)
	if !ok {
		return false, nil
	}
	c, err := firmware.ParseTargetCustom(tf.Custom)
	if err != nil {
		return false, fmt.Errorf("release target %s: %w", targetPath, err)
	}
	return c.AllowRollback, nil
}

// adminToken returns the configured admin token, or the one kept in the
// data directory, generating it at first start.
func adminToken(cfg config.Config) (string, error) {
	if cfg.AdminToken != "" {
		return string(cfg.AdminToken), nil
	}
	path := filepath.Join(cfg.DataDir, "admin-token")
	if b, err := os.ReadFile(path); err == nil {
		return strings.TrimSpace(string(b)), nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("admin token: %w", err)
	}
	b := make([]byte, 32)
	rand.Read(b)
	token := "aca_" + hex.EncodeToString(b)
	if err := atomicfile.WriteFile(path, []byte(token+"\n"), 0o600); err != nil {
		return "", err
	}
	return token, nil
}

// instanceID is a stable random name for this server's data directory, so
// its MQTT session survives restarts.
func instanceID(dataDir string) string {
	path := filepath.Join(dataDir, "instance-id")
	if b, err := os.ReadFile(path); err == nil && len(strings.TrimSpace(string(b))) > 0 {
		return strings.TrimSpace(string(b))
	}
	b := make([]byte, 6)
	rand.Read(b)
	id := hex.EncodeToString(b)
	atomicfile.WriteFile(path, []byte(id+"\n"), 0o644)
	return id
}

func dbKind(cfg config.Config) string {
	if strings.HasPrefix(string(cfg.DatabaseURL), "sqlite:") {
		return "sqlite"
	}
	return "postgres"
}

func (s *Server) refreshRepo(ctx context.Context) {
	t := time.NewTicker(repoRefreshInterval)
	defer t.Stop()
	for {
		if err := s.repo.Refresh(ctx); err != nil {
			s.log.Error("re-signing release repository metadata failed", "err", err)
		}
		if err := s.rollout.Refresh(ctx); err != nil {
			s.log.Error("re-signing rollout repository metadata failed", "err", err)
		}
		if err := s.rollout.Sync(ctx); err != nil && ctx.Err() == nil {
			s.log.Error("publishing the rollout repository failed", "err", err)
		}
		// A fresh CRL long before the last one's nextUpdate (7 days).
		if err := s.fleet.WriteCRL(ctx); err != nil && ctx.Err() == nil {
			s.log.Error("writing the device CRL failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Addr is the HTTP address the server listens on.
func (s *Server) Addr() net.Addr { return s.httpAddr }

// BrokerURL is the broker the server is connected to.
func (s *Server) BrokerURL() string { return s.brokerURL }

// Shutdown stops accepting requests, waits for those in flight until ctx
// ends, drains the embedded broker (until ctx ends: what it acknowledged
// to devices is stored and acknowledged by the server, so its in-memory
// sessions hold nothing that would be lost), and closes every part.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.http.Shutdown(ctx)
	<-s.done
	if s.broker != nil {
		if derr := s.broker.Drain(ctx); derr != nil {
			s.log.Error("embedded broker not drained; device messages it acknowledged may be lost", "err", derr)
		}
	}
	s.closeParts()
	return err
}

func (s *Server) closeParts() {
	if s.cancel != nil {
		s.cancel()
	}
	if s.pprof != nil {
		s.pprof.Close()
	}
	if s.bridge != nil {
		s.bridge.Close()
	}
	if s.endIngest != nil {
		s.endIngest()
	}
	if s.broker != nil {
		s.broker.Close()
	}
	if s.store != nil {
		s.store.Close()
	}
}

// rolloutSchedulerLease names the lease the replica running scheduled
// rollout work holds.
const rolloutSchedulerLease = "rollout.scheduler"

// rolloutLeaseTTL is the configured lease TTL, by default a few scheduler
// ticks, so the holder renews it well before another replica may take
// over, and a replica that died is replaced within a minute or so.
func rolloutLeaseTTL(cfg config.Config) time.Duration {
	if cfg.RolloutLeaseTTL > 0 {
		return cfg.RolloutLeaseTTL
	}
	return max(4*cfg.RolloutTick, 30*time.Second)
}

// servePprof serves Go's runtime profiles on addr, a loopback address
// (config.Validate checks), apart from the API and its authentication.
func (s *Server) servePprof(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("pprof_listen %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	s.pprof = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go s.pprof.Serve(ln)
	s.log.Warn("serving runtime profiles", "pprof_listen", ln.Addr().String())
	return nil
}
