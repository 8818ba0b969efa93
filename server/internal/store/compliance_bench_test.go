package store

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aftercare/aftercare/internal/testenv"
)

// seedFleet fills a new SQLite store with sites*perSite devices: half of
// them assigned a newer release by a staged rollout, some failed, some held
// by their site, one site declining. Rows go in with multi-row INSERTs in
// one transaction, so seeding stays quick.
func seedFleet(b *testing.B, dbURL string, sites, perSite int) (*Store, []string) {
	b.Helper()
	ctx := context.Background()
	s, err := Open(ctx, dbURL)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	t0 := formatTime(time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC))
	var siteIDs []string
	err = s.tx(ctx, func(q *txq) error {
		for i := range 2 {
			v := fmt.Sprintf("%d.0.0", i+1)
			if _, err := q.exec(ctx, `INSERT INTO releases (id, product, version, target_path, manifest, created_at) VALUES (?, 'pump', ?, ?, '{"notes":"fixes CVE-2026-0001"}', ?)`,
				"r"+v, v, "pump/"+v+"/image", t0); err != nil {
				return err
			}
		}
		if _, err := q.exec(ctx, `INSERT INTO rollouts (id, release_id, selector, created_at) VALUES ('ro', 'r2.0.0', '{}', ?)`, t0); err != nil {
			return err
		}
		if _, err := q.exec(ctx, `INSERT INTO rollout_plans (rollout_id, plan, status, status_reason, wave, wave_opened_at, fail_base, done_base, rate_state, created_by, updated_at)
			VALUES ('ro', '{}', 'running', '', 0, ?, 0, 0, '{}', 'eng', ?)`, t0, t0); err != nil {
			return err
		}
		for si := range sites {
			site := fmt.Sprintf("site-%04d", si)
			siteIDs = append(siteIDs, site)
			if _, err := q.exec(ctx, `INSERT INTO sites (id, name, organisation, created_at) VALUES (?, ?, ?, ?)`, site, site, fmt.Sprint("org-", si/10), t0); err != nil {
				return err
			}
			var devs, asg, rds []string
			var dargs, aargs, rargs []any
			for di := range perSite {
				id := fmt.Sprintf("%s-d%05d", site, di)
				state := "idle"
				if di%50 == 1 {
					state = "failed"
				}
				devs = append(devs, "(?, ?, '', 'pump-x1', '', '1.0.0', ?, ?, '', ?, 0, ?, ?)")
				var stateRel any
				if state == "failed" {
					stateRel = "r2.0.0"
				}
				dargs = append(dargs, id, site, "h-"+id, state, stateRel, t0, t0)
				if di%2 == 1 {
					asg = append(asg, "(?, 'ro', 'r2.0.0', ?)")
					aargs = append(aargs, id, t0)
					rdState := "assigned"
					if si%7 == 0 {
						rdState = "held"
					}
					if si == 3 {
						rdState = "declined"
					}
					rds = append(rds, "('ro', ?, ?, '', ?, 0, ?, '', '1.0.0', ?, ?)")
					rargs = append(rargs, id, site, di, rdState, t0, t0)
				}
			}
			for _, ins := range []struct {
				head string
				rows []string
				args []any
			}{
				{`INSERT INTO devices (id, site_id, serial, model, hardware_revision, installed_version, token_hash, state, state_reason, state_release_id, last_seq, last_seen, enrolled_at) VALUES `, devs, dargs},
				{`INSERT INTO assignments (device_id, rollout_id, release_id, assigned_at) VALUES `, asg, aargs},
				{`INSERT INTO rollout_devices (rollout_id, device_id, site_id, role, rank, wave, state, reason, from_version, joined_at, updated_at) VALUES `, rds, rargs},
			} {
				if len(ins.rows) == 0 {
					continue
				}
				if _, err := q.exec(ctx, ins.head+strings.Join(ins.rows, ", "), ins.args...); err != nil {
					return err
				}
			}
		}
		_, err := q.exec(ctx, `INSERT INTO site_decisions (rollout_id, site_id, decision, reason, actor, decided_at) VALUES ('ro', 'site-0003', 'declined', 'validation pending', 'it', ?)`, t0)
		return err
	})
	if err != nil {
		b.Fatalf("seed: %v", err)
	}
	return s, siteIDs
}

// BenchmarkCompliance100k reports, with 100,000 device rows in 200 sites,
// the time of the patch state of one site (goal: 50 ms) and of the
// compliance summary of all sites (goal: 500 ms) as a ratio to the goal;
// below 1 meets it.
func BenchmarkCompliance100k(b *testing.B) {
	b.Run("sqlite", func(b *testing.B) {
		benchCompliance(b, "sqlite://"+filepath.Join(b.TempDir(), "bench.db"))
	})
	b.Run("postgres", func(b *testing.B) { benchCompliance(b, testenv.PostgresSchema(b)) })
}

func benchCompliance(b *testing.B, dbURL string) {
	s, sites := seedFleet(b, dbURL, 200, 500)
	ctx := context.Background()
	b.Run("site-patch-state", func(b *testing.B) {
		i := 0
		for b.Loop() {
			sc, err := s.SiteDevicesCompliance(ctx, sites[i%len(sites)])
			if err != nil || len(sc.Devices) != 500 {
				b.Fatalf("SiteDevicesCompliance = %d devices, %v", len(sc.Devices), err)
			}
			i++
		}
		b.ReportMetric(float64(b.Elapsed())/float64(b.N)/float64(50*time.Millisecond), "ratio-to-50ms-goal")
	})
	b.Run("compliance-summary", func(b *testing.B) {
		for b.Loop() {
			all, err := s.ComplianceSummary(ctx)
			if err != nil || len(all) != 200 || all[3].Counts.Declined != 250 || len(all[3].Declined) != 1 {
				b.Fatalf("ComplianceSummary = %d sites, %v", len(all), err)
			}
		}
		b.ReportMetric(float64(b.Elapsed())/float64(b.N)/float64(500*time.Millisecond), "ratio-to-500ms-goal")
	})
}
