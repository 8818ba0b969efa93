package store

import (
	"context"
	"fmt"
	"time"
)

// AcquireLease takes or renews the lease called name for holder until
// now+ttl. It reports whether holder holds the lease afterwards: true when
// the lease was free, expired, or already held by holder; false while
// another holder's lease runs. One conditional UPDATE decides, so of
// several replicas asking at once exactly one gets it.
func (s *Store) AcquireLease(ctx context.Context, name, holder string, ttl time.Duration, now time.Time) (bool, error) {
	if ttl <= 0 {
		return false, fmt.Errorf("acquire lease %q: ttl %v must be positive", name, ttl)
	}
	q := s.direct()
	// Make sure the row exists; an expired placeholder anyone may take.
	if _, err := q.exec(ctx, `INSERT INTO leases (name, holder, expires_at) VALUES (?, '', ?) ON CONFLICT (name) DO NOTHING`,
		name, formatTime(time.Time{})); err != nil {
		return false, fmt.Errorf("acquire lease %q: %w", name, err)
	}
	res, err := q.exec(ctx, `UPDATE leases SET holder = ?, expires_at = ? WHERE name = ? AND (holder = ? OR expires_at <= ?)`,
		holder, formatTime(now.Add(ttl)), name, holder, formatTime(now))
	if err != nil {
		return false, fmt.Errorf("acquire lease %q: %w", name, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("acquire lease %q: %w", name, err)
	}
	return n == 1, nil
}

// ReleaseLease gives up holder's lease, so another replica may take it at
// once. Releasing a lease one does not hold changes nothing.
func (s *Store) ReleaseLease(ctx context.Context, name, holder string) error {
	_, err := s.direct().exec(ctx, `UPDATE leases SET holder = '', expires_at = ? WHERE name = ? AND holder = ?`,
		formatTime(time.Time{}), name, holder)
	if err != nil {
		return fmt.Errorf("release lease %q: %w", name, err)
	}
	return nil
}

// LeaseHolder returns who holds the lease and until when ("" when free).
func (s *Store) LeaseHolder(ctx context.Context, name string, now time.Time) (string, time.Time, error) {
	var holder, expires string
	err := s.direct().queryRow(ctx, `SELECT holder, expires_at FROM leases WHERE name = ?`, name).Scan(&holder, &expires)
	if err != nil {
		return "", time.Time{}, notFound(err, fmt.Sprintf("lease %q", name))
	}
	if !parseTime(expires).After(now) {
		return "", time.Time{}, nil
	}
	return holder, parseTime(expires), nil
}

// A Lease is one holder's claim on a named lease, for scheduled work that
// must run in one replica. It is safe for concurrent use.
type Lease struct {
	s      *Store
	name   string
	holder string
	ttl    time.Duration
	now    func() time.Time
}

// Lease returns holder's handle on the lease called name; each Hold keeps
// it for ttl. now is the clock (nil: time.Now).
func (s *Store) Lease(name, holder string, ttl time.Duration, now func() time.Time) *Lease {
	if now == nil {
		now = time.Now
	}
	return &Lease{s: s, name: name, holder: holder, ttl: ttl, now: now}
}

// Hold takes or renews the lease; false while another holder's runs.
func (l *Lease) Hold(ctx context.Context) (bool, error) {
	return l.s.AcquireLease(ctx, l.name, l.holder, l.ttl, l.now())
}

// Release gives the lease up.
func (l *Lease) Release(ctx context.Context) error { return l.s.ReleaseLease(ctx, l.name, l.holder) }
