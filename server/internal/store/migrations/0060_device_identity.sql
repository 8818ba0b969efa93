-- Device identity (issue 7): certificates from the device CA, and revocation.
-- A device enrolled with a certificate has no shared credential; its
-- devices.token_hash holds 'cert:' || id, which no credential hashes to.
ALTER TABLE devices ADD COLUMN revoked_at TEXT;
ALTER TABLE devices ADD COLUMN revoked_reason TEXT NOT NULL DEFAULT '';

CREATE TABLE device_certs (
    serial     TEXT PRIMARY KEY, -- hex, lower case
    device_id  TEXT NOT NULL REFERENCES devices(id),
    not_before TEXT NOT NULL,
    not_after  TEXT NOT NULL,
    issued_at  TEXT NOT NULL
);
CREATE INDEX device_certs_device ON device_certs (device_id);
