package api

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/aftercare/aftercare/server/internal/access"
	"github.com/aftercare/aftercare/server/internal/audit"
	"github.com/aftercare/aftercare/server/internal/problem"
)

// A route is one endpoint and what it needs: the permission, and for a
// write the audit action the middleware appends after it succeeds.
type route struct {
	method  string
	path    string
	perm    access.Permission
	action  string // audit action of a write; "" for reads and for writes whose handler or domain appends its own entry
	handler echo.HandlerFunc
}

// A RouteInfo describes one route of the table, for tests and docs.
type RouteInfo struct {
	Method     string
	Path       string
	Permission access.Permission
}

// routes is the whole route table. Every route declares its permission;
// the authorize middleware refuses any route that does not.
func (h *handlers) routes() []route {
	rs := []route{
		{"GET", "/healthz", access.Public, "", func(c echo.Context) error { return c.String(http.StatusOK, "ok\n") }},
		// The repositories' files are signed; a device checks them.
		{"GET", "/tuf/release/*", access.Public, "", h.repoFile(h.opts.RepoDir)},
		{"GET", "/tuf/rollout/*", access.Public, "", h.repoFile(h.opts.RolloutDir)},
		// The console's static pages hold no data; their API calls carry the person's token.
		{"GET", "/console", access.Public, "", consoleRedirect},
		{"GET", "/console/*", access.Public, "", consoleFiles()},
		// Enrollment authenticates with the one-time token in its body.
		{"POST", "/api/v1/enroll", access.Public, "", h.enroll},
		{"GET", "/api/v1/device", access.DeviceCert, "", h.whoami},
		{"POST", "/api/v1/device/certificate", access.DeviceCert, "", h.renewCertificate},

		{"GET", "/api/v1/orgs", access.OrgsRead, "", h.listOrgs},
		{"POST", "/api/v1/orgs", access.OrgsWrite, "", h.createOrg}, // audited in the same transaction
		{"GET", "/api/v1/sites", access.SitesRead, "", h.listSites},
		{"POST", "/api/v1/sites", access.SitesWrite, "", h.createSite}, // audited in the same transaction
		{"POST", "/api/v1/sites/:id/organisation", access.OrgsWrite, "", h.moveSite},
		{"POST", "/api/v1/sites/:id/enrollment-tokens", access.EnrollWrite, "enrollment_tokens.create", h.createEnrollmentTokens},
		{"GET", "/api/v1/sites/:id/patch-state", access.DevicesRead, "", h.sitePatchState},
		{"GET", "/api/v1/patch-state", access.DevicesRead, "", h.patchSummary},
		{"GET", "/api/v1/devices", access.DevicesRead, "", h.listDevices},
		{"GET", "/api/v1/devices/:id", access.DevicesRead, "", h.getDevice},
		{"POST", "/api/v1/devices/:id/revoke", access.DevicesRevoke, "device.revoke", h.revokeDevice},
		{"GET", "/api/v1/device-ca", access.DevicesRead, "", h.deviceCA},
		{"GET", "/api/v1/releases", access.ReleasesRead, "", h.listReleases},
		{"POST", "/api/v1/releases", access.ReleasesWrite, "release.publish", h.uploadRelease},
		{"GET", "/api/v1/releases/:id", access.ReleasesRead, "", h.getRelease},
		{"GET", "/api/v1/repository/targets", access.RepoRead, "", h.currentTargets},
		{"POST", "/api/v1/repository/targets", access.ReleasesWrite, "repository.targets.publish", h.publishTargets},
		{"GET", "/api/v1/repository/:repo/root", access.RepoRead, "", h.currentRoot},
		{"POST", "/api/v1/repository/:repo/root", access.RepoWrite, "repository.root.update", h.updateRoot},

		{"GET", "/api/v1/users", access.UsersRead, "", h.listUsers},
		{"POST", "/api/v1/users", access.UsersWrite, "", h.createUser},              // audited in the same transaction
		{"POST", "/api/v1/users/:id/disable", access.UsersWrite, "", h.disableUser}, // audited in the same transaction
		{"POST", "/api/v1/users/:id/role", access.UsersWrite, "", h.setRole},        // audited in the same transaction
		{"GET", "/api/v1/tokens", access.UsersRead, "", h.listTokens},
		{"POST", "/api/v1/tokens", access.UsersWrite, "", h.createToken},            // audited in the same transaction
		{"POST", "/api/v1/tokens/:id/revoke", access.UsersWrite, "", h.revokeToken}, // audited in the same transaction
		{"GET", "/api/v1/audit", access.AuditRead, "", h.listAudit},
		{"GET", "/api/v1/audit/verify", access.AuditRead, "", h.verifyAudit},
	}
	rs = append(rs, h.rolloutRoutes()...)
	rs = append(rs, h.eventRoutes()...)
	return append(rs, h.vulnRoutes()...)
}

// Routes lists the route table: every route the handler serves and the
// permission it needs.
func Routes() []RouteInfo {
	var h handlers
	var out []RouteInfo
	for _, r := range h.routes() {
		out = append(out, RouteInfo{Method: r.method, Path: r.path, Permission: r.perm})
	}
	return out
}

// Request headers people's tools send.
const (
	// HeaderReason carries the human's reason for a write, for the audit
	// log (the CLI's --reason).
	HeaderReason = "X-Aftercare-Reason"
	maxReasonLen = 1024 // bytes
)

// Context keys.
const (
	principalKey = "aftercare.principal"
	routeKey     = "aftercare.route"
	auditedKey   = "aftercare.audited"
)

// principalOf returns the authenticated principal of a request. Public
// routes have none; their handlers do not call it.
func principalOf(c echo.Context) access.Principal {
	p, _ := c.Get(principalKey).(access.Principal)
	return p
}

// decided appends the route's action on object to the audit log, once
// the decision has committed and before the client hears of it.
func (h *handlers) decided(c echo.Context, object string, details map[string]any) {
	r, _ := c.Get(routeKey).(route)
	if r.action == "" {
		return
	}
	c.Set(auditedKey, true)
	if details == nil {
		details = map[string]any{}
	}
	details["method"], details["route"] = r.method, r.path
	h.appendAudit(c, principalOf(c).Record(r.action, object, reason(c), details))
}

// reason returns the request's stated reason, bounded.
func reason(c echo.Context) string {
	r := strings.TrimSpace(c.Request().Header.Get(HeaderReason))
	if len(r) > maxReasonLen {
		r = r[:maxReasonLen]
	}
	return r
}

// authorize authenticates the bearer token of every non-public route,
// checks the route's permission, and keeps the audit log: each refused
// write (role without the permission, or an object outside the scope) and,
// if its handler did not already call decided, each successful write whose
// route names an action.
func (h *handlers) authorize(table map[string]route) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			req := c.Request()
			r, ok := table[req.Method+" "+c.Path()]
			if !ok {
				if c.Path() == "" || h.knownPath(table, c.Path()) {
					return next(c) // Echo's own 404 or 405
				}
				// Deny by default: a route added without a
				// permission serves nothing.
				return fmt.Errorf("route %s %s declares no permission: %w", req.Method, c.Path(), problem.ErrForbidden)
			}
			switch r.perm {
			case access.Public:
				return next(c)
			case access.DeviceCert:
				return h.deviceAuth(next)(c)
			}
			p, err := h.authenticate(c)
			if err != nil {
				return err
			}
			c.Set(principalKey, p)
			c.Set(routeKey, r)
			c.SetRequest(req.WithContext(access.WithPrincipal(req.Context(), p)))
			if err := p.Require(r.perm); err != nil {
				if !r.perm.IsRead() {
					h.auditDenied(c, p, r, err)
				}
				return err
			}
			err = next(c)
			switch {
			case r.perm.IsRead():
			case err == nil && r.action != "" && c.Response().Status/100 == 2 && c.Get(auditedKey) == nil:
				// A handler that did not call decided: record the
				// decision by its path.
				h.decided(c, req.URL.Path, map[string]any{"status": c.Response().Status})
			case access.IsOutOfScope(err):
				h.auditDenied(c, p, r, err)
			}
			return err
		}
	}
}

func (h *handlers) knownPath(table map[string]route, path string) bool {
	for _, r := range table {
		if r.path == path {
			return true
		}
	}
	return false
}

// authenticate checks the bearer token, refusing an address that failed
// too often.
func (h *handlers) authenticate(c echo.Context) (access.Principal, error) {
	addr := c.RealIP()
	if blocked, retry := h.limiter.Blocked(addr); blocked {
		c.Response().Header().Set("Retry-After", strconv.Itoa(int(retry.Round(time.Second)/time.Second)+1))
		return access.Principal{}, echo.NewHTTPError(http.StatusTooManyRequests,
			fmt.Sprintf("too many failed token checks from this address; try again in %v", retry.Round(time.Second)))
	}
	p, err := h.opts.Access.Authenticate(c.Request().Context(), bearer(c))
	if errors.Is(err, problem.ErrUnauthorized) {
		h.limiter.Fail(addr)
		h.opts.Log.Info("token refused", "remote_addr", addr, "path", c.Path(), "err", err)
		// The client learns only that the token does not work.
		return access.Principal{}, fmt.Errorf("a valid bearer token is required: %w", problem.ErrUnauthorized)
	}
	return p, err
}

func (h *handlers) auditDenied(c echo.Context, p access.Principal, r route, cause error) {
	action := r.action
	if action == "" {
		action = string(r.perm)
	}
	rec := p.Record(action, c.Request().URL.Path, reason(c), map[string]any{
		"method": r.method, "route": r.path, "permission": string(r.perm), "refused": cause.Error(),
	})
	rec.Outcome = audit.OutcomeDenied
	h.appendAudit(c, rec)
}

// appendAudit appends after the decision committed. A failure is logged:
// the decision stands, and the operator must know the log missed it.
func (h *handlers) appendAudit(c echo.Context, rec audit.Record) {
	if _, err := h.opts.Store.AppendAudit(c.Request().Context(), rec, h.now()); err != nil {
		h.opts.Log.Error("audit entry not written", "action", rec.Action, "actor", rec.Actor, "object", rec.Object, "err", err)
	}
}
