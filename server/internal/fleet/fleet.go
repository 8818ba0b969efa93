// Package fleet is the fleet server's domain of sites and devices: creating
// sites, enrolling devices with one-time tokens and certificate signing
// requests, authenticating devices by certificate, renewing and revoking
// their certificates,
// rolling releases out to them, taking in their state reports and answering
// for patch state. It takes and returns plain Go types; the HTTP edge lives
// in package api.
package fleet

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/aftercare/aftercare/protocol"
	"github.com/aftercare/aftercare/server/internal/audit"
	"github.com/aftercare/aftercare/server/internal/deviceca"
	"github.com/aftercare/aftercare/server/internal/problem"
	"github.com/aftercare/aftercare/server/internal/store"
)

// Options configures a Service.
type Options struct {
	Store *store.Store // required
	Log   *slog.Logger // required
	// TopicPrefix is the MQTT topic prefix enrolling devices are told to
	// use; default protocol.DefaultTopicPrefix.
	TopicPrefix string
	// EnrollmentTTL is how long an enrollment token stays valid; default 7 days.
	EnrollmentTTL time.Duration
	// CA signs device certificates at enrollment and renewal; required.
	CA *deviceca.CA
	// CertValidity is how long a device certificate is valid; default 90
	// days. Devices renew in the last third.
	CertValidity time.Duration
	// CRLPath is where the device CRL is written for an external broker
	// (Mosquitto's crlfile); empty writes none.
	CRLPath string
	Now     func() time.Time // nil means time.Now
}

// Service is the fleet domain. It is safe for concurrent use.
type Service struct {
	opts Options

	mu           sync.Mutex
	deviceBroker string // guarded by mu
	cutoff       Cutoff // guarded by mu
	crlNumber    int64  // guarded by mu

	reportMu   sync.Mutex
	reports    []*pendingReport // guarded by reportMu; waiting for a group commit
	committing bool             // guarded by reportMu; a caller is committing
}

// New returns a Service.
func New(opts Options) (*Service, error) {
	if opts.Store == nil || opts.Log == nil || opts.CA == nil {
		return nil, errors.New("fleet: Store, Log and CA are required")
	}
	if opts.CertValidity <= 0 {
		opts.CertValidity = DefaultCertValidity
	}
	if opts.EnrollmentTTL <= 0 {
		opts.EnrollmentTTL = 7 * 24 * time.Hour
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.TopicPrefix == "" {
		opts.TopicPrefix = protocol.DefaultTopicPrefix
	}
	return &Service{opts: opts}, nil
}

// SetDeviceBroker sets the broker URL enrolling devices are told to use.
func (s *Service) SetDeviceBroker(url string) {
	s.mu.Lock()
	s.deviceBroker = url
	s.mu.Unlock()
}

// newSecret returns a random credential with a readable prefix, so a leaked
// one can be recognised by secret scanners.
func newSecret(prefix string) string {
	b := make([]byte, 32)
	rand.Read(b)
	return prefix + base64.RawURLEncoding.EncodeToString(b)
}

// HashSecret is how credentials are stored: SHA-256, hex. The secrets carry
// 256 random bits, so a plain hash is enough.
func HashSecret(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

const maxSiteNameLen = 128

// CreateSite adds a site to an organisation, given by ID or name; a name
// that is not yet an organisation makes one, and "" means the default
// organisation. recs are appended to the audit log in the same
// transaction; an empty Object in them becomes "site/<new ID>".
func (s *Service) CreateSite(ctx context.Context, name, organisation string, recs ...audit.Record) (store.Site, error) {
	name, organisation = strings.TrimSpace(name), strings.TrimSpace(organisation)
	var problems []string
	if name == "" || len(name) > maxSiteNameLen {
		problems = append(problems, fmt.Sprintf("site name must be 1-%d characters", maxSiteNameLen))
	}
	if len(organisation) > maxSiteNameLen {
		problems = append(problems, fmt.Sprintf("organisation must be at most %d characters", maxSiteNameLen))
	}
	if err := problem.Invalid(problems...); err != nil {
		return store.Site{}, err
	}
	site := store.Site{ID: uuid.NewString(), Name: name, Organisation: organisation, CreatedAt: s.opts.Now()}
	if organisation != "" {
		org, err := s.opts.Store.Organisation(ctx, organisation)
		switch {
		case err == nil:
			site.OrganisationID, site.Organisation = org.ID, org.Name
		case !errors.Is(err, problem.ErrNotFound):
			return store.Site{}, err
		}
	}
	for i := range recs {
		if recs[i].Object == "" {
			recs[i].Object = "site/" + site.ID
		}
	}
	if err := s.opts.Store.CreateSite(ctx, site, recs...); err != nil {
		return store.Site{}, err
	}
	site, err := s.opts.Store.Site(ctx, site.ID)
	if err != nil {
		return store.Site{}, err
	}
	s.opts.Log.Info("site created", "site_id", site.ID, "name", name, "organisation_id", site.OrganisationID)
	return site, nil
}

// maxTokensPerRequest bounds one request for enrollment tokens.
const maxTokensPerRequest = 1000

// CreateEnrollmentTokens makes n one-time enrollment tokens for a site. The
// tokens are returned once and only their hashes are kept.
func (s *Service) CreateEnrollmentTokens(ctx context.Context, siteID string, n int) ([]string, time.Time, error) {
	if n < 1 || n > maxTokensPerRequest {
		return nil, time.Time{}, problem.Invalid(fmt.Sprintf("count %d must be between 1 and %d", n, maxTokensPerRequest))
	}
	if _, err := s.opts.Store.Site(ctx, siteID); err != nil {
		return nil, time.Time{}, err
	}
	now := s.opts.Now()
	expires := now.Add(s.opts.EnrollmentTTL)
	tokens := make([]string, n)
	for i := range tokens {
		tokens[i] = newSecret("ace_")
		if err := s.opts.Store.CreateEnrollmentToken(ctx, siteID, HashSecret(tokens[i]), now, expires); err != nil {
			return nil, time.Time{}, err
		}
	}
	return tokens, expires, nil
}

// RecordReport parses and stores a state report a device sent over MQTT.
// A malformed report is a *problem.InvalidError; a report from a device
// that is not enrolled wraps problem.ErrNotFound.
//
// Reports that arrive while another caller's commit runs are stored
// together in the next transaction (a group commit): the caller whose
// report finds no commit running commits, for itself and for whoever
// queued meanwhile, until the queue is empty; the others wait for their
// result. Each caller returns only once its report is durable.
func (s *Service) RecordReport(ctx context.Context, deviceID string, payload []byte) error {
	r, err := protocol.ParseStateReport(payload)
	if err != nil {
		return problem.InvalidFrom(err)
	}
	p := &pendingReport{in: store.ReportIn{DeviceID: deviceID, Report: r, Received: s.opts.Now()}, done: make(chan struct{})}
	s.reportMu.Lock()
	s.reports = append(s.reports, p)
	lead := !s.committing
	s.committing = true
	s.reportMu.Unlock()
	if lead {
		s.commitReports(ctx) // p's batch is among those it commits
	} else {
		select {
		case <-p.done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if p.res.Err == nil && p.res.Inserted {
		s.opts.Log.Info("device state", "device_id", deviceID, "seq", r.Seq, "state", r.State, "running", r.Running, "target", r.Target, "reason", r.Reason)
	}
	return p.res.Err
}

// maxReportBatch bounds the reports of one group commit, and
// reportCommitTimeout its time.
const (
	maxReportBatch      = 256
	reportCommitTimeout = 30 * time.Second
)

// A pendingReport waits for its group commit.
type pendingReport struct {
	in   store.ReportIn
	res  store.ReportResult
	done chan struct{} // closed when res is set
}

// commitReports commits queued reports until none is left. Only the
// caller that set s.committing runs it.
func (s *Service) commitReports(ctx context.Context) {
	for {
		s.reportMu.Lock()
		n := min(len(s.reports), maxReportBatch)
		batch := s.reports[:n:n]
		s.reports = s.reports[n:]
		if n == 0 {
			s.committing = false
			s.reportMu.Unlock()
			return
		}
		s.reportMu.Unlock()
		in := make([]store.ReportIn, n)
		for i, p := range batch {
			in[i] = p.in
		}
		// The batch holds other callers' reports: the leader's deadline
		// must not fail them.
		bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), reportCommitTimeout)
		res, err := s.opts.Store.RecordReports(bctx, in)
		cancel()
		for i, p := range batch {
			if err != nil {
				p.res = store.ReportResult{Err: err}
			} else {
				p.res = res[i]
			}
			close(p.done)
		}
	}
}

// SitePatchState returns the patch state of one site.
func (s *Service) SitePatchState(ctx context.Context, siteID string) (store.SitePatch, error) {
	return s.opts.Store.SitePatchState(ctx, siteID)
}

// PatchSummary returns the patch counts of every site.
func (s *Service) PatchSummary(ctx context.Context) ([]store.SitePatch, error) {
	return s.opts.Store.PatchSummary(ctx)
}

// Sites returns every site.
func (s *Service) Sites(ctx context.Context) ([]store.Site, error) {
	return s.opts.Store.Sites(ctx)
}

// Devices returns the devices matching f.
func (s *Service) Devices(ctx context.Context, f store.DeviceFilter) ([]store.Device, error) {
	return s.opts.Store.Devices(ctx, f)
}

// Device returns a device and its state reports, oldest first.
func (s *Service) Device(ctx context.Context, id string) (store.Device, []store.Report, error) {
	d, err := s.opts.Store.Device(ctx, id)
	if err != nil {
		return d, nil, err
	}
	reports, err := s.opts.Store.Reports(ctx, id)
	return d, reports, err
}

// Releases returns every release, newest first.
func (s *Service) Releases(ctx context.Context) ([]store.Release, error) {
	return s.opts.Store.Releases(ctx)
}

// Release returns one release.
func (s *Service) Release(ctx context.Context, id string) (store.Release, error) {
	return s.opts.Store.Release(ctx, id)
}
