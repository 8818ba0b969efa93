package store

import (
	"context"
	"fmt"
	"hash/fnv"
)

// Exclusive runs fn while no other replica sharing this database runs an
// Exclusive of the same name; it waits for its turn until ctx ends.
//
// On PostgreSQL it holds a transaction-scoped advisory lock
// (pg_advisory_xact_lock) for the length of fn: the database every replica
// already shares is the one arbiter they all agree on, whatever file
// system they share files over, and the lock goes away with the
// transaction, or with the connection if the replica dies. fn must not use
// the lock's transaction; its own queries go through the pool as usual.
//
// On SQLite it only runs fn: a SQLite database belongs to one server
// process, so there is no other replica to exclude, and holding SQLite's
// one write lock for the length of fn would stall every other writer. The
// caller serialises its own goroutines.
func (s *Store) Exclusive(ctx context.Context, name string, fn func() error) error {
	if !s.postgres {
		return fn()
	}
	return s.tx(ctx, func(q *txq) error {
		if _, err := q.exec(ctx, `SELECT pg_advisory_xact_lock(?)`, lockKey(name)); err != nil {
			return fmt.Errorf("lock %q: %w", name, err)
		}
		return fn()
	})
}

// lockKey maps a lock name to PostgreSQL's 64-bit advisory lock key space.
func lockKey(name string) int64 {
	h := fnv.New64a()
	h.Write([]byte("aftercare:" + name))
	return int64(h.Sum64())
}
