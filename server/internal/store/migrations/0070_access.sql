-- Access: organisations owning sites, users with roles, API tokens, the
-- hash-chained audit log, and leases for scheduled work.

-- An organisation is a hospital (or group of hospitals) that owns sites.
CREATE TABLE organisations (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);

-- Sites made before organisations existed: one organisation per distinct
-- name they carried, and "Default organisation" for those without one.
INSERT INTO organisations (id, name, created_at)
    SELECT DISTINCT 'org-' || organisation, organisation, '2026-01-01T00:00:00.000000Z' FROM sites WHERE organisation <> '';
INSERT INTO organisations (id, name, created_at)
    SELECT 'default', 'Default organisation', '2026-01-01T00:00:00.000000Z'
    WHERE NOT EXISTS (SELECT 1 FROM organisations WHERE name = 'Default organisation');

-- SQLite cannot add a NOT NULL column with a foreign key; the store always
-- sets it. sites.organisation keeps the organisation's name for display.
ALTER TABLE sites ADD COLUMN organisation_id TEXT REFERENCES organisations(id);
UPDATE sites SET organisation = 'Default organisation' WHERE organisation = '';
UPDATE sites SET organisation_id = (SELECT o.id FROM organisations o WHERE o.name = sites.organisation);
CREATE INDEX sites_organisation ON sites (organisation_id);

-- A person or tool with one role. Hospital IT is scoped to one
-- organisation (organisation_id) or to the sites in user_sites.
CREATE TABLE users (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    role            TEXT NOT NULL,
    organisation_id TEXT REFERENCES organisations(id),
    created_at      TEXT NOT NULL,
    disabled_at     TEXT
);

CREATE TABLE user_sites (
    user_id TEXT NOT NULL REFERENCES users(id),
    site_id TEXT NOT NULL REFERENCES sites(id),
    PRIMARY KEY (user_id, site_id)
);

-- API tokens: only the SHA-256 of the 256-bit secret is kept.
CREATE TABLE api_tokens (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users(id),
    name       TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    expires_at TEXT,
    revoked_at TEXT
);
CREATE INDEX api_tokens_user ON api_tokens (user_id);

-- Append-only, hash-chained: hash = SHA-256 of the canonical encoding of
-- the entry including prev_hash (package audit). seq is gapless from 1.
CREATE TABLE audit_log (
    seq       BIGINT PRIMARY KEY,
    at        TEXT NOT NULL,
    actor     TEXT NOT NULL,
    role      TEXT NOT NULL,
    action    TEXT NOT NULL,
    object    TEXT NOT NULL,
    outcome   TEXT NOT NULL,
    reason    TEXT NOT NULL,
    details   TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);

-- A lease names the one replica that runs a piece of scheduled work.
CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
