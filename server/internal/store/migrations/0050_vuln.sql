-- Vulnerability monitoring (issue 8): release SBOMs, feeds, findings,
-- dispositions with their history, supplier VEX, triage items and
-- notifications. Portable SQL as in 0001; lists are JSON text; booleans are
-- INTEGER 0/1.

-- The SBOM a release shipped with, once ingested (or why it could not be).
CREATE TABLE release_sboms (
    release_id   TEXT PRIMARY KEY REFERENCES releases(id),
    format       TEXT NOT NULL,
    spec_version TEXT NOT NULL,
    sha256       TEXT NOT NULL,
    components   BIGINT NOT NULL,
    warnings     TEXT NOT NULL,
    error        TEXT NOT NULL,
    ingested_at  TEXT NOT NULL
);

CREATE TABLE sbom_components (
    release_id TEXT NOT NULL REFERENCES releases(id),
    idx        BIGINT NOT NULL,
    ref        TEXT NOT NULL,
    name       TEXT NOT NULL,
    version    TEXT NOT NULL,
    purl       TEXT NOT NULL,
    cpes       TEXT NOT NULL,
    patched    TEXT NOT NULL,
    PRIMARY KEY (release_id, idx)
);

-- The hardware models a release is for, so "devices running release R"
-- is an index lookup: same model, installed_version = R's version.
CREATE TABLE release_models (
    release_id TEXT NOT NULL REFERENCES releases(id),
    model      TEXT NOT NULL,
    PRIMARY KEY (release_id, model)
);
CREATE INDEX release_models_model ON release_models (model);
CREATE INDEX devices_model_version ON devices (model, installed_version, site_id);

-- Advisories from OSV and NVD, whole, with the keys and CVEs they are
-- found by.
CREATE TABLE advisories (
    source   TEXT NOT NULL,
    id       TEXT NOT NULL,
    modified TEXT NOT NULL,
    data     TEXT NOT NULL,
    PRIMARY KEY (source, id)
);
CREATE TABLE advisory_keys (
    lookup TEXT NOT NULL,
    source TEXT NOT NULL,
    id     TEXT NOT NULL,
    PRIMARY KEY (lookup, source, id)
);
CREATE TABLE advisory_cves (
    cve    TEXT NOT NULL,
    source TEXT NOT NULL,
    id     TEXT NOT NULL,
    PRIMARY KEY (cve, source, id)
);

CREATE TABLE kev (
    cve        TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    date_added TEXT NOT NULL,
    due_date   TEXT NOT NULL,
    ransomware TEXT NOT NULL
);

CREATE TABLE epss (
    cve        TEXT PRIMARY KEY,
    score      DOUBLE PRECISION NOT NULL,
    percentile DOUBLE PRECISION NOT NULL
);

-- One row per feed: the last good import and the last attempt.
CREATE TABLE feeds (
    name            TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,
    source          TEXT NOT NULL,
    records         BIGINT NOT NULL,
    sha256          TEXT NOT NULL,
    version         TEXT NOT NULL,
    imported_at     TEXT,
    etag            TEXT NOT NULL,
    last_modified   TEXT NOT NULL,
    last_attempt_at TEXT,
    last_error      TEXT NOT NULL
);

-- A vulnerability in a component of a release, and the rules that matched.
CREATE TABLE findings (
    release_id        TEXT NOT NULL REFERENCES releases(id),
    component_idx     BIGINT NOT NULL,
    vuln_id           TEXT NOT NULL,
    component_name    TEXT NOT NULL,
    component_version TEXT NOT NULL,
    purl              TEXT NOT NULL,
    advisories        TEXT NOT NULL,
    rules             TEXT NOT NULL,
    evidence          TEXT NOT NULL,
    summary           TEXT NOT NULL,
    severity          TEXT NOT NULL,
    cvss              DOUBLE PRECISION NOT NULL,
    patched           INTEGER NOT NULL,
    first_seen        TEXT NOT NULL,
    digest            TEXT NOT NULL,
    PRIMARY KEY (release_id, component_idx, vuln_id)
);
CREATE INDEX findings_vuln ON findings (vuln_id);

-- One decision per vulnerability per product line (release_id ''), and
-- per-release overrides (release_id set).
CREATE TABLE dispositions (
    product        TEXT NOT NULL,
    vuln_id        TEXT NOT NULL,
    release_id     TEXT NOT NULL,
    status         TEXT NOT NULL,
    justification  TEXT NOT NULL,
    detail         TEXT NOT NULL,
    target_release TEXT NOT NULL,
    fixed_release  TEXT NOT NULL,
    source         TEXT NOT NULL,
    updated_by     TEXT NOT NULL,
    updated_at     TEXT NOT NULL,
    PRIMARY KEY (product, vuln_id, release_id)
);

-- Every change of a decision, append-only: who, when, why, from what.
CREATE TABLE disposition_history (
    id              TEXT PRIMARY KEY,
    product         TEXT NOT NULL,
    vuln_id         TEXT NOT NULL,
    release_id      TEXT NOT NULL,
    status          TEXT NOT NULL,
    justification   TEXT NOT NULL,
    detail          TEXT NOT NULL,
    target_release  TEXT NOT NULL,
    fixed_release   TEXT NOT NULL,
    previous_status TEXT NOT NULL,
    actor           TEXT NOT NULL,
    reason          TEXT NOT NULL,
    at              TEXT NOT NULL
);
CREATE INDEX disposition_history_vuln ON disposition_history (product, vuln_id, at);

-- Statements from suppliers' VEX documents, applied to matching components.
CREATE TABLE vex_statements (
    document      TEXT NOT NULL,
    idx           BIGINT NOT NULL,
    author        TEXT NOT NULL,
    vuln_id       TEXT NOT NULL,
    product       TEXT NOT NULL,
    status        TEXT NOT NULL,
    justification TEXT NOT NULL,
    detail        TEXT NOT NULL,
    imported_at   TEXT NOT NULL,
    PRIMARY KEY (document, idx)
);
CREATE INDEX vex_statements_vuln ON vex_statements (vuln_id);

-- A new serious finding waits for a human decision within its SLA.
CREATE TABLE triage_items (
    id        TEXT PRIMARY KEY,
    product   TEXT NOT NULL,
    vuln_id   TEXT NOT NULL,
    severity  TEXT NOT NULL,
    kev       INTEGER NOT NULL,
    epss      DOUBLE PRECISION NOT NULL,
    reasons   TEXT NOT NULL,
    releases  TEXT NOT NULL,
    opened_at TEXT NOT NULL,
    due_at    TEXT NOT NULL,
    closed_at TEXT,
    closed_by TEXT NOT NULL,
    UNIQUE (product, vuln_id)
);

-- Notifications to send (webhook, email), kept until delivered.
CREATE TABLE notifications (
    id         TEXT PRIMARY KEY,
    channel    TEXT NOT NULL,
    subject    TEXT NOT NULL,
    body       TEXT NOT NULL,
    attempts   BIGINT NOT NULL,
    last_error TEXT NOT NULL,
    created_at TEXT NOT NULL,
    sent_at    TEXT
);
