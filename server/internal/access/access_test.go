package access_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aftercare/aftercare/server/internal/access"
	"github.com/aftercare/aftercare/server/internal/problem"
	"github.com/aftercare/aftercare/server/internal/store"
	"github.com/aftercare/aftercare/server/internal/store/storetest"
)

var t0 = time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)

// clock is a settable test clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time          { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Advance(d time.Duration) { c.mu.Lock(); c.now = c.now.Add(d); c.mu.Unlock() }

func TestRolePermissions(t *testing.T) {
	tests := []struct {
		role  access.Role
		perm  access.Permission
		allow bool
	}{
		{access.RoleAdmin, access.UsersWrite, true},
		{access.RoleAdmin, access.AuditRead, true},
		{access.RoleAuditor, access.AuditRead, true},
		{access.RoleAuditor, access.UsersRead, true},
		{access.RoleReleaseEngineer, access.RolloutsWrite, true},
		{access.RoleReleaseEngineer, access.ReleasesWrite, true},
		{access.RolePSIRT, access.DispositionSet, true},
		{access.RolePSIRT, access.DevicesRevoke, true},
		{access.RoleHospitalIT, access.DevicesRead, true},
		{access.RoleHospitalIT, access.EnrollWrite, true},
		// attacks: a role reaching past its grant
		{access.RoleReleaseEngineer, access.DispositionSet, false},
		{access.RoleReleaseEngineer, access.UsersWrite, false},
		{access.RoleReleaseEngineer, access.AuditRead, false},
		{access.RolePSIRT, access.RolloutsWrite, false},
		{access.RoleHospitalIT, access.RolloutsWrite, false},
		{access.RoleHospitalIT, access.AuditRead, false},
		{access.RoleHospitalIT, access.RepoRead, false},
		{access.RoleHospitalIT, access.DevicesRevoke, false},
		{access.Role("root"), access.SitesRead, false},
		{access.Role(""), access.SitesRead, false},
	}
	for _, tt := range tests {
		if got := tt.role.Allows(tt.perm); got != tt.allow {
			t.Errorf("%s.Allows(%s) = %v, want %v", tt.role, tt.perm, got, tt.allow)
		}
	}
	// The auditor reads everything and writes nothing.
	for _, p := range access.Permissions {
		if got := access.RoleAuditor.Allows(p); got != p.IsRead() {
			t.Errorf("auditor.Allows(%s) = %v, want %v", p, got, p.IsRead())
		}
	}
	err := access.Principal{Role: access.RoleAuditor}.Require(access.RolloutsWrite)
	if !errors.Is(err, problem.ErrForbidden) {
		t.Fatalf("Require() = %v, want ErrForbidden", err)
	}
}

func TestScope(t *testing.T) {
	p := access.Principal{Role: access.RoleHospitalIT, Scope: access.Scope{SiteIDs: []string{"a"}}}
	if err := p.SeeSite("a", "site a"); err != nil {
		t.Fatalf("SeeSite(own) = %v", err)
	}
	err := p.SeeSite("b", `site "b"`)
	if !errors.Is(err, problem.ErrNotFound) || !access.IsOutOfScope(err) || strings.Contains(err.Error(), "scope") {
		t.Fatalf("SeeSite(other) = %v, want a plain not found", err)
	}
}

func newService(t *testing.T, s *store.Store, clk *clock) *access.Service {
	t.Helper()
	svc, err := access.New(access.Options{Store: s, Log: slog.New(slog.DiscardHandler), AdminToken: "bootstrap-secret", Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

func TestAuthenticate(t *testing.T) {
	storetest.ForEach(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		clk := &clock{now: t0}
		svc := newService(t, s, clk)
		admin := access.BootstrapAdmin
		org, err := svc.CreateOrganisation(ctx, admin, "St. Mary", "new customer")
		if err != nil {
			t.Fatal(err)
		}
		if err := s.CreateSite(ctx, store.Site{ID: "rad", Name: "Radiology", OrganisationID: org.ID, CreatedAt: t0}); err != nil {
			t.Fatal(err)
		}
		mkUser := func(req access.UserRequest) string {
			t.Helper()
			if _, err := svc.CreateUser(ctx, admin, req); err != nil {
				t.Fatalf("CreateUser(%s): %v", req.Name, err)
			}
			secret, _, err := svc.CreateToken(ctx, admin, access.TokenRequest{User: req.Name, Name: "t", ExpiresIn: "1h"})
			if err != nil {
				t.Fatal(err)
			}
			return secret
		}
		itTok := mkUser(access.UserRequest{Name: "it", Role: "hospital_it", Organisation: "St. Mary"})
		psirtTok := mkUser(access.UserRequest{Name: "ana", Role: "psirt"})
		revokedTok := mkUser(access.UserRequest{Name: "rev", Role: "auditor"})
		disabledTok := mkUser(access.UserRequest{Name: "gone", Role: "auditor"})
		toks, _ := svc.Tokens(ctx, "rev")
		if _, err := svc.RevokeToken(ctx, admin, toks[0].ID, "lost laptop"); err != nil {
			t.Fatal(err)
		}
		if _, err := svc.DisableUser(ctx, admin, "gone", "left"); err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(itTok, access.TokenPrefix) || len(itTok) != len(access.TokenPrefix)+43 {
			t.Fatalf("token %q is not act_ and 256 bits in base64url", itTok)
		}

		// A site added to the organisation later is in scope at once.
		if err := s.CreateSite(ctx, store.Site{ID: "icu", Name: "ICU", OrganisationID: org.ID, CreatedAt: t0}); err != nil {
			t.Fatal(err)
		}
		p, err := svc.Authenticate(ctx, itTok)
		if err != nil || p.Role != access.RoleHospitalIT || p.Scope.All || len(p.Scope.SiteIDs) != 2 || p.Name != "it" {
			t.Fatalf("Authenticate(hospital it) = %+v, %v", p, err)
		}
		if p, err := svc.Authenticate(ctx, psirtTok); err != nil || !p.Scope.All || p.Role != access.RolePSIRT {
			t.Fatalf("Authenticate(psirt) = %+v, %v", p, err)
		}
		if p, err := svc.Authenticate(ctx, "bootstrap-secret"); err != nil || p.Role != access.RoleAdmin {
			t.Fatalf("Authenticate(admin token) = %+v, %v", p, err)
		}

		tests := []struct {
			name  string
			token string
			after time.Duration
		}{
			{"empty", "", 0},
			{"unknown", access.TokenPrefix + strings.Repeat("A", 43), 0},
			{"no-prefix", strings.Repeat("A", 47), 0},
			{"admin-token-prefix", "bootstrap-secre", 0},
			{"revoked", revokedTok, 0},
			{"disabled-user", disabledTok, 0},
			{"truncated", itTok[:len(itTok)-1], 0},
			{"expired", itTok, time.Hour},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				clk.Advance(tt.after)
				if _, err := svc.Authenticate(ctx, tt.token); !errors.Is(err, problem.ErrUnauthorized) {
					t.Fatalf("Authenticate(%s) = %v, want ErrUnauthorized", tt.name, err)
				}
			})
		}
		es, _ := s.AuditEntries(ctx, store.AuditFilter{})
		for _, e := range es {
			if strings.Contains(string(e.Details), itTok) {
				t.Fatal("a token secret reached the audit log")
			}
		}
	})
}

func TestCreateUserInvalid(t *testing.T) {
	s := storetest.SQLite(t)
	ctx := context.Background()
	svc := newService(t, s, &clock{now: t0})
	tests := []struct {
		name string
		req  access.UserRequest
		want string
	}{
		{"unknown-role", access.UserRequest{Name: "x", Role: "root"}, `role "root" must be one of`},
		{"hospital-it-without-scope", access.UserRequest{Name: "x", Role: "hospital_it"}, "exactly one of organisation and site_ids"},
		{"hospital-it-both", access.UserRequest{Name: "x", Role: "hospital_it", Organisation: "o", SiteIDs: []string{"s"}}, "exactly one of"},
		{"psirt-with-sites", access.UserRequest{Name: "x", Role: "psirt", SiteIDs: []string{"s"}}, "only for hospital_it"},
		{"unknown-site", access.UserRequest{Name: "x", Role: "hospital_it", SiteIDs: []string{"nope"}}, `"nope" names no site`},
		{"unknown-org", access.UserRequest{Name: "x", Role: "hospital_it", Organisation: "nope"}, `"nope" names no organisation`},
		{"empty-name", access.UserRequest{Name: "", Role: "psirt"}, "name"},
		{"impersonates-bootstrap-admin", access.UserRequest{Name: "admin", Role: "auditor"}, "bootstrap admin"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, _ := s.TableDigests(ctx)
			_, err := svc.CreateUser(ctx, access.BootstrapAdmin, tt.req)
			var inv *problem.InvalidError
			if !errors.As(err, &inv) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("CreateUser() = %v, want invalid with %q", err, tt.want)
			}
			after, _ := s.TableDigests(ctx)
			for table, d := range before {
				if after[table] != d {
					t.Fatalf("table %s changed on a refused CreateUser", table)
				}
			}
		})
	}
	if _, _, err := svc.CreateToken(ctx, access.BootstrapAdmin, access.TokenRequest{User: "nobody", Name: "t", ExpiresIn: "-1h"}); err == nil ||
		!strings.Contains(err.Error(), "expires_in") || !strings.Contains(err.Error(), "names no user") {
		t.Fatalf("CreateToken(bad) = %v, want both problems", err)
	}
}

func TestLimiter(t *testing.T) {
	clk := &clock{now: t0}
	l := access.NewLimiter(access.FailureLimit, access.FailureWindow, clk.Now)
	for i := range access.FailureLimit {
		if blocked, _ := l.Blocked("10.0.0.1"); blocked {
			t.Fatalf("blocked after %d failures", i)
		}
		l.Fail("10.0.0.1")
	}
	blocked, retry := l.Blocked("10.0.0.1")
	if !blocked || retry != access.FailureWindow {
		t.Fatalf("after %d failures: blocked %v retry %v", access.FailureLimit, blocked, retry)
	}
	if blocked, _ := l.Blocked("10.0.0.2"); blocked {
		t.Fatal("another address is blocked too")
	}
	clk.Advance(access.FailureWindow)
	if blocked, _ := l.Blocked("10.0.0.1"); blocked {
		t.Fatal("still blocked after the window")
	}
}
