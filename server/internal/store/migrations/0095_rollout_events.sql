-- What the rollout scheduler did by itself, for the release engineer and
-- the sites' IT to see: a wave opened, the rollout halted or completed, a
-- site's deferral nears its end (reminder) or ended. Human decisions go to
-- the audit log instead. A step writes its events in the transaction that
-- writes the step, and key names an event once per rollout (e.g. "wave/2",
-- "deferral-ended/site-a/2026-01-02T03:04:05Z"): a step based on a stale
-- read, e.g. of a second replica, fails instead of recording twice.
CREATE TABLE rollout_events (
    rollout_id TEXT NOT NULL REFERENCES rollouts(id),
    seq        BIGINT NOT NULL, -- 1, 2, ... per rollout, in the order recorded
    event_key  TEXT NOT NULL,
    kind       TEXT NOT NULL,
    site_id    TEXT NOT NULL,
    detail     TEXT NOT NULL,
    at         TEXT NOT NULL,
    PRIMARY KEY (rollout_id, event_key)
);
CREATE INDEX rollout_events_site ON rollout_events (site_id, at);
