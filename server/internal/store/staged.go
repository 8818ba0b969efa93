package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/aftercare/aftercare/server/internal/problem"
)

// A RolloutPlan is the stored plan and progress of a staged rollout. Plan
// and RateState are JSON owned by package rollout; the store keeps them
// opaque.
type RolloutPlan struct {
	RolloutID    string
	Plan         string // JSON rollout.Plan
	Status       string
	StatusReason string
	Wave         int       // newest opened wave
	WaveOpenedAt time.Time // when Wave opened
	SettledAt    time.Time // when Wave settled; zero while it has not
	FailBase     int       // failures accepted by the last resume
	DoneBase     int       // finished devices at the last resume
	RateState    string    // JSON rollout limiter state
	CreatedBy    string
	UpdatedAt    time.Time
}

// A RolloutDevice is one device of a rollout's cohort.
type RolloutDevice struct {
	RolloutID   string    `json:"rollout_id"`
	DeviceID    string    `json:"device_id"`
	SiteID      string    `json:"site_id"`
	Role        string    `json:"role,omitempty"`
	Rank        int       `json:"rank"`
	Wave        int       `json:"wave"` // -1 until selected
	State       string    `json:"state"`
	Reason      string    `json:"reason,omitempty"`
	FromVersion string    `json:"from_version"`
	JoinedAt    time.Time `json:"joined_at"`
	UpdatedAt   time.Time `json:"updated_at"`
}

// CreateStagedRollout records a rollout, its plan and its cohort in one
// transaction. It writes no assignment: the scheduler does as waves open.
func (s *Store) CreateStagedRollout(ctx context.Context, r Rollout, p RolloutPlan, devices []RolloutDevice) error {
	sel, err := json.Marshal(r.Selector)
	if err != nil {
		return err
	}
	return s.tx(ctx, func(q *txq) error {
		if _, err := q.exec(ctx, `INSERT INTO rollouts (id, release_id, selector, created_at) VALUES (?, ?, ?, ?)`,
			r.ID, r.ReleaseID, string(sel), formatTime(r.CreatedAt)); err != nil {
			return fmt.Errorf("insert rollout: %w", err)
		}
		if _, err := q.exec(ctx, `INSERT INTO rollout_plans (rollout_id, plan, status, status_reason, wave, wave_opened_at, settled_at,
			fail_base, done_base, rate_state, created_by, updated_at) VALUES (?, ?, ?, ?, ?, ?, NULL, ?, ?, ?, ?, ?)`,
			p.RolloutID, p.Plan, p.Status, p.StatusReason, p.Wave, formatTime(p.WaveOpenedAt), p.FailBase, p.DoneBase,
			p.RateState, p.CreatedBy, formatTime(p.UpdatedAt)); err != nil {
			return fmt.Errorf("insert rollout plan: %w", err)
		}
		return insertRolloutDevices(ctx, q, devices)
	})
}

func insertRolloutDevices(ctx context.Context, q *txq, devices []RolloutDevice) error {
	for _, d := range devices {
		if _, err := q.execRepeated(ctx, `INSERT INTO rollout_devices (rollout_id, device_id, site_id, role, rank, wave, state, reason,
			from_version, joined_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			d.RolloutID, d.DeviceID, d.SiteID, d.Role, d.Rank, d.Wave, d.State, d.Reason, d.FromVersion,
			formatTime(d.JoinedAt), formatTime(d.UpdatedAt)); err != nil {
			return fmt.Errorf("add device %s to rollout: %w", d.DeviceID, err)
		}
	}
	return nil
}

const planColumns = `rollout_id, plan, status, status_reason, wave, wave_opened_at, settled_at, fail_base, done_base, rate_state, created_by, updated_at`

func scanPlan(sc interface{ Scan(...any) error }) (RolloutPlan, error) {
	var p RolloutPlan
	var opened, updated string
	var settled sql.NullString
	err := sc.Scan(&p.RolloutID, &p.Plan, &p.Status, &p.StatusReason, &p.Wave, &opened, &settled, &p.FailBase, &p.DoneBase,
		&p.RateState, &p.CreatedBy, &updated)
	p.WaveOpenedAt, p.SettledAt, p.UpdatedAt = parseTime(opened), parseNullTime(settled), parseTime(updated)
	return p, err
}

// StagedRollout returns a rollout and its plan.
func (s *Store) StagedRollout(ctx context.Context, id string) (Rollout, RolloutPlan, error) {
	var r Rollout
	var sel, created string
	err := s.direct().queryRow(ctx, `SELECT id, release_id, selector, created_at FROM rollouts WHERE id = ?`, id).
		Scan(&r.ID, &r.ReleaseID, &sel, &created)
	if err != nil {
		return r, RolloutPlan{}, notFound(err, fmt.Sprintf("rollout %q", id))
	}
	r.CreatedAt = parseTime(created)
	if err := json.Unmarshal([]byte(sel), &r.Selector); err != nil {
		return r, RolloutPlan{}, fmt.Errorf("rollout %s: stored selector: %w", id, err)
	}
	p, err := scanPlan(s.direct().queryRow(ctx, `SELECT `+planColumns+` FROM rollout_plans WHERE rollout_id = ?`, id))
	if err == sql.ErrNoRows {
		// A rollout from before staged rollouts: one wave, done.
		return r, RolloutPlan{RolloutID: id, Status: "completed", WaveOpenedAt: r.CreatedAt, UpdatedAt: r.CreatedAt}, nil
	}
	return r, p, err
}

// RolloutPlans returns the plans with one of the given statuses (none: all),
// oldest rollout first.
func (s *Store) RolloutPlans(ctx context.Context, statuses ...string) ([]RolloutPlan, error) {
	q := `SELECT ` + planColumns + ` FROM rollout_plans`
	if len(statuses) > 0 {
		q += ` WHERE status IN (` + placeholders(len(statuses)) + `)`
	}
	rows, err := s.direct().query(ctx, q+` ORDER BY rollout_id`, appendAll(nil, statuses)...)
	if err != nil {
		return nil, fmt.Errorf("list rollout plans: %w", err)
	}
	return collect(rows, scanPlan)
}

// RolloutDevices returns the cohort of a rollout, by rank.
func (s *Store) RolloutDevices(ctx context.Context, rolloutID string) ([]RolloutDevice, error) {
	rows, err := s.direct().query(ctx, `SELECT rollout_id, device_id, site_id, role, rank, wave, state, reason, from_version,
		joined_at, updated_at FROM rollout_devices WHERE rollout_id = ? ORDER BY rank`, rolloutID)
	if err != nil {
		return nil, fmt.Errorf("list rollout devices: %w", err)
	}
	return collect(rows, func(sc interface{ Scan(...any) error }) (RolloutDevice, error) {
		var d RolloutDevice
		var joined, updated string
		err := sc.Scan(&d.RolloutID, &d.DeviceID, &d.SiteID, &d.Role, &d.Rank, &d.Wave, &d.State, &d.Reason,
			&d.FromVersion, &joined, &updated)
		d.JoinedAt, d.UpdatedAt = parseTime(joined), parseTime(updated)
		return d, err
	})
}

// A TickUpdate is what one scheduler step changes in a rollout, written in
// one transaction: the plan, new cohort members, changed devices, devices
// to assign the rollout's release to, and devices whose assignment from
// this rollout is withdrawn.
type TickUpdate struct {
	Plan     RolloutPlan
	Joined   []RolloutDevice
	Changed  []RolloutDevice
	Assign   []string
	Unassign []string
	// ReleaseID is the release assigned to Assign.
	ReleaseID string
	At        time.Time
	// Events are what the step did by itself, recorded with it.
	Events []RolloutEvent
}

// ApplyTick writes u in one transaction and returns the plan's new
// updated_at as stored. It fails with problem.ErrConflict, changing
// nothing, when the plan was updated since it was read (another step or a
// human decision came first): the caller reads again.
//
// ApplyTick and CreateStagedRollout are the only writers of a rollout's
// devices and events, and ApplyTick always moves updated_at forward: a
// plan whose updated_at is still the returned one has the devices and
// events this call left.
func (s *Store) ApplyTick(ctx context.Context, u TickUpdate, readAt time.Time) (time.Time, error) {
	var version time.Time
	err := s.tx(ctx, func(q *txq) error {
		p := u.Plan
		// updated_at is the plan's version: it must change with every
		// write, also when the clock did not move (or moved back, on
		// another replica) since the read, or two steps based on the same
		// read would both commit.
		if !p.UpdatedAt.Truncate(time.Microsecond).After(readAt) {
			p.UpdatedAt = readAt.Add(time.Microsecond)
		}
		var settled any
		if !p.SettledAt.IsZero() {
			settled = formatTime(p.SettledAt)
		}
		res, err := q.exec(ctx, `UPDATE rollout_plans SET plan = ?, status = ?, status_reason = ?, wave = ?, wave_opened_at = ?,
			settled_at = ?, fail_base = ?, done_base = ?, rate_state = ?, updated_at = ? WHERE rollout_id = ? AND updated_at = ?`,
			p.Plan, p.Status, p.StatusReason, p.Wave, formatTime(p.WaveOpenedAt), settled, p.FailBase, p.DoneBase, p.RateState,
			formatTime(p.UpdatedAt), p.RolloutID, formatTime(readAt))
		if err != nil {
			return fmt.Errorf("update rollout plan: %w", err)
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return fmt.Errorf("rollout %s changed while it was being updated: %w", p.RolloutID, problem.ErrConflict)
		}
		version = parseTime(formatTime(p.UpdatedAt))
		if err := insertRolloutDevices(ctx, q, u.Joined); err != nil {
			return err
		}
		for _, d := range u.Changed {
			if _, err := q.execRepeated(ctx, `UPDATE rollout_devices SET wave = ?, state = ?, reason = ?, updated_at = ?
				WHERE rollout_id = ? AND device_id = ?`, d.Wave, d.State, d.Reason, formatTime(d.UpdatedAt), d.RolloutID, d.DeviceID); err != nil {
				return fmt.Errorf("update rollout device %s: %w", d.DeviceID, err)
			}
		}
		for _, id := range u.Assign {
			if _, err := q.execRepeated(ctx, `INSERT INTO assignments (device_id, rollout_id, release_id, assigned_at) VALUES (?, ?, ?, ?)
				ON CONFLICT (device_id) DO UPDATE SET rollout_id = excluded.rollout_id,
				release_id = excluded.release_id, assigned_at = excluded.assigned_at`,
				id, p.RolloutID, u.ReleaseID, formatTime(u.At)); err != nil {
				return fmt.Errorf("assign device %s: %w", id, err)
			}
		}
		for _, id := range u.Unassign {
			if _, err := q.execRepeated(ctx, `DELETE FROM assignments WHERE device_id = ? AND rollout_id = ?`, id, p.RolloutID); err != nil {
				return fmt.Errorf("withdraw assignment of %s: %w", id, err)
			}
		}
		return insertRolloutEvents(ctx, q, u.Events)
	})
	if err != nil {
		return time.Time{}, err
	}
	return version, nil
}

// ActiveRollouts returns, for each of the given devices that belongs to a
// rollout whose status is one of active and in which it has not finished,
// that rollout's ID.
func (s *Store) ActiveRollouts(ctx context.Context, deviceIDs []string, active []string, finished []string) (map[string]string, error) {
	out := map[string]string{}
	for start := 0; start < len(deviceIDs); start += assignmentsChunk {
		chunk := deviceIDs[start:min(start+assignmentsChunk, len(deviceIDs))]
		args := appendAll(appendAll(appendAll(nil, chunk), active), finished)
		rows, err := s.direct().query(ctx, `SELECT rd.device_id, rd.rollout_id FROM rollout_devices rd
			JOIN rollout_plans p ON p.rollout_id = rd.rollout_id
			WHERE rd.device_id IN (`+placeholders(len(chunk))+`) AND p.status IN (`+placeholders(len(active))+`)
			AND rd.state NOT IN (`+placeholders(len(finished))+`)`, args...)
		if err != nil {
			return nil, fmt.Errorf("find active rollouts: %w", err)
		}
		for rows.Next() {
			var d, r string
			if err := rows.Scan(&d, &r); err != nil {
				rows.Close()
				return nil, err
			}
			out[d] = r
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// SetDeviceLabels replaces the labels of a device; an empty value removes
// a label.
func (s *Store) SetDeviceLabels(ctx context.Context, deviceID string, labels map[string]string) error {
	return s.tx(ctx, func(q *txq) error {
		var one int
		if err := q.queryRow(ctx, `SELECT 1 FROM devices WHERE id = ?`, deviceID).Scan(&one); err != nil {
			return notFound(err, fmt.Sprintf("device %q", deviceID))
		}
		for name, value := range labels {
			if _, err := q.exec(ctx, `DELETE FROM device_labels WHERE device_id = ? AND name = ?`, deviceID, name); err != nil {
				return fmt.Errorf("set label %s: %w", name, err)
			}
			if value == "" {
				continue
			}
			if _, err := q.exec(ctx, `INSERT INTO device_labels (device_id, name, value) VALUES (?, ?, ?)`, deviceID, name, value); err != nil {
				return fmt.Errorf("set label %s: %w", name, err)
			}
		}
		return nil
	})
}

// DeviceLabels returns the labels of every labelled device.
func (s *Store) DeviceLabels(ctx context.Context) (map[string]map[string]string, error) {
	rows, err := s.direct().query(ctx, `SELECT device_id, name, value FROM device_labels`)
	if err != nil {
		return nil, fmt.Errorf("read device labels: %w", err)
	}
	defer rows.Close()
	out := map[string]map[string]string{}
	for rows.Next() {
		var id, name, value string
		if err := rows.Scan(&id, &name, &value); err != nil {
			return nil, err
		}
		if out[id] == nil {
			out[id] = map[string]string{}
		}
		out[id][name] = value
	}
	return out, rows.Err()
}

// A SitePolicy is how a site takes patches. Windows is JSON owned by
// package rollout.
type SitePolicy struct {
	SiteID    string
	Approval  string // "auto" or "approval"
	TimeZone  string // IANA name
	Windows   string // JSON []rollout.WeeklyWindow
	UpdatedAt time.Time
}

// SetSitePolicy stores a site's policy, replacing the previous one.
func (s *Store) SetSitePolicy(ctx context.Context, p SitePolicy) error {
	if _, err := s.Site(ctx, p.SiteID); err != nil {
		return err
	}
	_, err := s.direct().exec(ctx, `INSERT INTO site_policies (site_id, approval, timezone, windows, updated_at) VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (site_id) DO UPDATE SET approval = excluded.approval, timezone = excluded.timezone,
		windows = excluded.windows, updated_at = excluded.updated_at`,
		p.SiteID, p.Approval, p.TimeZone, p.Windows, formatTime(p.UpdatedAt))
	if err != nil {
		return fmt.Errorf("store site policy: %w", err)
	}
	return nil
}

// SitePolicies returns the stored policies by site ID; a site without a
// row has none.
func (s *Store) SitePolicies(ctx context.Context) (map[string]SitePolicy, error) {
	rows, err := s.direct().query(ctx, `SELECT site_id, approval, timezone, windows, updated_at FROM site_policies`)
	if err != nil {
		return nil, fmt.Errorf("read site policies: %w", err)
	}
	defer rows.Close()
	out := map[string]SitePolicy{}
	for rows.Next() {
		var p SitePolicy
		var updated string
		if err := rows.Scan(&p.SiteID, &p.Approval, &p.TimeZone, &p.Windows, &updated); err != nil {
			return nil, err
		}
		p.UpdatedAt = parseTime(updated)
		out[p.SiteID] = p
	}
	return out, rows.Err()
}

// A SiteDecision is a hospital's decision on a rollout for one site.
type SiteDecision struct {
	RolloutID     string    `json:"rollout_id"`
	SiteID        string    `json:"site_id"`
	Decision      string    `json:"decision"` // approved, deferred, declined
	DeferredUntil time.Time `json:"deferred_until,omitzero"`
	Reason        string    `json:"reason"`
	Actor         string    `json:"actor"`
	DecidedAt     time.Time `json:"decided_at"`
}

// SetSiteDecision records a decision, replacing an earlier one.
func (s *Store) SetSiteDecision(ctx context.Context, d SiteDecision) error {
	var until any
	if !d.DeferredUntil.IsZero() {
		until = formatTime(d.DeferredUntil)
	}
	_, err := s.direct().exec(ctx, `INSERT INTO site_decisions (rollout_id, site_id, decision, deferred_until, reason, actor, decided_at)
		VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (rollout_id, site_id) DO UPDATE SET decision = excluded.decision,
		deferred_until = excluded.deferred_until, reason = excluded.reason, actor = excluded.actor, decided_at = excluded.decided_at`,
		d.RolloutID, d.SiteID, d.Decision, until, d.Reason, d.Actor, formatTime(d.DecidedAt))
	if err != nil {
		return fmt.Errorf("store site decision: %w", err)
	}
	return nil
}

// SiteDecisions returns the decisions of a rollout (rolloutID set) or of a
// site (siteID set).
func (s *Store) SiteDecisions(ctx context.Context, rolloutID, siteID string) ([]SiteDecision, error) {
	var where []string
	var args []any
	if rolloutID != "" {
		where, args = append(where, "rollout_id = ?"), append(args, rolloutID)
	}
	if siteID != "" {
		where, args = append(where, "site_id = ?"), append(args, siteID)
	}
	q := `SELECT rollout_id, site_id, decision, deferred_until, reason, actor, decided_at FROM site_decisions`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	rows, err := s.direct().query(ctx, q+" ORDER BY rollout_id, site_id", args...)
	if err != nil {
		return nil, fmt.Errorf("read site decisions: %w", err)
	}
	return collect(rows, func(sc interface{ Scan(...any) error }) (SiteDecision, error) {
		var d SiteDecision
		var until sql.NullString
		var decided string
		err := sc.Scan(&d.RolloutID, &d.SiteID, &d.Decision, &until, &d.Reason, &d.Actor, &decided)
		d.DeferredUntil, d.DecidedAt = parseNullTime(until), parseTime(decided)
		return d, err
	})
}

// SiteRollouts returns the IDs of the rollouts that have devices of a site
// in one of the given states.
func (s *Store) SiteRollouts(ctx context.Context, siteID string, states ...string) ([]string, error) {
	rows, err := s.direct().query(ctx, `SELECT DISTINCT rollout_id FROM rollout_devices WHERE site_id = ? AND state IN (`+
		placeholders(len(states))+`) ORDER BY rollout_id`, append([]any{siteID}, appendAll(nil, states)...)...)
	if err != nil {
		return nil, fmt.Errorf("list rollouts of site: %w", err)
	}
	return collect(rows, scanString)
}

// DevicesByID returns the given devices by ID; unknown IDs are left out.
func (s *Store) DevicesByID(ctx context.Context, ids []string) (map[string]Device, error) {
	out := map[string]Device{}
	for start := 0; start < len(ids); start += assignmentsChunk {
		chunk := ids[start:min(start+assignmentsChunk, len(ids))]
		rows, err := s.direct().query(ctx, `SELECT `+deviceColumns+` FROM devices d WHERE d.id IN (`+placeholders(len(chunk))+`)`, appendAll(nil, chunk)...)
		if err != nil {
			return nil, fmt.Errorf("read devices: %w", err)
		}
		for rows.Next() {
			d, err := scanDevice(rows)
			if err != nil {
				rows.Close()
				return nil, err
			}
			out[d.ID] = d
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// FailedReports returns, for each of the given devices that reported
// failed or rolled-back for the target since the given time, the first
// such report's state and reason. Reading the history, not the current
// state, catches a failure that a later report (idle) already replaced.
func (s *Store) FailedReports(ctx context.Context, deviceIDs []string, target string, since time.Time) (map[string]string, error) {
	out := map[string]string{}
	for start := 0; start < len(deviceIDs); start += assignmentsChunk {
		chunk := deviceIDs[start:min(start+assignmentsChunk, len(deviceIDs))]
		args := append(appendAll(nil, chunk), target, formatTime(since))
		rows, err := s.direct().query(ctx, `SELECT device_id, state, reason FROM device_reports WHERE device_id IN (`+placeholders(len(chunk))+`)
			AND target = ? AND state IN ('failed', 'rolled-back') AND received_at >= ? ORDER BY device_id, seq`, args...)
		if err != nil {
			return nil, fmt.Errorf("read failed reports: %w", err)
		}
		for rows.Next() {
			var id, state, reason string
			if err := rows.Scan(&id, &state, &reason); err != nil {
				rows.Close()
				return nil, err
			}
			if _, ok := out[id]; !ok {
				out[id] = state + ": " + reason
			}
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// RolloutHasDevicesIn reports whether a rollout has a device in one of the
// given states.
func (s *Store) RolloutHasDevicesIn(ctx context.Context, rolloutID string, states ...string) (bool, error) {
	var one int
	err := s.direct().queryRow(ctx, `SELECT 1 FROM rollout_devices WHERE rollout_id = ? AND state IN (`+placeholders(len(states))+`) LIMIT 1`,
		append([]any{rolloutID}, appendAll(nil, states)...)...).Scan(&one)
	if err == sql.ErrNoRows {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("look up rollout devices: %w", err)
	}
	return true, nil
}
