// Package access decides who may do what in the fleet server.
//
// People and tools authenticate with an API token ("act_" and 256 random
// bits, shown once and stored as its SHA-256) that belongs to a user, or
// with the configured admin token, a bootstrap admin. Authentication gives a
// Principal: who, which role, and which sites they may see. A role grants a
// fixed set of Permissions; every HTTP route declares the one it needs
// (package api). Hospital IT is scoped to one organisation or to a list of
// sites: it sees only those sites, their devices, patch state and reports,
// and the findings that affect them. An object outside the scope answers
// "not found" (so hospital IT cannot learn that it exists), an action the
// role may never take answers "forbidden".
//
// User, token and organisation changes are appended to the audit log in the
// same transaction as the change.
package access

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/aftercare/aftercare/server/internal/problem"
)

// A Role is a set of permissions.
type Role string

// The roles.
const (
	RoleAdmin           Role = "admin"            // everything, including users and tokens
	RoleReleaseEngineer Role = "release_engineer" // releases, repository, rollouts; reads everything
	RolePSIRT           Role = "psirt"            // vulnerability monitoring, dispositions, device revocation, alerts and alert rules; reads everything
	RoleAuditor         Role = "auditor"          // reads everything, including the audit log; changes nothing
	RoleHospitalIT      Role = "hospital_it"      // its own organisation's or sites' sites, devices, findings, security events and alerts
)

// Roles lists every role.
var Roles = []Role{RoleAdmin, RoleReleaseEngineer, RolePSIRT, RoleAuditor, RoleHospitalIT}

// A Permission names one kind of action. Read permissions end in ":read".
type Permission string

// The permissions. Public is for routes that need no token (device
// enrollment, health, the signed TUF repositories). DeviceCert is for the
// routes of devices, which authenticate with their client certificate and
// never with a person's token.
const (
	Public     Permission = "public"
	DeviceCert Permission = "device-certificate"

	OrgsRead       Permission = "orgs:read"
	OrgsWrite      Permission = "orgs:write" // create organisations, move sites
	SitesRead      Permission = "sites:read"
	SitesWrite     Permission = "sites:write"
	SitesPolicy    Permission = "sites:policy"     // a site's install policy and maintenance windows
	SitesApprove   Permission = "sites:approve"    // approve, defer or decline a patch for a site
	EnrollWrite    Permission = "enrollment:write" // make enrollment tokens for a site in scope
	DevicesRead    Permission = "devices:read"     // devices, their reports and patch state
	DevicesWrite   Permission = "devices:write"    // device labels (role, tags) that rollout cohorts select on
	DevicesRevoke  Permission = "devices:revoke"
	ReleasesRead   Permission = "releases:read"
	ReleasesWrite  Permission = "releases:write" // upload, publish targets
	RepoRead       Permission = "repository:read"
	RepoWrite      Permission = "repository:write" // root rotation
	RolloutsRead   Permission = "rollouts:read"
	RolloutsWrite  Permission = "rollouts:write"
	VulnRead       Permission = "vuln:read"
	VulnWrite      Permission = "vuln:write" // feeds, analysis, supplier VEX
	DispositionSet Permission = "dispositions:write"
	UsersRead      Permission = "users:read" // users and token metadata
	UsersWrite     Permission = "users:write"
	AuditRead      Permission = "audit:read"
	EventsRead     Permission = "events:read"       // device security events, timelines, alerts and rules
	AlertsAck      Permission = "alerts:write"      // acknowledge alerts in scope
	AlertRulesSet  Permission = "alert_rules:write" // custom alert rules
)

// Permissions lists every permission a role can hold (not Public or DeviceCert).
var Permissions = []Permission{OrgsRead, OrgsWrite, SitesRead, SitesWrite, SitesPolicy, SitesApprove, EnrollWrite, DevicesRead, DevicesWrite, DevicesRevoke,
	ReleasesRead, ReleasesWrite, RepoRead, RepoWrite, RolloutsRead, RolloutsWrite, VulnRead, VulnWrite, DispositionSet,
	UsersRead, UsersWrite, AuditRead, EventsRead, AlertsAck, AlertRulesSet}

// IsRead reports whether p only reads.
func (p Permission) IsRead() bool { return strings.HasSuffix(string(p), ":read") }

// readsEverything is every read permission but the audit log and users.
var readsEverything = []Permission{OrgsRead, SitesRead, DevicesRead, ReleasesRead, RepoRead, RolloutsRead, VulnRead, EventsRead}

// grants is the role table. Admin holds every permission.
var grants = map[Role][]Permission{
	RoleReleaseEngineer: append(slices.Clone(readsEverything), ReleasesWrite, RepoWrite, RolloutsWrite, DevicesWrite),
	RolePSIRT:           append(slices.Clone(readsEverything), VulnWrite, DispositionSet, DevicesRevoke, AlertsAck, AlertRulesSet),
	RoleAuditor:         append(slices.Clone(readsEverything), UsersRead, AuditRead),
	RoleHospitalIT:      {OrgsRead, SitesRead, DevicesRead, ReleasesRead, VulnRead, EnrollWrite, SitesPolicy, SitesApprove, EventsRead, AlertsAck},
}

// Allows reports whether role r holds permission p.
func (r Role) Allows(p Permission) bool {
	if p == Public || r == RoleAdmin {
		return true
	}
	return slices.Contains(grants[r], p)
}

// Valid reports whether r is a known role.
func (r Role) Valid() bool { return slices.Contains(Roles, r) }

// ParseRole checks a role name.
func ParseRole(s string) (Role, error) {
	r := Role(s)
	if !r.Valid() {
		names := make([]string, len(Roles))
		for i, r := range Roles {
			names[i] = string(r)
		}
		return "", fmt.Errorf("role %q must be one of %s", s, strings.Join(names, ", "))
	}
	return r, nil
}

// A Scope is what a principal may see: every site, or a list of sites.
type Scope struct {
	All            bool
	OrganisationID string   // hospital IT scoped to an organisation; "" otherwise
	SiteIDs        []string // the sites seen when not All (resolved at authentication)
}

// HasSite reports whether the scope includes a site.
func (s Scope) HasSite(siteID string) bool {
	return s.All || slices.Contains(s.SiteIDs, siteID)
}

// A Principal is who is asking: a user (or the bootstrap admin), its role
// and scope.
type Principal struct {
	UserID  string // "" for the bootstrap admin token
	Name    string // user name; "admin" for the bootstrap admin token
	Role    Role
	TokenID string // the API token used; "" for the bootstrap admin token
	Scope   Scope
}

// ErrOutOfScope is wrapped when a principal asks for an object outside its
// scope. errors.Is(err, problem.ErrNotFound) holds too, so it answers 404.
var ErrOutOfScope = &scopeError{}

type scopeError struct{}

func (*scopeError) Error() string        { return "not found" }
func (*scopeError) Is(target error) bool { return target == problem.ErrNotFound }

func outOfScope(what string) error { return fmt.Errorf("%s: %w", what, ErrOutOfScope) }

// SeeSite returns nil when p may see the site, else an error that reads as
// "not found" (hospital IT must not learn that another hospital's site
// exists).
func (p Principal) SeeSite(siteID, what string) error {
	if p.Scope.HasSite(siteID) {
		return nil
	}
	return outOfScope(what)
}

// Require returns a problem.ErrForbidden error when p's role lacks perm.
func (p Principal) Require(perm Permission) error {
	if p.Role.Allows(perm) {
		return nil
	}
	return &DeniedError{Role: p.Role, Permission: perm}
}

// A DeniedError says which permission a role lacks. errors.Is(err,
// problem.ErrForbidden) holds.
type DeniedError struct {
	Role       Role
	Permission Permission
}

func (e *DeniedError) Error() string {
	return fmt.Sprintf("role %s does not have permission %s", e.Role, e.Permission)
}

// Is makes errors.Is(err, problem.ErrForbidden) hold.
func (e *DeniedError) Is(target error) bool { return target == problem.ErrForbidden }

// IsOutOfScope reports whether err is a refusal because of scope.
func IsOutOfScope(err error) bool { return errors.Is(err, ErrOutOfScope) }

type principalKey struct{}

// WithPrincipal returns a context that carries p, for domain callbacks
// (such as the audit hook of dispositions) that need to know who acts.
func WithPrincipal(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// FromContext returns the principal WithPrincipal stored, if any.
func FromContext(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(Principal)
	return p, ok
}
