package store

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/aftercare/aftercare/server/internal/audit"
	"github.com/aftercare/aftercare/server/internal/problem"
)

// DefaultOrganisationName names the organisation of sites made without
// one (migration 0070 and CreateSite).
const DefaultOrganisationName = "Default organisation"

// An Organisation is a hospital or hospital group; it owns sites.
type Organisation struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
}

// A User is a person or tool with one role. Hospital IT users are scoped to
// OrganisationID or, when that is empty, to SiteIDs.
type User struct {
	ID             string    `json:"id"`
	Name           string    `json:"name"`
	Role           string    `json:"role"`
	OrganisationID string    `json:"organisation_id,omitempty"`
	SiteIDs        []string  `json:"site_ids,omitempty"`
	CreatedAt      time.Time `json:"created_at"`
	DisabledAt     time.Time `json:"disabled_at,omitzero"`
}

// A Token is an API token of a user. Only its hash is stored.
type Token struct {
	ID        string    `json:"id"`
	UserID    string    `json:"user_id"`
	UserName  string    `json:"user"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at,omitzero"` // zero: never
	RevokedAt time.Time `json:"revoked_at,omitzero"`
}

// CreateOrganisation adds an organisation and appends rec to the audit log
// in the same transaction. A second organisation of the same name is a
// conflict.
func (s *Store) CreateOrganisation(ctx context.Context, o Organisation, rec audit.Record) error {
	return s.tx(ctx, func(q *txq) error {
		_, err := q.exec(ctx, `INSERT INTO organisations (id, name, created_at) VALUES (?, ?, ?)`, o.ID, o.Name, formatTime(o.CreatedAt))
		if isUniqueViolation(err) {
			return fmt.Errorf("an organisation named %q already exists: %w", o.Name, problem.ErrConflict)
		}
		if err != nil {
			return fmt.Errorf("create organisation: %w", err)
		}
		_, err = q.appendAudit(ctx, rec, o.CreatedAt)
		return err
	})
}

// Organisation returns the organisation with the given ID or name.
func (s *Store) Organisation(ctx context.Context, idOrName string) (Organisation, error) {
	var o Organisation
	var created string
	err := s.direct().queryRow(ctx, `SELECT id, name, created_at FROM organisations WHERE id = ? OR name = ? ORDER BY id = ? DESC LIMIT 1`,
		idOrName, idOrName, idOrName).Scan(&o.ID, &o.Name, &created)
	o.CreatedAt = parseTime(created)
	return o, notFound(err, fmt.Sprintf("organisation %q", idOrName))
}

// Organisations returns every organisation, by name.
func (s *Store) Organisations(ctx context.Context) ([]Organisation, error) {
	rows, err := s.direct().query(ctx, `SELECT id, name, created_at FROM organisations ORDER BY name`)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(sc interface{ Scan(...any) error }) (Organisation, error) {
		var o Organisation
		var created string
		err := sc.Scan(&o.ID, &o.Name, &created)
		o.CreatedAt = parseTime(created)
		return o, err
	})
}

// MoveSite puts a site into an organisation and appends rec to the audit
// log in the same transaction.
func (s *Store) MoveSite(ctx context.Context, siteID string, org Organisation, rec audit.Record, at time.Time) error {
	return s.tx(ctx, func(q *txq) error {
		res, err := q.exec(ctx, `UPDATE sites SET organisation_id = ?, organisation = ? WHERE id = ?`, org.ID, org.Name, siteID)
		if err != nil {
			return fmt.Errorf("move site: %w", err)
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return fmt.Errorf("site %q: %w", siteID, problem.ErrNotFound)
		}
		_, err = q.appendAudit(ctx, rec, at)
		return err
	})
}

// SiteIDsOf returns the IDs of the sites of an organisation.
func (s *Store) SiteIDsOf(ctx context.Context, organisationID string) ([]string, error) {
	return s.queryStrings(ctx, `SELECT id FROM sites WHERE organisation_id = ? ORDER BY id`, organisationID)
}

// CreateUser adds a user (with its site list) and appends rec to the audit
// log in the same transaction. A second user of the same name is a
// conflict.
func (s *Store) CreateUser(ctx context.Context, u User, rec audit.Record) error {
	return s.tx(ctx, func(q *txq) error {
		var org any
		if u.OrganisationID != "" {
			org = u.OrganisationID
		}
		_, err := q.exec(ctx, `INSERT INTO users (id, name, role, organisation_id, created_at) VALUES (?, ?, ?, ?, ?)`,
			u.ID, u.Name, u.Role, org, formatTime(u.CreatedAt))
		if isUniqueViolation(err) {
			return fmt.Errorf("a user named %q already exists: %w", u.Name, problem.ErrConflict)
		}
		if err != nil {
			return fmt.Errorf("create user: %w", err)
		}
		for _, site := range u.SiteIDs {
			if _, err := q.exec(ctx, `INSERT INTO user_sites (user_id, site_id) VALUES (?, ?)`, u.ID, site); err != nil {
				return fmt.Errorf("create user: site %q: %w", site, err)
			}
		}
		_, err = q.appendAudit(ctx, rec, u.CreatedAt)
		return err
	})
}

// User returns the user with the given ID or name.
func (s *Store) User(ctx context.Context, idOrName string) (User, error) {
	users, err := s.users(ctx, `WHERE u.id = ? OR u.name = ?`, idOrName, idOrName)
	if err != nil {
		return User{}, err
	}
	for _, u := range users {
		if u.ID == idOrName {
			return u, nil
		}
	}
	if len(users) == 0 {
		return User{}, fmt.Errorf("user %q: %w", idOrName, problem.ErrNotFound)
	}
	return users[0], nil
}

// Users returns every user, by name.
func (s *Store) Users(ctx context.Context) ([]User, error) {
	return s.users(ctx, "")
}

func (s *Store) users(ctx context.Context, where string, args ...any) ([]User, error) {
	rows, err := s.direct().query(ctx, `SELECT u.id, u.name, u.role, u.organisation_id, u.created_at, u.disabled_at FROM users u `+where+` ORDER BY u.name`, args...)
	if err != nil {
		return nil, fmt.Errorf("read users: %w", err)
	}
	// collect closes rows, so the site queries below do not hold a second connection.
	out, err := collect(rows, func(sc interface{ Scan(...any) error }) (User, error) {
		var u User
		var org, disabled sql.NullString
		var created string
		err := sc.Scan(&u.ID, &u.Name, &u.Role, &org, &created, &disabled)
		u.OrganisationID, u.CreatedAt, u.DisabledAt = org.String, parseTime(created), parseNullTime(disabled)
		return u, err
	})
	if err != nil {
		return nil, fmt.Errorf("read users: %w", err)
	}
	for i := range out {
		if out[i].SiteIDs, err = s.queryStrings(ctx, `SELECT site_id FROM user_sites WHERE user_id = ? ORDER BY site_id`, out[i].ID); err != nil {
			return nil, fmt.Errorf("read user sites: %w", err)
		}
	}
	return out, nil
}

// DisableUser disables a user (its tokens stop working) and appends rec to
// the audit log in the same transaction. Disabling a disabled user changes
// nothing but the log.
func (s *Store) DisableUser(ctx context.Context, userID string, at time.Time, rec audit.Record) error {
	return s.tx(ctx, func(q *txq) error {
		res, err := q.exec(ctx, `UPDATE users SET disabled_at = COALESCE(disabled_at, ?) WHERE id = ?`, formatTime(at), userID)
		if err != nil {
			return fmt.Errorf("disable user: %w", err)
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return fmt.Errorf("user %q: %w", userID, problem.ErrNotFound)
		}
		_, err = q.appendAudit(ctx, rec, at)
		return err
	})
}

// SetUserRole changes a user's role and scope (organisation or sites) and
// appends rec to the audit log in the same transaction.
func (s *Store) SetUserRole(ctx context.Context, u User, rec audit.Record, at time.Time) error {
	return s.tx(ctx, func(q *txq) error {
		var org any
		if u.OrganisationID != "" {
			org = u.OrganisationID
		}
		res, err := q.exec(ctx, `UPDATE users SET role = ?, organisation_id = ? WHERE id = ?`, u.Role, org, u.ID)
		if err != nil {
			return fmt.Errorf("set user role: %w", err)
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return fmt.Errorf("user %q: %w", u.ID, problem.ErrNotFound)
		}
		if _, err := q.exec(ctx, `DELETE FROM user_sites WHERE user_id = ?`, u.ID); err != nil {
			return fmt.Errorf("set user role: %w", err)
		}
		for _, site := range u.SiteIDs {
			if _, err := q.exec(ctx, `INSERT INTO user_sites (user_id, site_id) VALUES (?, ?)`, u.ID, site); err != nil {
				return fmt.Errorf("set user role: site %q: %w", site, err)
			}
		}
		_, err = q.appendAudit(ctx, rec, at)
		return err
	})
}

// CreateToken stores a token by the hash of its secret and appends rec to
// the audit log in the same transaction.
func (s *Store) CreateToken(ctx context.Context, t Token, secretHash string, rec audit.Record) error {
	return s.tx(ctx, func(q *txq) error {
		var expires any
		if !t.ExpiresAt.IsZero() {
			expires = formatTime(t.ExpiresAt)
		}
		_, err := q.exec(ctx, `INSERT INTO api_tokens (id, user_id, name, token_hash, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)`,
			t.ID, t.UserID, t.Name, secretHash, formatTime(t.CreatedAt), expires)
		if err != nil {
			return fmt.Errorf("create token: %w", err)
		}
		_, err = q.appendAudit(ctx, rec, t.CreatedAt)
		return err
	})
}

// RevokeToken revokes a token and appends rec to the audit log in the same
// transaction.
func (s *Store) RevokeToken(ctx context.Context, tokenID string, at time.Time, rec audit.Record) error {
	return s.tx(ctx, func(q *txq) error {
		res, err := q.exec(ctx, `UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?`, formatTime(at), tokenID)
		if err != nil {
			return fmt.Errorf("revoke token: %w", err)
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return fmt.Errorf("token %q: %w", tokenID, problem.ErrNotFound)
		}
		_, err = q.appendAudit(ctx, rec, at)
		return err
	})
}

const tokenColumns = `t.id, t.user_id, u.name, t.name, t.created_at, t.expires_at, t.revoked_at`

func scanToken(sc interface{ Scan(...any) error }) (Token, error) {
	var t Token
	var created string
	var expires, revoked sql.NullString
	err := sc.Scan(&t.ID, &t.UserID, &t.UserName, &t.Name, &created, &expires, &revoked)
	t.CreatedAt, t.ExpiresAt, t.RevokedAt = parseTime(created), parseNullTime(expires), parseNullTime(revoked)
	return t, err
}

// Token returns one token.
func (s *Store) Token(ctx context.Context, id string) (Token, error) {
	t, err := scanToken(s.direct().queryRow(ctx, `SELECT `+tokenColumns+` FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.id = ?`, id))
	return t, notFound(err, fmt.Sprintf("token %q", id))
}

// Tokens returns the tokens of a user (every user's for ""), newest first.
func (s *Store) Tokens(ctx context.Context, userID string) ([]Token, error) {
	q := `SELECT ` + tokenColumns + ` FROM api_tokens t JOIN users u ON u.id = t.user_id`
	var args []any
	if userID != "" {
		q += ` WHERE t.user_id = ?`
		args = append(args, userID)
	}
	rows, err := s.direct().query(ctx, q+` ORDER BY t.created_at DESC, t.id`, args...)
	if err != nil {
		return nil, fmt.Errorf("read tokens: %w", err)
	}
	out, err := collect(rows, scanToken)
	if err != nil {
		return nil, fmt.Errorf("read tokens: %w", err)
	}
	return out, nil
}

// TokenByHash returns the token whose secret hashes to secretHash and its
// user, whether or not either is still valid; the caller checks.
func (s *Store) TokenByHash(ctx context.Context, secretHash string) (Token, User, error) {
	var id string
	err := s.direct().queryRow(ctx, `SELECT id FROM api_tokens WHERE token_hash = ?`, secretHash).Scan(&id)
	if err != nil {
		return Token{}, User{}, notFound(err, "API token")
	}
	t, err := s.Token(ctx, id)
	if err != nil {
		return Token{}, User{}, err
	}
	u, err := s.User(ctx, t.UserID)
	return t, u, err
}

// ReleasesOfSites returns the IDs of the releases that devices at the
// given sites run or are assigned: what hospital IT of those sites may
// see. A device runs a release when its installed version is the
// release's and its model is one of the release's (per the SBOM's model
// list where it was ingested; by version alone otherwise).
func (s *Store) ReleasesOfSites(ctx context.Context, siteIDs []string) ([]string, error) {
	if len(siteIDs) == 0 {
		return nil, nil
	}
	in := placeholders(len(siteIDs))
	args := appendAll(nil, siteIDs)
	return s.queryStrings(ctx, `SELECT r.id FROM releases r JOIN devices d ON d.installed_version = r.version
			WHERE d.site_id IN (`+in+`) AND (EXISTS (SELECT 1 FROM release_models rm WHERE rm.release_id = r.id AND rm.model = d.model)
				OR NOT EXISTS (SELECT 1 FROM release_models rm WHERE rm.release_id = r.id))
		UNION SELECT a.release_id FROM assignments a JOIN devices d ON d.id = a.device_id WHERE d.site_id IN (`+in+`)`,
		append(args, args...)...)
}
