-- Device security events, alert rules and alerts (issue 7).
-- device_events shares the (device, seq) key space with device_reports: a
-- device numbers reports and events from one counter, so a seq missing from
-- both tables is a gap. site_id is copied from the device at ingestion so
-- site-scoped queries need no join.
CREATE TABLE device_events (
    device_id     TEXT NOT NULL REFERENCES devices(id),
    seq           BIGINT NOT NULL,
    site_id       TEXT NOT NULL,
    event_time    TEXT NOT NULL,
    source        TEXT NOT NULL,
    category      TEXT NOT NULL,
    severity      TEXT NOT NULL,
    severity_rank INTEGER NOT NULL,
    message       TEXT NOT NULL,
    event         TEXT NOT NULL, -- fields["event"], for alert rules
    fields        TEXT NOT NULL, -- JSON object
    dropped       BIGINT NOT NULL,
    received_at   TEXT NOT NULL,
    PRIMARY KEY (device_id, seq)
);
CREATE INDEX device_events_time ON device_events (event_time);
CREATE INDEX device_events_site_time ON device_events (site_id, event_time);
CREATE INDEX device_events_device_time ON device_events (device_id, event_time);

-- An alert rule: at least threshold events of a category (with at least
-- min_severity, and the field event = event when set) on one device within
-- window_seconds.
CREATE TABLE alert_rules (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL UNIQUE,
    category       TEXT NOT NULL,
    min_severity   TEXT NOT NULL,
    event          TEXT NOT NULL,
    threshold      INTEGER NOT NULL,
    window_seconds INTEGER NOT NULL,
    builtin        INTEGER NOT NULL,
    enabled        INTEGER NOT NULL,
    created_at     TEXT NOT NULL
);
INSERT INTO alert_rules (id, name, category, min_severity, event, threshold, window_seconds, builtin, enabled, created_at)
VALUES ('failed-logins', 'At least 5 failed logins on one device within 1 minute', 'auth', 'debug', 'login_failure', 5, 60, 1, 1, '2026-01-01T00:00:00.000000Z');
INSERT INTO alert_rules (id, name, category, min_severity, event, threshold, window_seconds, builtin, enabled, created_at)
VALUES ('verification-failure', 'Any update verification failure', 'integrity', 'error', '', 1, 60, 1, 1, '2026-01-01T00:00:00.000000Z');

-- One alert per rule and device and burst: events within the rule's window
-- of the alert's last event add to it instead of raising another.
CREATE TABLE alerts (
    id               TEXT PRIMARY KEY,
    rule_id          TEXT NOT NULL REFERENCES alert_rules(id),
    device_id        TEXT NOT NULL REFERENCES devices(id),
    site_id          TEXT NOT NULL,
    raised_at        TEXT NOT NULL,
    first_event_time TEXT NOT NULL,
    last_event_time  TEXT NOT NULL,
    last_seq         BIGINT NOT NULL,
    event_count      INTEGER NOT NULL,
    message          TEXT NOT NULL,
    acked_at         TEXT,
    acked_by         TEXT NOT NULL DEFAULT ''
);
CREATE INDEX alerts_site_raised ON alerts (site_id, raised_at);
CREATE INDEX alerts_rule_device ON alerts (rule_id, device_id, last_event_time);
