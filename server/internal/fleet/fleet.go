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

	"github.com/aftercare/aftercare/firmware"
	"github.com/aftercare/aftercare/protocol"
	"github.com/aftercare/aftercare/server/internal/audit"
	"github.com/aftercare/aftercare/server/internal/deviceca"
	"github.com/aftercare/aftercare/server/internal/problem"
	"github.com/aftercare/aftercare/server/internal/store"
)

// A Hinter nudges a device to check for its assignment now.
type Hinter interface {
	Hint(ctx context.Context, deviceID, reason string) error
}

// An AssignmentPublisher is told after every change of device assignments
// (the assignments table is the single record of which device should run
// which release), so it can publish them to the devices, e.g. as the TUF
// rollout repository.
type AssignmentPublisher interface {
	AssignmentsChanged(ctx context.Context, deviceIDs []string) error
}

// Options configures a Service.
type Options struct {
	Store *store.Store // required
	Log   *slog.Logger // required
	// Hints is where rollouts send hints; nil until the broker is
	// connected, see SetHinter.
	Hints Hinter
	// Publisher is told about every change of assignments; nil publishes
	// nothing beyond the store.
	Publisher AssignmentPublisher
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
	hints        Hinter // guarded by mu
	deviceBroker string // guarded by mu
	cutoff       Cutoff // guarded by mu
	crlNumber    int64  // guarded by mu
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
	return &Service{opts: opts, hints: opts.Hints}, nil
}

// SetDeviceBroker sets the broker URL enrolling devices are told to use.
func (s *Service) SetDeviceBroker(url string) {
	s.mu.Lock()
	s.deviceBroker = url
	s.mu.Unlock()
}

// SetHinter sets where hints go, once the broker connection exists.
func (s *Service) SetHinter(h Hinter) {
	s.mu.Lock()
	s.hints = h
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

// RolloutRequest asks for a release to be rolled out.
type RolloutRequest struct {
	ReleaseID string   `json:"release_id"`
	Models    []string `json:"models,omitempty"`   // default: the release's models
	SiteIDs   []string `json:"site_ids,omitempty"` // default: every site
}

// CreateRollout assigns a release to the devices of the chosen models and
// sites that it applies to and that do not already run a newer version,
// then hints each of them.
func (s *Service) CreateRollout(ctx context.Context, req RolloutRequest) (store.Rollout, error) {
	rel, err := s.opts.Store.Release(ctx, req.ReleaseID)
	if errors.Is(err, problem.ErrNotFound) {
		return store.Rollout{}, problem.Invalid(fmt.Sprintf("release_id %q names no release", req.ReleaseID))
	}
	if err != nil {
		return store.Rollout{}, err
	}
	var problems []string
	for _, m := range req.Models {
		if !firmware.ValidName(m) || !contains(rel.Manifest.Models, m) {
			problems = append(problems, fmt.Sprintf("model %q is not one the release installs on (%s)", m, strings.Join(rel.Manifest.Models, ", ")))
		}
	}
	for _, id := range req.SiteIDs {
		if _, err := s.opts.Store.Site(ctx, id); errors.Is(err, problem.ErrNotFound) {
			problems = append(problems, fmt.Sprintf("site_ids: %q names no site", id))
		} else if err != nil {
			return store.Rollout{}, err
		}
	}
	if err := problem.Invalid(problems...); err != nil {
		return store.Rollout{}, err
	}
	sel := store.Selector{Models: req.Models, SiteIDs: req.SiteIDs}
	if len(sel.Models) == 0 {
		sel.Models = rel.Manifest.Models
	}
	devices, err := s.opts.Store.Devices(ctx, store.DeviceFilter{Models: sel.Models, SiteIDs: sel.SiteIDs})
	if err != nil {
		return store.Rollout{}, err
	}
	r := store.Rollout{ID: uuid.NewString(), ReleaseID: rel.ID, Selector: sel, CreatedAt: s.opts.Now(), Devices: []string{}}
	for _, d := range devices {
		// A rollout never asks a device to go back to an older version;
		// that takes a release signed for rollback.
		if !rel.Manifest.AppliesTo(d.Model, d.HardwareRevision) || firmware.CompareVersions(rel.Version, d.InstalledVersion) < 0 {
			continue
		}
		r.Devices = append(r.Devices, d.ID)
	}
	if err := s.opts.Store.CreateRollout(ctx, r); err != nil {
		return store.Rollout{}, err
	}
	s.opts.Log.Info("rollout created", "rollout_id", r.ID, "release", rel.ID, "devices", len(r.Devices))
	if s.opts.Publisher != nil {
		if err := s.opts.Publisher.AssignmentsChanged(ctx, r.Devices); err != nil {
			return store.Rollout{}, fmt.Errorf("publish assignments: %w", err)
		}
	}
	s.hintAll(ctx, r.Devices, "rollout")
	return r, nil
}

func (s *Service) hintAll(ctx context.Context, deviceIDs []string, reason string) {
	s.mu.Lock()
	h := s.hints
	s.mu.Unlock()
	if h == nil {
		return
	}
	for _, id := range deviceIDs {
		if err := h.Hint(ctx, id, reason); err != nil {
			// Devices poll too; a lost hint only delays them.
			s.opts.Log.Warn("hint not sent", "device_id", id, "err", err)
		}
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// RecordReport parses and stores a state report a device sent over MQTT.
// A malformed report is a *problem.InvalidError; a report from a device
// that is not enrolled wraps problem.ErrNotFound.
func (s *Service) RecordReport(ctx context.Context, deviceID string, payload []byte) error {
	r, err := protocol.ParseStateReport(payload)
	if err != nil {
		return problem.InvalidFrom(err)
	}
	inserted, err := s.opts.Store.RecordReport(ctx, deviceID, r, s.opts.Now())
	if err != nil {
		return err
	}
	if inserted {
		s.opts.Log.Info("device state", "device_id", deviceID, "seq", r.Seq, "state", r.State, "running", r.Running, "target", r.Target, "reason", r.Reason)
	}
	return nil
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
