package store

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/aftercare/aftercare/protocol"
	"github.com/aftercare/aftercare/server/internal/audit"
	"github.com/aftercare/aftercare/server/internal/problem"
)

// A Site is one place where devices run, e.g. a hospital department.
type Site struct {
	ID             string    `json:"id"`
	Name           string    `json:"name"`
	OrganisationID string    `json:"organisation_id"`
	Organisation   string    `json:"organisation"` // the organisation's name
	CreatedAt      time.Time `json:"created_at"`
}

// A Device is an enrolled device and its last known state.
type Device struct {
	ID               string         `json:"id"`
	SiteID           string         `json:"site_id"`
	Serial           string         `json:"serial"`
	Model            string         `json:"model"`
	HardwareRevision string         `json:"hardware_revision"`
	InstalledVersion string         `json:"installed_version"`
	State            protocol.State `json:"state"`
	StateReason      string         `json:"state_reason,omitempty"`
	StateReleaseID   string         `json:"state_release_id,omitempty"` // the release State refers to
	LastSeq          uint64         `json:"last_seq"`
	LastSeen         time.Time      `json:"last_seen"`
	EnrolledAt       time.Time      `json:"enrolled_at"`
	// RevokedAt is when an administrator revoked the device; nil while it
	// is not revoked.
	RevokedAt     *time.Time `json:"revoked_at,omitempty"`
	RevokedReason string     `json:"revoked_reason,omitempty"`
}

// CreateSite adds a site to its organisation and appends recs to the
// audit log in the same transaction. The organisation is OrganisationID;
// when that is empty, the organisation named Organisation, made if it does
// not exist yet (the default organisation for an empty name). A second
// site with the same name is a conflict.
func (s *Store) CreateSite(ctx context.Context, site Site, recs ...audit.Record) error {
	return s.tx(ctx, func(q *txq) error {
		org, err := q.siteOrganisation(ctx, site)
		if err != nil {
			return err
		}
		_, err = q.exec(ctx, `INSERT INTO sites (id, name, organisation, organisation_id, created_at) VALUES (?, ?, ?, ?, ?)`,
			site.ID, site.Name, org.Name, org.ID, formatTime(site.CreatedAt))
		if isUniqueViolation(err) {
			return fmt.Errorf("a site named %q already exists: %w", site.Name, problem.ErrConflict)
		}
		if err != nil {
			return fmt.Errorf("create site: %w", err)
		}
		for _, rec := range recs {
			if _, err := q.appendAudit(ctx, rec, site.CreatedAt); err != nil {
				return err
			}
		}
		return nil
	})
}

// siteOrganisation finds (or, by name, makes) the organisation of a new
// site.
func (q *txq) siteOrganisation(ctx context.Context, site Site) (Organisation, error) {
	if site.OrganisationID != "" {
		o := Organisation{ID: site.OrganisationID}
		err := q.queryRow(ctx, `SELECT name FROM organisations WHERE id = ?`, o.ID).Scan(&o.Name)
		if err == sql.ErrNoRows {
			return o, problem.Invalid(fmt.Sprintf("organisation_id %q names no organisation", o.ID))
		}
		return o, err
	}
	o := Organisation{Name: site.Organisation, CreatedAt: site.CreatedAt}
	if o.Name == "" {
		o.Name = DefaultOrganisationName
	}
	err := q.queryRow(ctx, `SELECT id FROM organisations WHERE name = ?`, o.Name).Scan(&o.ID)
	if err != sql.ErrNoRows {
		return o, err
	}
	o.ID = uuid.NewString()
	_, err = q.exec(ctx, `INSERT INTO organisations (id, name, created_at) VALUES (?, ?, ?)`, o.ID, o.Name, formatTime(o.CreatedAt))
	if err != nil {
		return o, fmt.Errorf("create organisation %q: %w", o.Name, err)
	}
	return o, nil
}

// Site returns the site with the given ID.
func (s *Store) Site(ctx context.Context, id string) (Site, error) {
	var site Site
	var created string
	err := s.direct().queryRow(ctx, `SELECT id, name, organisation_id, organisation, created_at FROM sites WHERE id = ?`, id).
		Scan(&site.ID, &site.Name, &site.OrganisationID, &site.Organisation, &created)
	site.CreatedAt = parseTime(created)
	return site, notFound(err, fmt.Sprintf("site %q", id))
}

// Sites returns every site, by name.
func (s *Store) Sites(ctx context.Context) ([]Site, error) {
	rows, err := s.direct().query(ctx, `SELECT id, name, organisation_id, organisation, created_at FROM sites ORDER BY name`)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(sc interface{ Scan(...any) error }) (Site, error) {
		var site Site
		var created string
		err := sc.Scan(&site.ID, &site.Name, &site.OrganisationID, &site.Organisation, &created)
		site.CreatedAt = parseTime(created)
		return site, err
	})
}

// CreateEnrollmentToken records the hash of a one-time enrollment token for
// a site.
func (s *Store) CreateEnrollmentToken(ctx context.Context, siteID, tokenHash string, now, expires time.Time) error {
	_, err := s.direct().exec(ctx, `INSERT INTO enrollment_tokens (token_hash, site_id, created_at, expires_at) VALUES (?, ?, ?, ?)`,
		tokenHash, siteID, formatTime(now), formatTime(expires))
	return err
}

// Enroll consumes the enrollment token with the given hash and adds d to the
// token's site, with credentialHash as the hash of its device credential. It fails with problem.ErrUnauthorized for an unknown or
// expired token and problem.ErrConflict for one already used; then nothing
// changes.
func (s *Store) Enroll(ctx context.Context, tokenHash, credentialHash string, now time.Time, d Device) (Device, error) {
	return s.enroll(ctx, tokenHash, credentialHash, now, d, nil)
}

// EnrollCertified is Enroll for a device whose identity is the certificate
// cert (issued for d.ID): the token, the device and the certificate are
// recorded in one transaction. A device ID already taken is a conflict;
// then nothing changes and the token stays unused.
func (s *Store) EnrollCertified(ctx context.Context, tokenHash string, now time.Time, d Device, cert DeviceCert) (Device, error) {
	return s.enroll(ctx, tokenHash, "cert:"+d.ID, now, d, &cert)
}

func (s *Store) enroll(ctx context.Context, tokenHash, credentialHash string, now time.Time, d Device, cert *DeviceCert) (Device, error) {
	err := s.tx(ctx, func(q *txq) error {
		var siteID, expires string
		var used sql.NullString
		err := q.queryRow(ctx, `SELECT site_id, expires_at, used_at FROM enrollment_tokens WHERE token_hash = ?`, tokenHash).
			Scan(&siteID, &expires, &used)
		if err == sql.ErrNoRows {
			return fmt.Errorf("enrollment token is not known: %w", problem.ErrUnauthorized)
		}
		if err != nil {
			return err
		}
		if used.Valid {
			return fmt.Errorf("enrollment token was already used: %w", problem.ErrConflict)
		}
		if !now.Before(parseTime(expires)) {
			return fmt.Errorf("enrollment token expired at %s: %w", expires, problem.ErrUnauthorized)
		}
		// The used_at guard makes a concurrent second use affect no row.
		res, err := q.exec(ctx, `UPDATE enrollment_tokens SET used_at = ?, device_id = ? WHERE token_hash = ? AND used_at IS NULL`,
			formatTime(now), d.ID, tokenHash)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return fmt.Errorf("enrollment token was already used: %w", problem.ErrConflict)
		}
		d.SiteID = siteID
		d.EnrolledAt = now
		d.State = protocol.StateIdle
		_, err = q.exec(ctx, `INSERT INTO devices (id, site_id, serial, model, hardware_revision, installed_version, token_hash,
			state, state_reason, last_seq, enrolled_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, '', 0, ?)`,
			d.ID, d.SiteID, d.Serial, d.Model, d.HardwareRevision, d.InstalledVersion, credentialHash, d.State, formatTime(now))
		if isUniqueViolation(err) {
			return fmt.Errorf("device ID %q is already enrolled: %w", d.ID, problem.ErrConflict)
		}
		if err != nil || cert == nil {
			return err
		}
		return insertCert(ctx, q, *cert)
	})
	return d, err
}

const deviceColumns = `d.id, d.site_id, d.serial, d.model, d.hardware_revision, d.installed_version,
	d.state, d.state_reason, d.state_release_id, d.last_seq, d.last_seen, d.enrolled_at, d.revoked_at, d.revoked_reason`

func scanDevice(sc interface{ Scan(...any) error }, extra ...any) (Device, error) {
	var d Device
	var releaseID, lastSeen, revoked sql.NullString
	var enrolled string
	dest := append([]any{&d.ID, &d.SiteID, &d.Serial, &d.Model, &d.HardwareRevision, &d.InstalledVersion,
		&d.State, &d.StateReason, &releaseID, &d.LastSeq, &lastSeen, &enrolled, &revoked, &d.RevokedReason}, extra...)
	if err := sc.Scan(dest...); err != nil {
		return d, err
	}
	if revoked.Valid {
		t := parseTime(revoked.String)
		d.RevokedAt = &t
	}
	d.StateReleaseID = releaseID.String
	d.LastSeen = parseNullTime(lastSeen)
	d.EnrolledAt = parseTime(enrolled)
	return d, nil
}

// Device returns the device with the given ID.
func (s *Store) Device(ctx context.Context, id string) (Device, error) {
	d, err := scanDevice(s.direct().queryRow(ctx, `SELECT `+deviceColumns+` FROM devices d WHERE d.id = ?`, id))
	return d, notFound(err, fmt.Sprintf("device %q", id))
}

// DeviceByTokenHash returns the device whose credential hashes to tokenHash.
func (s *Store) DeviceByTokenHash(ctx context.Context, tokenHash string) (Device, error) {
	d, err := scanDevice(s.direct().queryRow(ctx, `SELECT `+deviceColumns+` FROM devices d WHERE d.token_hash = ?`, tokenHash))
	return d, notFound(err, "device credential")
}

// A DeviceFilter selects devices; an empty field does not filter.
type DeviceFilter struct {
	Models  []string
	SiteIDs []string
}

// Devices returns the devices matching f, by ID.
func (s *Store) Devices(ctx context.Context, f DeviceFilter) ([]Device, error) {
	var where []string
	var args []any
	if len(f.Models) > 0 {
		where = append(where, "d.model IN ("+placeholders(len(f.Models))+")")
		args = appendAll(args, f.Models)
	}
	if len(f.SiteIDs) > 0 {
		where = append(where, "d.site_id IN ("+placeholders(len(f.SiteIDs))+")")
		args = appendAll(args, f.SiteIDs)
	}
	q := `SELECT ` + deviceColumns + ` FROM devices d`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	rows, err := s.direct().query(ctx, q+" ORDER BY d.id", args...)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(sc interface{ Scan(...any) error }) (Device, error) { return scanDevice(sc) })
}

func placeholders(n int) string {
	return strings.TrimSuffix(strings.Repeat("?, ", n), ", ")
}

func appendAll(args []any, vals []string) []any {
	for _, v := range vals {
		args = append(args, v)
	}
	return args
}
