package store_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aftercare/aftercare/server/internal/audit"
	"github.com/aftercare/aftercare/server/internal/problem"
	"github.com/aftercare/aftercare/server/internal/store"
	"github.com/aftercare/aftercare/server/internal/store/storetest"
)

func appendN(t *testing.T, s *store.Store, n int) []audit.Entry {
	t.Helper()
	var out []audit.Entry
	for i := range n {
		e, err := s.AppendAudit(context.Background(), audit.Record{Actor: "ana", Role: "psirt", Action: "disposition.set",
			Object: fmt.Sprintf("disposition/pump/CVE-%d", i), Reason: "triaged", Details: map[string]any{"i": i}}, t0.Add(time.Duration(i)*time.Second))
		if err != nil {
			t.Fatalf("AppendAudit(%d): %v", i, err)
		}
		out = append(out, e)
	}
	return out
}

// TestAuditTamper edits, removes and inserts rows behind the store's back;
// VerifyAudit finds each.
func TestAuditTamper(t *testing.T) {
	tests := []struct {
		name    string
		sql     string // run on the raw database after 5 appends
		wantSeq int64  // where the chain breaks; 0: intact
	}{
		{"intact", "", 0},
		{"edited-reason", `UPDATE audit_log SET reason = 'routine' WHERE seq = 3`, 3},
		{"edited-actor", `UPDATE audit_log SET actor = 'mallory' WHERE seq = 1`, 1},
		{"edited-details", `UPDATE audit_log SET details = '{"i":7}' WHERE seq = 2`, 2},
		{"edited-outcome", `UPDATE audit_log SET outcome = 'done' , action = 'x' WHERE seq = 4`, 4},
		{"removed", `DELETE FROM audit_log WHERE seq = 2`, 2},
		{"removed-and-renumbered", `DELETE FROM audit_log WHERE seq = 2; UPDATE audit_log SET seq = seq - 1 WHERE seq > 2`, 2},
		{"inserted", `UPDATE audit_log SET seq = seq + 100 WHERE seq >= 3; UPDATE audit_log SET seq = seq - 99 WHERE seq >= 100;
			INSERT INTO audit_log (seq, at, actor, role, action, object, outcome, reason, details, prev_hash, hash)
			SELECT 3, at, 'mallory', 'admin', 'user.create', 'user/x', 'done', '', '{}', hash, hash FROM audit_log WHERE seq = 2`, 3},
	}
	storetest.ForEach(t, func(t *testing.T, s *store.Store) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				ctx := context.Background()
				if _, err := s.DB().ExecContext(ctx, `DELETE FROM audit_log`); err != nil {
					t.Fatal(err)
				}
				appendN(t, s, 5)
				for _, stmt := range strings.Split(tt.sql, ";") {
					if strings.TrimSpace(stmt) == "" {
						continue
					}
					if _, err := s.DB().ExecContext(ctx, stmt); err != nil {
						t.Fatalf("tamper %q: %v", stmt, err)
					}
				}
				seq, hash, err := s.VerifyAudit(ctx)
				if tt.wantSeq == 0 {
					if err != nil || seq != 5 || len(hash) != 64 {
						t.Fatalf("VerifyAudit() = %d, %q, %v; want head 5", seq, hash, err)
					}
					return
				}
				var ce *audit.ChainError
				if !errors.As(err, &ce) || ce.Seq != tt.wantSeq {
					t.Fatalf("VerifyAudit() after %s = %v, want a break at seq %d", tt.name, err, tt.wantSeq)
				}
			})
		}
	})
}

// TestAuditConcurrentAppends appends from many goroutines through two
// stores (two connection pools, like two replicas): the chain never forks.
func TestAuditConcurrentAppends(t *testing.T) {
	storetest.ForEachURL(t, func(t *testing.T, dbURL string) {
		stores := []*store.Store{storetest.Open(t, dbURL), storetest.Open(t, dbURL)}
		const workers, each = 8, 15
		var wg sync.WaitGroup
		errs := make(chan error, workers*each)
		for w := range workers {
			wg.Go(func() {
				s := stores[w%2]
				for i := range each {
					_, err := s.AppendAudit(context.Background(), audit.Record{Actor: fmt.Sprintf("w%d", w), Role: "admin", Action: "test.append",
						Object: fmt.Sprint(i)}, time.Now())
					if err != nil {
						errs <- err
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("AppendAudit: %v", err)
		}
		seq, _, err := stores[1].VerifyAudit(context.Background())
		if err != nil || seq != workers*each {
			t.Fatalf("VerifyAudit() = %d, %v; want an intact chain of %d", seq, err, workers*each)
		}
	})
}

func TestAuditEntriesFilter(t *testing.T) {
	storetest.ForEach(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		for _, a := range []string{"rollout.create", "rollout.halt", "release.publish", "rollout_x.y"} {
			if _, err := s.AppendAudit(ctx, audit.Record{Actor: "rel", Role: "release_engineer", Action: a}, t0); err != nil {
				t.Fatal(err)
			}
		}
		tests := []struct {
			f    store.AuditFilter
			want int
		}{
			{store.AuditFilter{}, 4},
			{store.AuditFilter{Action: "rollout."}, 2},
			{store.AuditFilter{Action: "rollout.create"}, 1},
			{store.AuditFilter{AfterSeq: 3}, 1},
			{store.AuditFilter{Limit: 2}, 2},
			{store.AuditFilter{Actor: "nobody"}, 0},
		}
		for _, tt := range tests {
			es, err := s.AuditEntries(ctx, tt.f)
			if err != nil || len(es) != tt.want {
				t.Errorf("AuditEntries(%+v) = %d entries, %v; want %d", tt.f, len(es), err, tt.want)
			}
		}
	})
}

// TestLeaseOneHolder races two replicas (two stores on two connection
// pools) for one lease: exactly one holds it, until it expires or is
// released.
func TestLeaseOneHolder(t *testing.T) {
	storetest.ForEachURL(t, func(t *testing.T, dbURL string) {
		ctx := context.Background()
		a, b := storetest.Open(t, dbURL), storetest.Open(t, dbURL)
		for round := range 10 {
			name := fmt.Sprintf("job-%d", round)
			var wg sync.WaitGroup
			got := make([]bool, 2)
			for i, s := range []*store.Store{a, b} {
				wg.Go(func() {
					ok, err := s.AcquireLease(ctx, name, fmt.Sprintf("replica-%d", i), time.Minute, t0)
					if err != nil {
						t.Errorf("AcquireLease: %v", err)
					}
					got[i] = ok
				})
			}
			wg.Wait()
			if got[0] == got[1] {
				t.Fatalf("round %d: holders %v, want exactly one", round, got)
			}
		}
		// The holder renews; the other waits until expiry.
		if ok, _ := a.AcquireLease(ctx, "sync", "a", time.Minute, t0); !ok {
			t.Fatal("a could not take a free lease")
		}
		if ok, _ := b.AcquireLease(ctx, "sync", "b", time.Minute, t0.Add(30*time.Second)); ok {
			t.Fatal("b took a's running lease")
		}
		if ok, _ := a.AcquireLease(ctx, "sync", "a", time.Minute, t0.Add(50*time.Second)); !ok {
			t.Fatal("a could not renew its lease")
		}
		if ok, _ := b.AcquireLease(ctx, "sync", "b", time.Minute, t0.Add(100*time.Second)); ok {
			t.Fatal("b took a's renewed lease before it expired")
		}
		if ok, _ := b.AcquireLease(ctx, "sync", "b", time.Minute, t0.Add(111*time.Second)); !ok {
			t.Fatal("b could not take a's expired lease")
		}
		if holder, _, _ := a.LeaseHolder(ctx, "sync", t0.Add(112*time.Second)); holder != "b" {
			t.Fatalf("LeaseHolder = %q, want b", holder)
		}
		if err := a.ReleaseLease(ctx, "sync", "a"); err != nil { // not a's: changes nothing
			t.Fatal(err)
		}
		if ok, _ := a.AcquireLease(ctx, "sync", "a", time.Minute, t0.Add(113*time.Second)); ok {
			t.Fatal("a's release freed b's lease")
		}
		if err := b.ReleaseLease(ctx, "sync", "b"); err != nil {
			t.Fatal(err)
		}
		if ok, _ := a.AcquireLease(ctx, "sync", "a", time.Minute, t0.Add(114*time.Second)); !ok {
			t.Fatal("a could not take a released lease")
		}
	})
}

func TestOrganisationsUsersTokens(t *testing.T) {
	storetest.ForEach(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		rec := audit.Record{Actor: "admin", Role: "admin", Action: "organisation.create"}
		if err := s.CreateOrganisation(ctx, store.Organisation{ID: "o1", Name: "St. Mary", CreatedAt: t0}, rec); err != nil {
			t.Fatal(err)
		}
		if err := s.CreateOrganisation(ctx, store.Organisation{ID: "o2", Name: "St. Mary", CreatedAt: t0}, rec); !errors.Is(err, problem.ErrConflict) {
			t.Fatalf("CreateOrganisation(same name) = %v, want ErrConflict", err)
		}
		// A site named by an existing organisation's name joins it; a new
		// name makes one; an unknown ID is refused.
		if err := s.CreateSite(ctx, store.Site{ID: "s1", Name: "Radiology", Organisation: "St. Mary", CreatedAt: t0}); err != nil {
			t.Fatal(err)
		}
		if site, _ := s.Site(ctx, "s1"); site.OrganisationID != "o1" {
			t.Fatalf("site joined organisation %q, want o1", site.OrganisationID)
		}
		if err := s.CreateSite(ctx, store.Site{ID: "s2", Name: "ICU", Organisation: "Lakeside", CreatedAt: t0}); err != nil {
			t.Fatal(err)
		}
		lake, err := s.Organisation(ctx, "Lakeside")
		if err != nil {
			t.Fatal(err)
		}
		var problemErr *problem.InvalidError
		if err := s.CreateSite(ctx, store.Site{ID: "s3", Name: "X", OrganisationID: "nope", CreatedAt: t0}); !errors.As(err, &problemErr) {
			t.Fatalf("CreateSite(unknown organisation) = %v, want invalid", err)
		}
		if ids, _ := s.SiteIDsOf(ctx, lake.ID); len(ids) != 1 || ids[0] != "s2" {
			t.Fatalf("SiteIDsOf(Lakeside) = %v", ids)
		}
		if err := s.MoveSite(ctx, "s2", store.Organisation{ID: "o1", Name: "St. Mary"}, audit.Record{Actor: "admin", Role: "admin", Action: "site.move"}, t0); err != nil {
			t.Fatal(err)
		}
		if ids, _ := s.SiteIDsOf(ctx, "o1"); len(ids) != 2 {
			t.Fatalf("SiteIDsOf(o1) after move = %v", ids)
		}

		u := store.User{ID: "u1", Name: "it-lake", Role: "hospital_it", SiteIDs: []string{"s1", "s2"}, CreatedAt: t0}
		if err := s.CreateUser(ctx, u, audit.Record{Actor: "admin", Role: "admin", Action: "user.create"}); err != nil {
			t.Fatal(err)
		}
		if err := s.CreateToken(ctx, store.Token{ID: "t1", UserID: "u1", Name: "laptop", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}, "hash1",
			audit.Record{Actor: "admin", Role: "admin", Action: "token.create"}); err != nil {
			t.Fatal(err)
		}
		tok, user, err := s.TokenByHash(ctx, "hash1")
		if err != nil || tok.ID != "t1" || user.Name != "it-lake" || len(user.SiteIDs) != 2 || !tok.ExpiresAt.Equal(t0.Add(time.Hour)) {
			t.Fatalf("TokenByHash = %+v, %+v, %v", tok, user, err)
		}
		if _, _, err := s.TokenByHash(ctx, "hash2"); !errors.Is(err, problem.ErrNotFound) {
			t.Fatalf("TokenByHash(unknown) = %v", err)
		}
		if err := s.RevokeToken(ctx, "t1", t0.Add(time.Minute), audit.Record{Actor: "admin", Role: "admin", Action: "token.revoke"}); err != nil {
			t.Fatal(err)
		}
		if err := s.DisableUser(ctx, "u1", t0.Add(time.Minute), audit.Record{Actor: "admin", Role: "admin", Action: "user.disable"}); err != nil {
			t.Fatal(err)
		}
		tok, user, _ = s.TokenByHash(ctx, "hash1")
		if tok.RevokedAt.IsZero() || user.DisabledAt.IsZero() {
			t.Fatalf("after revoke and disable: token %+v user %+v", tok, user)
		}
		if err := s.RevokeToken(ctx, "t9", t0, audit.Record{}); !errors.Is(err, problem.ErrNotFound) {
			t.Fatalf("RevokeToken(unknown) = %v", err)
		}
		// Each change above went to the audit log with it (one entry per
		// decision; the failed ones left none).
		es, err := s.AuditEntries(ctx, store.AuditFilter{})
		if err != nil || len(es) != 6 {
			t.Fatalf("audit log has %d entries, %v; want 6", len(es), err)
		}
	})
}

// TestMigrationOrganisations applies 0070 over sites made before
// organisations existed: one organisation per name, the default one for
// sites without.
func TestMigrationOrganisations(t *testing.T) {
	storetest.ForEachURL(t, func(t *testing.T, dbURL string) {
		ctx := context.Background()
		driver, dsn, err := store.ParseURL(dbURL)
		if err != nil {
			t.Fatal(err)
		}
		raw, err := sql.Open(driver, dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
		body, err := os.ReadFile("migrations/0001_fleet.sql")
		if err != nil {
			t.Fatal(err)
		}
		stmts := []string{`CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)`,
			`INSERT INTO schema_migrations VALUES (1, 'x')`}
		for _, stmt := range strings.Split(string(body), ";\n") {
			stmts = append(stmts, stmt)
		}
		stmts = append(stmts, `INSERT INTO sites VALUES ('a', 'Radiology', 'St. Mary', 'x')`,
			`INSERT INTO sites VALUES ('b', 'ICU', 'St. Mary', 'x')`, `INSERT INTO sites VALUES ('c', 'Lab', '', 'x')`)
		for _, stmt := range stmts {
			if _, err := raw.ExecContext(ctx, stmt); err != nil {
				t.Fatalf("%s: %v", stmt, err)
			}
		}
		s := storetest.Open(t, dbURL)
		sites, err := s.Sites(ctx)
		if err != nil {
			t.Fatal(err)
		}
		orgOf := map[string]store.Site{}
		for _, site := range sites {
			orgOf[site.ID] = site
		}
		if orgOf["a"].OrganisationID == "" || orgOf["a"].OrganisationID != orgOf["b"].OrganisationID || orgOf["a"].Organisation != "St. Mary" {
			t.Fatalf("St. Mary sites after migration: %+v, %+v", orgOf["a"], orgOf["b"])
		}
		if orgOf["c"].Organisation != store.DefaultOrganisationName || orgOf["c"].OrganisationID == orgOf["a"].OrganisationID {
			t.Fatalf("site without organisation after migration: %+v", orgOf["c"])
		}
		orgs, _ := s.Organisations(ctx)
		if len(orgs) != 2 {
			t.Fatalf("organisations after migration: %+v, want St. Mary and the default", orgs)
		}
	})
}
