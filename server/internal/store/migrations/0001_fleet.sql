-- Sites, devices, releases, rollouts and device reports: the walking skeleton.
-- Portable SQL: runs unchanged on SQLite and PostgreSQL. IDs are text made by
-- the server; times are UTC text in store.timeLayout, which sorts in time order.

CREATE TABLE sites (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    organisation TEXT NOT NULL,
    created_at   TEXT NOT NULL
);

CREATE TABLE enrollment_tokens (
    token_hash TEXT PRIMARY KEY,
    site_id    TEXT NOT NULL REFERENCES sites(id),
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used_at    TEXT,
    device_id  TEXT
);

CREATE TABLE releases (
    id          TEXT PRIMARY KEY,
    product     TEXT NOT NULL,
    version     TEXT NOT NULL,
    target_path TEXT NOT NULL UNIQUE,
    manifest    TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    UNIQUE (product, version)
);

CREATE TABLE devices (
    id                TEXT PRIMARY KEY,
    site_id           TEXT NOT NULL REFERENCES sites(id),
    serial            TEXT NOT NULL,
    model             TEXT NOT NULL,
    hardware_revision TEXT NOT NULL,
    installed_version TEXT NOT NULL,
    token_hash        TEXT NOT NULL UNIQUE,
    state             TEXT NOT NULL,
    state_reason      TEXT NOT NULL,
    state_release_id  TEXT REFERENCES releases(id),
    last_seq          BIGINT NOT NULL,
    last_seen         TEXT,
    enrolled_at       TEXT NOT NULL
);
CREATE INDEX devices_site ON devices (site_id);

CREATE TABLE rollouts (
    id         TEXT PRIMARY KEY,
    release_id TEXT NOT NULL REFERENCES releases(id),
    selector   TEXT NOT NULL,
    created_at TEXT NOT NULL
);

-- One current assignment per device: the release it should run.
CREATE TABLE assignments (
    device_id   TEXT PRIMARY KEY REFERENCES devices(id),
    rollout_id  TEXT NOT NULL REFERENCES rollouts(id),
    release_id  TEXT NOT NULL REFERENCES releases(id),
    assigned_at TEXT NOT NULL
);

-- Every accepted state report, once: (device_id, seq) de-duplicates redeliveries.
CREATE TABLE device_reports (
    device_id   TEXT NOT NULL REFERENCES devices(id),
    seq         BIGINT NOT NULL,
    state       TEXT NOT NULL,
    running     TEXT NOT NULL,
    target      TEXT NOT NULL,
    version     TEXT NOT NULL,
    reason      TEXT NOT NULL,
    dropped     BIGINT NOT NULL,
    reported_at TEXT NOT NULL,
    received_at TEXT NOT NULL,
    PRIMARY KEY (device_id, seq)
);
