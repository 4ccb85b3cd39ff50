-- Link keys in use, by fingerprint (never the key): a process whose key differs from the
-- one the others sign with refuses to start instead of sending links nobody can open.
CREATE TABLE link_keys (
    key_id          integer PRIMARY KEY CHECK (key_id BETWEEN 1 AND 255),
    fingerprint     text NOT NULL,
    created_at      timestamptz NOT NULL
);

-- One-time sign-in codes for the guardian app, sent to a contact point. Only a hash of
-- the code is kept; a code is good once, for minutes, for a few tries.
CREATE TABLE guardian_sign_ins (
    id              uuid PRIMARY KEY,
    channel         text NOT NULL CHECK (channel IN ('sms', 'email')),
    address         text NOT NULL,
    code_hash       text NOT NULL,
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    expires_at      timestamptz NOT NULL,
    used_at         timestamptz,
    created_at      timestamptz NOT NULL
);
CREATE INDEX guardian_sign_ins_address ON guardian_sign_ins (channel, address, created_at);

-- App sessions. A session belongs to the contact point that signed in: it sees the
-- guardians that contact point belongs to while it stays active.
CREATE TABLE guardian_sessions (
    id              uuid PRIMARY KEY,
    channel         text NOT NULL CHECK (channel IN ('sms', 'email')),
    address         text NOT NULL,
    secret_hash     text NOT NULL,
    created_at      timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    revoked_at      timestamptz
);
