package server

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/aftercare/aftercare/server/internal/access"
	"github.com/aftercare/aftercare/server/internal/config"
	"github.com/aftercare/aftercare/server/internal/sbom"
	"github.com/aftercare/aftercare/server/internal/store"
	"github.com/aftercare/aftercare/server/internal/triage"
	"github.com/aftercare/aftercare/server/internal/vuln"
)

// notifyInterval is how often queued notifications are retried.
const notifyInterval = time.Minute

// feedSyncLease names the lease of the scheduled feed sync;
// feedSyncTimeout bounds one sync's downloads.
const (
	feedSyncLease   = "vuln.feed-sync"
	feedSyncTimeout = 30 * time.Minute
)

// newVuln builds the vulnerability monitor and its notifier from cfg.
func newVuln(cfg config.Config, st *store.Store, people *access.Service, log *slog.Logger) (*vuln.Service, error) {
	v := cfg.Vuln
	if err := vuln.ValidateSyncSources(syncSources(v)); err != nil {
		return nil, err
	}
	policy := triage.Policy{SLA: v.SLA, EPSSThreshold: 0.5}
	if v.EPSSThreshold != nil {
		policy.EPSSThreshold = *v.EPSSThreshold
	}
	notifier, err := triage.NewNotifier(triage.NotifierOptions{
		Store: st, Log: log.With("component", "notify"), HTTP: newHTTPClient(30 * time.Second),
		WebhookURL: v.WebhookURL, WebhookSecret: v.WebhookSecret,
		SMTP: triage.SMTP{Addr: v.SMTPAddr, Username: v.SMTPUsername, Password: v.SMTPPassword, From: v.SMTPFrom, To: v.SMTPTo},
	})
	if err != nil {
		return nil, err
	}
	return vuln.New(vuln.Options{
		Store: st, Log: log.With("component", "vuln"), Policy: policy, Notifier: notifier,
		SBOMLimits:  sbom.Limits{MaxBytes: v.MaxSBOMBytes, MaxDepth: v.SBOMMaxDepth, MaxComponents: v.SBOMMaxComponents},
		ProductPURL: v.VEXProductPURL, Author: v.VEXAuthor,
		Audit: people.AuditDisposition,
	})
}

func syncSources(v config.Vuln) []vuln.SyncSource {
	if len(v.Feeds) == 0 {
		return vuln.DefaultSyncSources(v.OSVEcosystems)
	}
	out := make([]vuln.SyncSource, len(v.Feeds))
	for i, f := range v.Feeds {
		out[i] = vuln.SyncSource{Name: f.Name, Kind: f.Kind, URLs: f.URLs}
	}
	return out
}

// feedSync returns the function behind POST /api/v1/vuln/feeds/sync.
func (s *Server) feedSync(vulns *vuln.Service) func(ctx context.Context) (vuln.SyncResult, error) {
	client := newHTTPClient(feedSyncTimeout)
	sources := syncSources(s.cfg.Vuln)
	return func(ctx context.Context) (vuln.SyncResult, error) {
		return vulns.Sync(ctx, client, sources, s.cfg.Vuln.MaxFeedBytes)
	}
}

// startVuln runs the scheduled feed sync (when configured) and the
// notification retries until ctx ends.
func (s *Server) startVuln(ctx context.Context, vulns *vuln.Service) {
	if s.cfg.Vuln.Sync {
		// Several replicas may share the database: the one holding the
		// lease syncs. It renews the lease at each sync; the lease
		// outlives one interval plus the longest sync, so another
		// replica takes over only after the holder stopped.
		lease := s.store.Lease(feedSyncLease, instanceID(s.cfg.DataDir), s.cfg.Vuln.SyncInterval+feedSyncTimeout, nil)
		go vulns.RunSync(ctx, lease, newHTTPClient(feedSyncTimeout), syncSources(s.cfg.Vuln), s.cfg.Vuln.MaxFeedBytes, s.cfg.Vuln.SyncInterval)
	}
	go vulns.RunNotifier(ctx, notifyInterval)
}

// newHTTPClient returns a client for outbound calls with timeouts.
func newHTTPClient(timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: 30 * time.Second}).DialContext,
			TLSHandshakeTimeout:   30 * time.Second,
			ResponseHeaderTimeout: 2 * time.Minute,
		},
	}
}
