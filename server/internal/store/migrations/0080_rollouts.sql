-- Staged rollouts (issue 6): the plan and progress of each rollout, the
-- devices of its cohort, device labels, site policies and the decisions of
-- hospital IT. A rollout made before this migration has no plan row and is
-- read as one finished wave of 100 %.

CREATE TABLE rollout_plans (
    rollout_id     TEXT PRIMARY KEY REFERENCES rollouts(id),
    plan           TEXT NOT NULL,
    status         TEXT NOT NULL,
    status_reason  TEXT NOT NULL,
    wave           INTEGER NOT NULL,
    wave_opened_at TEXT NOT NULL,
    settled_at     TEXT,
    fail_base      INTEGER NOT NULL,
    done_base      INTEGER NOT NULL,
    rate_state     TEXT NOT NULL,
    created_by     TEXT NOT NULL,
    updated_at     TEXT NOT NULL
);
CREATE INDEX rollout_plans_status ON rollout_plans (status);

-- One row per device of a rollout's cohort. rank is its place in the
-- deterministic selection order; wave is -1 until a wave selects it.
CREATE TABLE rollout_devices (
    rollout_id   TEXT NOT NULL REFERENCES rollouts(id),
    device_id    TEXT NOT NULL REFERENCES devices(id),
    site_id      TEXT NOT NULL,
    role         TEXT NOT NULL,
    rank         INTEGER NOT NULL,
    wave         INTEGER NOT NULL,
    state        TEXT NOT NULL,
    reason       TEXT NOT NULL,
    from_version TEXT NOT NULL,
    joined_at    TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (rollout_id, device_id)
);
CREATE INDEX rollout_devices_device ON rollout_devices (device_id, joined_at);
CREATE INDEX rollout_devices_site ON rollout_devices (site_id, state);

CREATE TABLE device_labels (
    device_id TEXT NOT NULL REFERENCES devices(id),
    name      TEXT NOT NULL,
    value     TEXT NOT NULL,
    PRIMARY KEY (device_id, name)
);
CREATE INDEX device_labels_value ON device_labels (name, value);

CREATE TABLE site_policies (
    site_id    TEXT PRIMARY KEY REFERENCES sites(id),
    approval   TEXT NOT NULL,
    timezone   TEXT NOT NULL,
    windows    TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

-- A hospital's decision on a rollout for one of its sites.
CREATE TABLE site_decisions (
    rollout_id     TEXT NOT NULL REFERENCES rollouts(id),
    site_id        TEXT NOT NULL REFERENCES sites(id),
    decision       TEXT NOT NULL,
    deferred_until TEXT,
    reason         TEXT NOT NULL,
    actor          TEXT NOT NULL,
    decided_at     TEXT NOT NULL,
    PRIMARY KEY (rollout_id, site_id)
);
