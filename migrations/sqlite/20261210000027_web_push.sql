-- A browser's Web Push subscription is a device like an APNs or FCM token: the guardian
-- app registers it as push_platform 'webpush' (the token is ENDPOINT#p256dh=…&auth=…).
--
-- SQLite cannot change a CHECK in place, so the table is rebuilt within the migration's
-- transaction. Deliveries refer to contact points: with foreign keys deferred, dropping
-- the table counts every delivery left without its contact point, and putting each row
-- back under the same name counts it off again; the commit fails (and nothing changes)
-- unless every one is back.
PRAGMA defer_foreign_keys = ON;
CREATE TABLE contact_points_before_web_push AS SELECT * FROM contact_points;
DROP TABLE contact_points;
CREATE TABLE contact_points (
    id              TEXT PRIMARY KEY,
    district_id     TEXT NOT NULL,
    guardian_id     TEXT NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('sms', 'email', 'push')),
    -- E.164 number, lower-cased email address, or device token.
    address         TEXT NOT NULL,
    push_platform   TEXT CHECK (push_platform IN ('apns', 'fcm', 'webpush')),
    verified        INTEGER NOT NULL DEFAULT 0 CHECK (verified IN (0, 1)),
    active          INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
    -- Why it is not deliverable (hard bounce, unregistered device, invalid number).
    inactive_reason TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    source          TEXT NOT NULL DEFAULT 'roster' CHECK (source IN ('roster', 'staff', 'app')),
    CHECK ((kind = 'push') = (push_platform IS NOT NULL)),
    UNIQUE (guardian_id, kind, address),
    UNIQUE (district_id, id),
    FOREIGN KEY (district_id, guardian_id) REFERENCES guardians (district_id, id)
);
INSERT INTO contact_points (id, district_id, guardian_id, kind, address, push_platform,
    verified, active, inactive_reason, created_at, updated_at, source)
SELECT id, district_id, guardian_id, kind, address, push_platform,
    verified, active, inactive_reason, created_at, updated_at, source
FROM contact_points_before_web_push;
DROP TABLE contact_points_before_web_push;
CREATE INDEX contact_points_address ON contact_points (kind, address);
