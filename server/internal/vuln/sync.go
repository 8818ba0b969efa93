package vuln

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/aftercare/aftercare/server/internal/store"
	"github.com/aftercare/aftercare/server/internal/vuln/feed"
)

// A SyncSource is one feed to fetch: its URLs are tried in order, so
// local mirrors come first and upstream last.
type SyncSource struct {
	Name string   `yaml:"name" json:"name"` // feed name, e.g. "kev", "osv:Alpine"
	Kind string   `yaml:"kind" json:"kind"` // osv, nvd, kev, epss
	URLs []string `yaml:"urls" json:"urls"`
}

// DefaultSyncSources are the public feeds: CISA KEV, FIRST EPSS, NVD's
// "modified" feed (the last 8 days of changes) and, per OSV ecosystem
// named, its all.zip.
func DefaultSyncSources(osvEcosystems []string) []SyncSource {
	out := []SyncSource{
		{Name: "kev", Kind: feed.KindKEV, URLs: []string{"https://www.cisa.gov/sites/default/files/feeds/known_exploited_vulnerabilities.json"}},
		{Name: "epss", Kind: feed.KindEPSS, URLs: []string{"https://epss.empiricalsecurity.com/epss_scores-current.csv.gz"}},
		{Name: "nvd-modified", Kind: feed.KindNVD, URLs: []string{"https://nvd.nist.gov/feeds/json/cve/2.0/nvdcve-2.0-modified.json.gz"}},
	}
	for _, eco := range osvEcosystems {
		out = append(out, SyncSource{Name: "osv:" + eco, Kind: feed.KindOSV,
			URLs: []string{"https://osv-vulnerabilities.storage.googleapis.com/" + eco + "/all.zip"}})
	}
	return out
}

// ValidateSyncSources reports every problem with sources.
func ValidateSyncSources(sources []SyncSource) error {
	var errs []error
	seen := map[string]bool{}
	for i, src := range sources {
		where := fmt.Sprintf("vuln_feeds[%d]", i)
		if src.Name == "" {
			errs = append(errs, fmt.Errorf("%s.name is required", where))
		} else if seen[src.Name] {
			errs = append(errs, fmt.Errorf("%s.name %q appears twice", where, src.Name))
		}
		seen[src.Name] = true
		if !slices.Contains(feed.Kinds, src.Kind) {
			errs = append(errs, fmt.Errorf("%s.kind %q must be one of %s", where, src.Kind, strings.Join(feed.Kinds, ", ")))
		}
		if len(src.URLs) == 0 {
			errs = append(errs, fmt.Errorf("%s.urls: at least one URL is required", where))
		}
		for _, u := range src.URLs {
			if !strings.HasPrefix(u, "https://") && !strings.HasPrefix(u, "http://") {
				errs = append(errs, fmt.Errorf("%s.urls %q is not an http(s) URL", where, u))
			}
		}
	}
	return errors.Join(errs...)
}

// A SyncResult says what one sync did per feed.
type SyncResult struct {
	Feeds    []SyncOutcome   `json:"feeds"`
	Analysis *AnalysisResult `json:"analysis,omitempty"` // when a feed changed
}

// A SyncOutcome is one feed's result.
type SyncOutcome struct {
	Name    string `json:"name"`
	Outcome string `json:"outcome"` // "imported", "not-modified", "failed"
	URL     string `json:"url,omitempty"`
	Records int    `json:"records,omitempty"`
	Error   string `json:"error,omitempty"` // failed: every URL's error; the last good data is kept
}

// Sync fetches every source once: with conditional requests (the ETag and
// Last-Modified of the last good import of the same URL), mirrors in
// order, and one import transaction per feed. A feed whose URLs all fail
// keeps its last good data, and the failure is recorded on the feed. After
// any change every release is re-analysed once.
func (s *Service) Sync(ctx context.Context, client *http.Client, sources []SyncSource, maxBytes int64) (SyncResult, error) {
	feeds, err := s.opts.Store.Feeds(ctx)
	if err != nil {
		return SyncResult{}, err
	}
	last := map[string]store.Feed{}
	for _, f := range feeds {
		last[f.Name] = f
	}
	var res SyncResult
	changed := false
	for _, src := range sources {
		out := s.syncOne(ctx, client, src, last[src.Name], maxBytes)
		if out.Outcome == "imported" {
			changed = true
		}
		if out.Outcome != "imported" {
			msg := ""
			if out.Outcome == "failed" {
				msg = out.Error
				s.opts.Log.Warn("feed sync failed; keeping the last good data", "feed", src.Name, "err", out.Error)
			}
			if err := s.opts.Store.RecordFeedAttempt(ctx, src.Name, src.Kind, msg, s.now()); err != nil {
				return res, err
			}
		}
		res.Feeds = append(res.Feeds, out)
	}
	if changed {
		a, err := s.Analyse(ctx, nil)
		if err != nil {
			return res, err
		}
		res.Analysis = &a
	}
	return res, nil
}

func (s *Service) syncOne(ctx context.Context, client *http.Client, src SyncSource, last store.Feed, maxBytes int64) SyncOutcome {
	out := SyncOutcome{Name: src.Name, Outcome: "failed"}
	var errs []string
	for _, u := range src.URLs {
		body, etag, modified, notModified, err := fetch(ctx, client, u, last, maxBytes)
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		out.URL = u
		if notModified {
			out.Outcome = "not-modified"
			return out
		}
		f, err := s.importOnly(ctx, src.Kind, body, Source{Feed: src.Name, Origin: u, ETag: etag, LastModified: modified})
		if err != nil {
			// A mirror serving a broken file must not hide a good one
			// further down the list.
			errs = append(errs, fmt.Sprintf("%s: %v", u, err))
			continue
		}
		out.Outcome, out.Records = "imported", f.Records
		return out
	}
	out.Error = strings.Join(errs, "; ")
	return out
}

// fetch GETs u, conditionally when the last good import came from u.
func fetch(ctx context.Context, client *http.Client, u string, last store.Feed, maxBytes int64) (body []byte, etag, modified string, notModified bool, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, "", "", false, fmt.Errorf("%s: %v", u, err)
	}
	if last.Source == u {
		if last.ETag != "" {
			req.Header.Set("If-None-Match", last.ETag)
		}
		if last.LastModified != "" {
			req.Header.Set("If-Modified-Since", last.LastModified)
		}
	}
	req.Header.Set("User-Agent", "aftercare-feed-sync")
	res, err := client.Do(req)
	if err != nil {
		return nil, "", "", false, fmt.Errorf("GET %s: %v", u, err)
	}
	defer res.Body.Close()
	switch {
	case res.StatusCode == http.StatusNotModified:
		return nil, "", "", true, nil
	case res.StatusCode != http.StatusOK:
		io.Copy(io.Discard, io.LimitReader(res.Body, 64<<10))
		return nil, "", "", false, fmt.Errorf("GET %s: status %d", u, res.StatusCode)
	}
	body, err = io.ReadAll(io.LimitReader(res.Body, maxBytes+1))
	if err != nil {
		return nil, "", "", false, fmt.Errorf("GET %s: body: %v (the download was cut short)", u, err)
	}
	if int64(len(body)) > maxBytes {
		return nil, "", "", false, fmt.Errorf("GET %s: larger than %d bytes (max_feed_bytes)", u, maxBytes)
	}
	return body, res.Header.Get("ETag"), res.Header.Get("Last-Modified"), false, nil
}

// A Lease says whether this replica may run scheduled work now, so that
// of several replicas sharing one database only one syncs the feeds.
type Lease interface {
	// Hold takes or renews the lease; false while another replica holds it.
	Hold(ctx context.Context) (bool, error)
}

// SyncLeased runs Sync if lease is held (nil: always) and reports whether
// it ran.
func (s *Service) SyncLeased(ctx context.Context, lease Lease, client *http.Client, sources []SyncSource, maxBytes int64) (bool, SyncResult, error) {
	if lease != nil {
		held, err := lease.Hold(ctx)
		if err != nil {
			return false, SyncResult{}, fmt.Errorf("feed sync lease: %w", err)
		}
		if !held {
			s.opts.Log.Debug("feed sync skipped: another replica holds the lease")
			return false, SyncResult{}, nil
		}
	}
	res, err := s.Sync(ctx, client, sources, maxBytes)
	return true, res, err
}

// RunSync syncs sources every interval until ctx ends; the first sync
// runs at once. With a lease, only the replica holding it syncs; the
// others check again each interval and take over when it expires.
func (s *Service) RunSync(ctx context.Context, lease Lease, client *http.Client, sources []SyncSource, maxBytes int64, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if _, _, err := s.SyncLeased(ctx, lease, client, sources, maxBytes); err != nil && ctx.Err() == nil {
			s.opts.Log.Error("feed sync", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// RunNotifier delivers queued notifications every interval until ctx
// ends.
func (s *Service) RunNotifier(ctx context.Context, interval time.Duration) {
	if s.opts.Notifier == nil || len(s.opts.Notifier.Channels()) == 0 {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if _, err := s.opts.Notifier.Deliver(ctx); err != nil && ctx.Err() == nil {
			s.opts.Log.Error("deliver notifications", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
