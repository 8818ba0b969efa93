package access

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/aftercare/aftercare/server/internal/audit"
	"github.com/aftercare/aftercare/server/internal/problem"
	"github.com/aftercare/aftercare/server/internal/rollout"
	"github.com/aftercare/aftercare/server/internal/store"
)

// TokenPrefix starts every API token, so a leaked one is easy to recognise
// for secret scanners.
const TokenPrefix = "act_"

// tokenBytes is the entropy of an API token: 256 bits.
const tokenBytes = 32

// maxNameLen bounds user, token and organisation names.
const maxNameLen = 128

// Options configures a Service.
type Options struct {
	Store *store.Store // required
	Log   *slog.Logger // required
	// AdminToken is the configured bootstrap admin token; "" disables it.
	AdminToken string
	Now        func() time.Time // nil: time.Now
}

// Service authenticates principals and manages organisations, users and
// tokens. It is safe for concurrent use.
type Service struct {
	opts Options
}

// New returns a Service.
func New(opts Options) (*Service, error) {
	if opts.Store == nil || opts.Log == nil {
		return nil, errors.New("access: Store and Log are required")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Service{opts: opts}, nil
}

func (s *Service) now() time.Time { return s.opts.Now().UTC() }

// HashToken is how API tokens are stored: SHA-256, hex. A token carries 256
// random bits, so a plain hash is enough.
func HashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// BootstrapAdmin is the principal of the configured admin token.
var BootstrapAdmin = Principal{Name: "admin", Role: RoleAdmin, Scope: Scope{All: true}}

// Authenticate returns the principal of a bearer token. Every failure
// wraps problem.ErrUnauthorized and says only what the holder may know.
func (s *Service) Authenticate(ctx context.Context, token string) (Principal, error) {
	if token == "" {
		return Principal{}, fmt.Errorf("a bearer token is required: %w", problem.ErrUnauthorized)
	}
	if s.opts.AdminToken != "" && subtle.ConstantTimeCompare([]byte(token), []byte(s.opts.AdminToken)) == 1 {
		return BootstrapAdmin, nil
	}
	if !strings.HasPrefix(token, TokenPrefix) {
		return Principal{}, fmt.Errorf("token not recognised: %w", problem.ErrUnauthorized)
	}
	// The lookup is by hash, so timing reveals nothing of the secret.
	t, u, err := s.opts.Store.TokenByHash(ctx, HashToken(token))
	if errors.Is(err, problem.ErrNotFound) {
		return Principal{}, fmt.Errorf("token not recognised: %w", problem.ErrUnauthorized)
	}
	if err != nil {
		return Principal{}, fmt.Errorf("authenticate: %w", err)
	}
	now := s.now()
	switch {
	case !t.RevokedAt.IsZero():
		return Principal{}, fmt.Errorf("token %s was revoked at %s: %w", t.ID, t.RevokedAt.Format(time.RFC3339), problem.ErrUnauthorized)
	case !t.ExpiresAt.IsZero() && !now.Before(t.ExpiresAt):
		return Principal{}, fmt.Errorf("token %s expired at %s: %w", t.ID, t.ExpiresAt.Format(time.RFC3339), problem.ErrUnauthorized)
	case !u.DisabledAt.IsZero():
		return Principal{}, fmt.Errorf("user %s is disabled: %w", u.Name, problem.ErrUnauthorized)
	}
	p := Principal{UserID: u.ID, Name: u.Name, Role: Role(u.Role), TokenID: t.ID}
	if !p.Role.Valid() {
		return Principal{}, fmt.Errorf("user %s has unknown role %q: %w", u.Name, u.Role, problem.ErrUnauthorized)
	}
	if p.Scope, err = s.scopeOf(ctx, u); err != nil {
		return Principal{}, err
	}
	return p, nil
}

// scopeOf resolves a user's sites now, so sites added to an organisation
// later are seen at once.
func (s *Service) scopeOf(ctx context.Context, u store.User) (Scope, error) {
	if Role(u.Role) != RoleHospitalIT {
		return Scope{All: true}, nil
	}
	if u.OrganisationID == "" {
		return Scope{SiteIDs: slices.Clone(u.SiteIDs)}, nil
	}
	ids, err := s.opts.Store.SiteIDsOf(ctx, u.OrganisationID)
	if err != nil {
		return Scope{}, fmt.Errorf("resolve scope of %s: %w", u.Name, err)
	}
	if ids == nil {
		ids = []string{}
	}
	return Scope{OrganisationID: u.OrganisationID, SiteIDs: ids}, nil
}

// Record returns an audit record of an action by p.
func (p Principal) Record(action, object, reason string, details any) audit.Record {
	return audit.Record{Actor: p.Name, Role: string(p.Role), Action: action, Object: object, Reason: reason, Details: details}
}

func checkName(field, v string) string {
	if v == "" || len(v) > maxNameLen || strings.TrimSpace(v) != v {
		return fmt.Sprintf("%s %q must be 1-%d characters without leading or trailing space", field, v, maxNameLen)
	}
	return ""
}

func nonEmpty(problems ...string) []string {
	var out []string
	for _, p := range problems {
		if p != "" {
			out = append(out, p)
		}
	}
	return out
}

// CreateOrganisation adds an organisation.
func (s *Service) CreateOrganisation(ctx context.Context, p Principal, name, reason string) (store.Organisation, error) {
	if err := problem.Invalid(nonEmpty(checkName("name", name))...); err != nil {
		return store.Organisation{}, err
	}
	o := store.Organisation{ID: uuid.NewString(), Name: name, CreatedAt: s.now()}
	if err := s.opts.Store.CreateOrganisation(ctx, o, p.Record("organisation.create", "organisation/"+o.ID, reason, map[string]any{"name": name})); err != nil {
		return store.Organisation{}, err
	}
	s.opts.Log.Info("organisation created", "organisation_id", o.ID, "actor", p.Name)
	return o, nil
}

// Organisations returns the organisations p may see: all, or those of the
// sites in p's scope.
func (s *Service) Organisations(ctx context.Context, p Principal) ([]store.Organisation, error) {
	orgs, err := s.opts.Store.Organisations(ctx)
	if err != nil || p.Scope.All {
		return orgs, err
	}
	sites, err := s.opts.Store.Sites(ctx)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, site := range sites {
		if p.Scope.HasSite(site.ID) {
			seen[site.OrganisationID] = true
		}
	}
	return slices.DeleteFunc(orgs, func(o store.Organisation) bool { return !seen[o.ID] }), nil
}

// MoveSite puts a site into an organisation (given by ID or name).
func (s *Service) MoveSite(ctx context.Context, p Principal, siteID, organisation, reason string) (store.Site, error) {
	site, err := s.opts.Store.Site(ctx, siteID)
	if err != nil {
		return store.Site{}, err
	}
	org, err := s.opts.Store.Organisation(ctx, organisation)
	if errors.Is(err, problem.ErrNotFound) {
		return store.Site{}, problem.Invalid(fmt.Sprintf("organisation %q names no organisation", organisation))
	}
	if err != nil {
		return store.Site{}, err
	}
	rec := p.Record("site.move", "site/"+site.ID, reason, map[string]any{"from": site.OrganisationID, "to": org.ID})
	if err := s.opts.Store.MoveSite(ctx, site.ID, org, rec, s.now()); err != nil {
		return store.Site{}, err
	}
	s.opts.Log.Info("site moved", "site_id", site.ID, "organisation_id", org.ID, "actor", p.Name)
	return s.opts.Store.Site(ctx, site.ID)
}

// A UserRequest asks for a new user.
type UserRequest struct {
	Name         string   `json:"name"`
	Role         string   `json:"role"`
	Organisation string   `json:"organisation,omitempty"` // hospital_it: ID or name
	SiteIDs      []string `json:"site_ids,omitempty"`     // hospital_it without an organisation
	Reason       string   `json:"reason,omitempty"`
}

// CreateUser adds a user. Hospital IT needs an organisation or sites (not
// both); the other roles take neither.
func (s *Service) CreateUser(ctx context.Context, p Principal, req UserRequest) (store.User, error) {
	u := store.User{ID: uuid.NewString(), Name: req.Name, CreatedAt: s.now()}
	problems := nonEmpty(checkName("name", req.Name))
	if req.Name == BootstrapAdmin.Name {
		// The audit log names the bootstrap admin token "admin".
		problems = append(problems, fmt.Sprintf("name %q is the bootstrap admin token's; choose another", req.Name))
	}
	if err := s.checkRole(ctx, &u, req, problems); err != nil {
		return store.User{}, err
	}
	rec := p.Record("user.create", "user/"+u.ID, req.Reason, map[string]any{"name": u.Name, "role": u.Role, "organisation_id": u.OrganisationID, "site_ids": u.SiteIDs})
	if err := s.opts.Store.CreateUser(ctx, u, rec); err != nil {
		return store.User{}, err
	}
	s.opts.Log.Info("user created", "user_id", u.ID, "role", u.Role, "actor", p.Name)
	return u, nil
}

// SetRole changes the role and scope of a user (by ID or name); req.Name
// is ignored. The change applies from the user's next request.
func (s *Service) SetRole(ctx context.Context, p Principal, user string, req UserRequest) (store.User, error) {
	old, err := s.opts.Store.User(ctx, user)
	if err != nil {
		return store.User{}, err
	}
	u := store.User{ID: old.ID, Name: old.Name, CreatedAt: old.CreatedAt, DisabledAt: old.DisabledAt}
	if err := s.checkRole(ctx, &u, req, nil); err != nil {
		return store.User{}, err
	}
	rec := p.Record("user.role", "user/"+u.ID, req.Reason, map[string]any{"name": u.Name,
		"from": map[string]any{"role": old.Role, "organisation_id": old.OrganisationID, "site_ids": old.SiteIDs},
		"to":   map[string]any{"role": u.Role, "organisation_id": u.OrganisationID, "site_ids": u.SiteIDs}})
	if err := s.opts.Store.SetUserRole(ctx, u, rec, s.now()); err != nil {
		return store.User{}, err
	}
	s.opts.Log.Info("user role changed", "user_id", u.ID, "role", u.Role, "actor", p.Name)
	return s.opts.Store.User(ctx, u.ID)
}

// checkRole validates req's role and scope into u, reporting every problem
// (with those given) at once.
func (s *Service) checkRole(ctx context.Context, u *store.User, req UserRequest, problems []string) error {
	role, err := ParseRole(req.Role)
	if err != nil {
		problems = append(problems, err.Error())
	}
	u.Role = string(role)
	switch {
	case role == RoleHospitalIT && (req.Organisation == "") == (len(req.SiteIDs) == 0):
		problems = append(problems, "hospital_it needs exactly one of organisation and site_ids")
	case role != RoleHospitalIT && role != "" && (req.Organisation != "" || len(req.SiteIDs) > 0):
		problems = append(problems, fmt.Sprintf("role %s sees every site; organisation and site_ids are only for hospital_it", role))
	}
	if req.Organisation != "" {
		org, err := s.opts.Store.Organisation(ctx, req.Organisation)
		switch {
		case errors.Is(err, problem.ErrNotFound):
			problems = append(problems, fmt.Sprintf("organisation %q names no organisation", req.Organisation))
		case err != nil:
			return err
		}
		u.OrganisationID = org.ID
	}
	for _, id := range req.SiteIDs {
		_, err := s.opts.Store.Site(ctx, id)
		switch {
		case errors.Is(err, problem.ErrNotFound):
			problems = append(problems, fmt.Sprintf("site_ids: %q names no site", id))
		case err != nil:
			return err
		}
	}
	u.SiteIDs = slices.Compact(slices.Sorted(slices.Values(req.SiteIDs)))
	return problem.Invalid(problems...)
}

// Users returns every user.
func (s *Service) Users(ctx context.Context) ([]store.User, error) { return s.opts.Store.Users(ctx) }

// DisableUser disables a user (by ID or name); its tokens stop working.
func (s *Service) DisableUser(ctx context.Context, p Principal, user, reason string) (store.User, error) {
	u, err := s.opts.Store.User(ctx, user)
	if err != nil {
		return store.User{}, err
	}
	if err := s.opts.Store.DisableUser(ctx, u.ID, s.now(), p.Record("user.disable", "user/"+u.ID, reason, map[string]any{"name": u.Name})); err != nil {
		return store.User{}, err
	}
	s.opts.Log.Info("user disabled", "user_id", u.ID, "actor", p.Name)
	return s.opts.Store.User(ctx, u.ID)
}

// A TokenRequest asks for a new API token.
type TokenRequest struct {
	User      string `json:"user"`                 // ID or name
	Name      string `json:"name"`                 // what the token is for, e.g. "ci"
	ExpiresIn string `json:"expires_in,omitempty"` // e.g. "720h"; "" never expires
	Reason    string `json:"reason,omitempty"`
}

// maxTokenLifetime bounds ExpiresIn (0 means no expiry).
const maxTokenLifetime = 5 * 366 * 24 * time.Hour

// CreateToken makes an API token for a user and returns its secret, which
// is never shown again.
func (s *Service) CreateToken(ctx context.Context, p Principal, req TokenRequest) (string, store.Token, error) {
	problems := nonEmpty(checkName("name", req.Name))
	var lifetime time.Duration
	if req.ExpiresIn != "" {
		var err error
		lifetime, err = time.ParseDuration(req.ExpiresIn)
		if err != nil || lifetime <= 0 || lifetime > maxTokenLifetime {
			problems = append(problems, fmt.Sprintf("expires_in %q must be a duration such as \"720h\", above 0 and at most %v (omit it for no expiry)", req.ExpiresIn, maxTokenLifetime))
		}
	}
	u, err := s.opts.Store.User(ctx, req.User)
	switch {
	case errors.Is(err, problem.ErrNotFound):
		problems = append(problems, fmt.Sprintf("user %q names no user", req.User))
	case err != nil:
		return "", store.Token{}, err
	case !u.DisabledAt.IsZero():
		problems = append(problems, fmt.Sprintf("user %q is disabled", req.User))
	}
	if err := problem.Invalid(problems...); err != nil {
		return "", store.Token{}, err
	}
	b := make([]byte, tokenBytes)
	rand.Read(b) // never fails (crypto/rand, Go 1.24+)
	secret := TokenPrefix + base64.RawURLEncoding.EncodeToString(b)
	t := store.Token{ID: uuid.NewString(), UserID: u.ID, UserName: u.Name, Name: req.Name, CreatedAt: s.now()}
	if lifetime > 0 {
		t.ExpiresAt = t.CreatedAt.Add(lifetime)
	}
	rec := p.Record("token.create", "token/"+t.ID, req.Reason, map[string]any{"user": u.Name, "name": t.Name, "expires_at": t.ExpiresAt})
	if err := s.opts.Store.CreateToken(ctx, t, HashToken(secret), rec); err != nil {
		return "", store.Token{}, err
	}
	s.opts.Log.Info("token created", "token_id", t.ID, "user_id", u.ID, "actor", p.Name)
	return secret, t, nil
}

// Tokens returns the tokens of a user (ID or name), or every token for "".
func (s *Service) Tokens(ctx context.Context, user string) ([]store.Token, error) {
	if user == "" {
		return s.opts.Store.Tokens(ctx, "")
	}
	u, err := s.opts.Store.User(ctx, user)
	if err != nil {
		return nil, err
	}
	return s.opts.Store.Tokens(ctx, u.ID)
}

// RevokeToken revokes a token at once.
func (s *Service) RevokeToken(ctx context.Context, p Principal, tokenID, reason string) (store.Token, error) {
	t, err := s.opts.Store.Token(ctx, tokenID)
	if err != nil {
		return store.Token{}, err
	}
	if err := s.opts.Store.RevokeToken(ctx, t.ID, s.now(), p.Record("token.revoke", "token/"+t.ID, reason, map[string]any{"user": t.UserName, "name": t.Name})); err != nil {
		return store.Token{}, err
	}
	s.opts.Log.Info("token revoked", "token_id", t.ID, "actor", p.Name)
	return s.opts.Store.Token(ctx, t.ID)
}

// AuditDisposition appends a disposition change to the audit log, with the
// role of the principal in ctx (see WithPrincipal). It is the
// vulnerability monitor's audit hook (vuln.Options.Audit).
func (s *Service) AuditDisposition(ctx context.Context, ch store.DispositionChange) error {
	role := "unknown"
	if p, ok := FromContext(ctx); ok {
		role = string(p.Role)
	}
	object := "disposition/" + ch.Product + "/" + ch.VulnID
	if ch.ReleaseID != "" {
		object += "/release/" + ch.ReleaseID
	}
	_, err := s.opts.Store.AppendAudit(ctx, audit.Record{
		Actor: ch.Actor, Role: role, Action: "disposition.set", Object: object, Reason: ch.Reason, Details: ch,
	}, ch.At)
	return err
}

// AuditRollout appends a rollout engine decision (rollout create, pause,
// resume, abort, rollback; site policy, approve, defer, decline), refused
// attempts included, to the audit log.
func (s *Service) AuditRollout(ctx context.Context, d rollout.Decision) error {
	role := "unknown"
	if p, ok := FromContext(ctx); ok {
		role = string(p.Role)
	}
	object := "rollout/" + d.RolloutID
	if d.SiteID != "" {
		object = "site/" + d.SiteID
		if d.RolloutID != "" {
			object += "/rollout/" + d.RolloutID
		}
	}
	outcome, reason := audit.OutcomeDone, d.Reason
	if why, refused := strings.CutPrefix(d.Outcome, "refused: "); refused {
		outcome = audit.OutcomeDenied
		reason = strings.TrimSpace(d.Reason + " (refused: " + why + ")")
	}
	_, err := s.opts.Store.AppendAudit(ctx, audit.Record{
		Actor: d.Actor, Role: role, Action: d.Action, Object: object, Outcome: outcome, Reason: reason, Details: d,
	}, d.At)
	return err
}
