-- Tidings schema, SQLite dialect. migrations/postgres/ holds the same schema for PostgreSQL;
-- the two must stay equivalent (the store conformance suite runs against both).
-- Ids are hyphenated UUID text, timestamps RFC 3339 text in UTC, booleans 0/1, JSON text.
--
-- Every table carries district_id: a district is a tenant and every query is scoped by it.
-- Timestamps are written by the application (UTC, microsecond precision), never defaulted.

CREATE TABLE districts (
    id                          TEXT PRIMARY KEY,
    sourced_id                  TEXT UNIQUE,
    name                        TEXT NOT NULL,
    default_language            TEXT NOT NULL DEFAULT 'en',
    timezone                    TEXT NOT NULL DEFAULT 'UTC',
    retention_days              INTEGER CHECK (retention_days > 0),
    max_recipients_per_message  INTEGER CHECK (max_recipients_per_message > 0),
    max_messages_per_hour       INTEGER CHECK (max_messages_per_hour > 0),
    created_at                  TEXT NOT NULL,
    deleted_at                  TEXT
);

CREATE TABLE schools (
    id                  TEXT PRIMARY KEY,
    district_id         TEXT NOT NULL REFERENCES districts (id),
    sourced_id          TEXT,
    name                TEXT NOT NULL,
    timezone            TEXT NOT NULL DEFAULT 'UTC',
    -- Quiet hours as minutes after local midnight; start > end wraps past midnight.
    quiet_start_minute  INTEGER CHECK (quiet_start_minute BETWEEN 0 AND 1439),
    quiet_end_minute    INTEGER CHECK (quiet_end_minute BETWEEN 0 AND 1439),
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL,
    deleted_at          TEXT,
    UNIQUE (district_id, sourced_id),
    UNIQUE (district_id, id)
);

CREATE TABLE staff (
    id              TEXT PRIMARY KEY,
    district_id     TEXT NOT NULL REFERENCES districts (id),
    sourced_id      TEXT,
    -- Stored lower-cased by the application; sign-in is by email across districts.
    email           TEXT NOT NULL UNIQUE CHECK (email = lower(email)),
    display_name    TEXT NOT NULL,
    role            TEXT NOT NULL CHECK (role IN ('district_admin', 'school_admin', 'teacher', 'viewer')),
    -- argon2id PHC string; NULL until the staff member is invited and sets one.
    password_hash   TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    disabled_at     TEXT,
    UNIQUE (district_id, sourced_id),
    UNIQUE (district_id, id)
);

-- The schools a school admin (or a teacher, for reports) is assigned to.
CREATE TABLE staff_schools (
    district_id TEXT NOT NULL,
    staff_id    TEXT NOT NULL,
    school_id   TEXT NOT NULL,
    PRIMARY KEY (staff_id, school_id),
    FOREIGN KEY (district_id, staff_id) REFERENCES staff (district_id, id),
    FOREIGN KEY (district_id, school_id) REFERENCES schools (district_id, id)
);

CREATE TABLE api_tokens (
    id              TEXT PRIMARY KEY,
    district_id     TEXT NOT NULL,
    staff_id        TEXT NOT NULL,
    name            TEXT NOT NULL,
    -- SHA-256 of the token's secret part; the token itself is never stored.
    secret_hash     BLOB NOT NULL CHECK (length(secret_hash) = 32),
    created_at      TEXT NOT NULL,
    last_used_at    TEXT,
    expires_at      TEXT,
    revoked_at      TEXT,
    FOREIGN KEY (district_id, staff_id) REFERENCES staff (district_id, id)
);
CREATE INDEX api_tokens_staff ON api_tokens (staff_id);

CREATE TABLE students (
    id              TEXT PRIMARY KEY,
    district_id     TEXT NOT NULL REFERENCES districts (id),
    school_id       TEXT NOT NULL,
    sourced_id      TEXT,
    given_name      TEXT NOT NULL,
    family_name     TEXT NOT NULL,
    grade           TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    deleted_at      TEXT,
    UNIQUE (district_id, sourced_id),
    UNIQUE (district_id, id),
    FOREIGN KEY (district_id, school_id) REFERENCES schools (district_id, id)
);
CREATE INDEX students_school_grade ON students (school_id, grade) WHERE deleted_at IS NULL;

CREATE TABLE classes (
    id              TEXT PRIMARY KEY,
    district_id     TEXT NOT NULL REFERENCES districts (id),
    school_id       TEXT NOT NULL,
    sourced_id      TEXT,
    title           TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    deleted_at      TEXT,
    UNIQUE (district_id, sourced_id),
    UNIQUE (district_id, id),
    FOREIGN KEY (district_id, school_id) REFERENCES schools (district_id, id)
);

CREATE TABLE enrollments (
    id              TEXT PRIMARY KEY,
    district_id     TEXT NOT NULL REFERENCES districts (id),
    class_id        TEXT NOT NULL,
    sourced_id      TEXT,
    role            TEXT NOT NULL CHECK (role IN ('student', 'teacher')),
    student_id      TEXT,
    staff_id        TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    deleted_at      TEXT,
    CHECK ((role = 'student') = (student_id IS NOT NULL) AND (role = 'teacher') = (staff_id IS NOT NULL)),
    UNIQUE (district_id, sourced_id),
    FOREIGN KEY (district_id, class_id) REFERENCES classes (district_id, id),
    FOREIGN KEY (district_id, student_id) REFERENCES students (district_id, id),
    FOREIGN KEY (district_id, staff_id) REFERENCES staff (district_id, id)
);
CREATE INDEX enrollments_class ON enrollments (class_id) WHERE deleted_at IS NULL;
CREATE INDEX enrollments_staff ON enrollments (staff_id) WHERE deleted_at IS NULL;
CREATE INDEX enrollments_student ON enrollments (student_id) WHERE deleted_at IS NULL;

CREATE TABLE guardians (
    id                  TEXT PRIMARY KEY,
    district_id         TEXT NOT NULL REFERENCES districts (id),
    sourced_id          TEXT,
    given_name          TEXT NOT NULL,
    family_name         TEXT NOT NULL,
    preferred_language  TEXT,
    quiet_start_minute  INTEGER CHECK (quiet_start_minute BETWEEN 0 AND 1439),
    quiet_end_minute    INTEGER CHECK (quiet_end_minute BETWEEN 0 AND 1439),
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL,
    deleted_at          TEXT,
    UNIQUE (district_id, sourced_id),
    UNIQUE (district_id, id)
);

CREATE TABLE guardian_students (
    district_id     TEXT NOT NULL,
    guardian_id     TEXT NOT NULL,
    student_id      TEXT NOT NULL,
    relationship    TEXT,
    created_at      TEXT NOT NULL,
    deleted_at      TEXT,
    PRIMARY KEY (guardian_id, student_id),
    FOREIGN KEY (district_id, guardian_id) REFERENCES guardians (district_id, id),
    FOREIGN KEY (district_id, student_id) REFERENCES students (district_id, id)
);
CREATE INDEX guardian_students_student ON guardian_students (student_id) WHERE deleted_at IS NULL;

CREATE TABLE contact_points (
    id              TEXT PRIMARY KEY,
    district_id     TEXT NOT NULL,
    guardian_id     TEXT NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('sms', 'email', 'push')),
    -- E.164 number, lower-cased email address, or device token.
    address         TEXT NOT NULL,
    push_platform   TEXT CHECK (push_platform IN ('apns', 'fcm')),
    verified        INTEGER NOT NULL DEFAULT 0 CHECK (verified IN (0, 1)),
    active          INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
    -- Why it is not deliverable (hard bounce, unregistered device, invalid number).
    inactive_reason TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    CHECK ((kind = 'push') = (push_platform IS NOT NULL)),
    UNIQUE (guardian_id, kind, address),
    UNIQUE (district_id, id),
    FOREIGN KEY (district_id, guardian_id) REFERENCES guardians (district_id, id)
);
CREATE INDEX contact_points_address ON contact_points (kind, address);

CREATE TABLE opt_outs (
    id              TEXT PRIMARY KEY,
    district_id     TEXT NOT NULL,
    guardian_id     TEXT NOT NULL,
    channel         TEXT NOT NULL CHECK (channel IN ('sms', 'email', 'push')),
    -- carrier: an SMS STOP, which even emergencies respect.
    source          TEXT NOT NULL CHECK (source IN ('carrier', 'guardian', 'staff', 'complaint')),
    address         TEXT,
    created_at      TEXT NOT NULL,
    revoked_at      TEXT,
    FOREIGN KEY (district_id, guardian_id) REFERENCES guardians (district_id, id)
);
CREATE UNIQUE INDEX opt_outs_active ON opt_outs (guardian_id, channel, source) WHERE revoked_at IS NULL;

CREATE TABLE messages (
    id                  TEXT PRIMARY KEY,
    district_id         TEXT NOT NULL REFERENCES districts (id),
    author_id           TEXT NOT NULL,
    kind                TEXT NOT NULL CHECK (kind IN ('emergency', 'attendance', 'general')),
    lane                TEXT NOT NULL CHECK (lane IN ('emergency', 'normal', 'bulk')),
    delivery_guarantee  TEXT NOT NULL CHECK (delivery_guarantee IN ('at_least_once', 'at_most_once')),
    subject             TEXT NOT NULL,
    body                TEXT NOT NULL,
    -- {"es": {"subject": "...", "body": "..."}, ...}
    translations        TEXT NOT NULL DEFAULT '{}',
    -- ["sms", "email", "push"]
    channels            TEXT NOT NULL,
    -- The audience as asked for, kept for the report.
    audience            TEXT NOT NULL,
    requires_ack        INTEGER NOT NULL CHECK (requires_ack IN (0, 1)),
    ack_deadline        TEXT,
    scheduled_at        TEXT,
    renotify_of         TEXT REFERENCES messages (id),
    created_at          TEXT NOT NULL,
    cancelled_at        TEXT,
    UNIQUE (district_id, id),
    FOREIGN KEY (district_id, author_id) REFERENCES staff (district_id, id)
);
CREATE INDEX messages_district_created ON messages (district_id, created_at DESC);

CREATE TABLE recipients (
    id              TEXT PRIMARY KEY,
    district_id     TEXT NOT NULL,
    message_id      TEXT NOT NULL,
    guardian_id     TEXT NOT NULL,
    language        TEXT NOT NULL,
    ack_state       TEXT NOT NULL CHECK (ack_state IN ('not_required', 'pending', 'acked')),
    acked_at        TEXT,
    -- The channel or surface the acknowledgment came through: sms, email, push, link, app.
    ack_via         TEXT,
    CHECK ((ack_state = 'acked') = (acked_at IS NOT NULL)),
    UNIQUE (message_id, guardian_id),
    UNIQUE (district_id, id),
    FOREIGN KEY (district_id, message_id) REFERENCES messages (district_id, id),
    FOREIGN KEY (district_id, guardian_id) REFERENCES guardians (district_id, id)
);
CREATE INDEX recipients_open ON recipients (message_id) WHERE ack_state = 'pending';
CREATE INDEX recipients_guardian ON recipients (guardian_id);

CREATE TABLE deliveries (
    id                  TEXT PRIMARY KEY,
    district_id         TEXT NOT NULL,
    message_id          TEXT NOT NULL,
    recipient_id        TEXT NOT NULL,
    guardian_id         TEXT NOT NULL,
    channel             TEXT NOT NULL CHECK (channel IN ('sms', 'email', 'push')),
    contact_point_id    TEXT,
    address             TEXT,
    state               TEXT NOT NULL CHECK (state IN ('CREATED', 'QUEUED', 'SENT', 'DELIVERED', 'ACKED', 'FAILED', 'CANCELLED', 'SUPPRESSED')),
    -- Compare-and-swap guard: every transition is WHERE version = <seen>, version + 1.
    version             INTEGER NOT NULL DEFAULT 0 CHECK (version >= 0),
    attempts            INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at     TEXT,
    -- Carried on every provider call so that the provider deduplicates a resend.
    idempotency_key     TEXT NOT NULL UNIQUE,
    provider            TEXT,
    provider_ref        TEXT,
    last_error          TEXT,
    suppressed_reason   TEXT,
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL,
    queued_at           TEXT,
    sent_at             TEXT,
    delivered_at        TEXT,
    acked_at            TEXT,
    failed_at           TEXT,
    cancelled_at        TEXT,
    suppressed_at       TEXT,
    UNIQUE (message_id, guardian_id, channel),
    UNIQUE (district_id, id),
    FOREIGN KEY (district_id, message_id) REFERENCES messages (district_id, id),
    FOREIGN KEY (district_id, recipient_id) REFERENCES recipients (district_id, id),
    FOREIGN KEY (district_id, guardian_id) REFERENCES guardians (district_id, id),
    FOREIGN KEY (district_id, contact_point_id) REFERENCES contact_points (district_id, id)
);
CREATE UNIQUE INDEX deliveries_provider_ref ON deliveries (provider, provider_ref) WHERE provider_ref IS NOT NULL;
-- Reports: counts by state and channel per message.
CREATE INDEX deliveries_message_state ON deliveries (message_id, state, channel);
-- Retries due, and the dead-letter view.
CREATE INDEX deliveries_retry_due ON deliveries (next_attempt_at) WHERE state = 'QUEUED' AND next_attempt_at IS NOT NULL;
CREATE INDEX deliveries_dead_letters ON deliveries (district_id, failed_at DESC) WHERE state = 'FAILED';
-- Per-guardian order: a later message waits behind a retrying one on the same channel.
CREATE INDEX deliveries_guardian_channel ON deliveries (guardian_id, channel, created_at);

-- The audit trail: one row per transition, never updated.
CREATE TABLE delivery_events (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    district_id     TEXT NOT NULL,
    delivery_id     TEXT NOT NULL,
    from_state      TEXT NOT NULL CHECK (from_state IN ('CREATED', 'QUEUED', 'SENT', 'DELIVERED', 'ACKED', 'FAILED', 'CANCELLED', 'SUPPRESSED')),
    to_state        TEXT NOT NULL CHECK (to_state IN ('CREATED', 'QUEUED', 'SENT', 'DELIVERED', 'ACKED', 'FAILED', 'CANCELLED', 'SUPPRESSED')),
    -- The version the delivery reached with this transition: unique, so two writers
    -- can never both record the same step.
    version         INTEGER NOT NULL,
    at              TEXT NOT NULL,
    actor_kind      TEXT NOT NULL CHECK (actor_kind IN ('dispatcher', 'provider', 'guardian', 'staff', 'system')),
    -- dispatcher process id, provider:event-id, guardian link/app, staff id.
    actor_ref       TEXT NOT NULL,
    detail          TEXT,
    UNIQUE (delivery_id, version),
    FOREIGN KEY (district_id, delivery_id) REFERENCES deliveries (district_id, id)
);

-- One row per provider call, recorded before the call and completed after it.
CREATE TABLE delivery_attempts (
    district_id     TEXT NOT NULL,
    delivery_id     TEXT NOT NULL,
    attempt         INTEGER NOT NULL CHECK (attempt >= 1),
    idempotency_key TEXT NOT NULL,
    provider        TEXT NOT NULL,
    started_at      TEXT NOT NULL,
    finished_at     TEXT,
    outcome         TEXT NOT NULL CHECK (outcome IN ('in_flight', 'sent', 'transient', 'permanent', 'in_doubt', 'suppressed')),
    error           TEXT,
    PRIMARY KEY (delivery_id, attempt),
    FOREIGN KEY (district_id, delivery_id) REFERENCES deliveries (district_id, id)
);

-- The durable internal log: entries per (lane, partition) in offset order.
CREATE TABLE log_entries (
    lane            TEXT NOT NULL CHECK (lane IN ('emergency', 'normal', 'bulk')),
    partition       INTEGER NOT NULL CHECK (partition >= 0),
    "offset"        INTEGER NOT NULL CHECK ("offset" >= 0),
    district_id     TEXT NOT NULL,
    delivery_id     TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    PRIMARY KEY (lane, partition, "offset"),
    FOREIGN KEY (district_id, delivery_id) REFERENCES deliveries (district_id, id)
);
CREATE INDEX log_entries_delivery ON log_entries (delivery_id);

CREATE TABLE consumer_offsets (
    consumer_group  TEXT NOT NULL,
    lane            TEXT NOT NULL CHECK (lane IN ('emergency', 'normal', 'bulk')),
    partition       INTEGER NOT NULL CHECK (partition >= 0),
    -- Every entry with offset <= committed_offset has a durable outcome.
    committed_offset INTEGER NOT NULL CHECK (committed_offset >= -1),
    fencing_token   INTEGER NOT NULL,
    updated_at      TEXT NOT NULL,
    PRIMARY KEY (consumer_group, lane, partition)
);

CREATE TABLE partition_leases (
    lane            TEXT NOT NULL CHECK (lane IN ('emergency', 'normal', 'bulk')),
    partition       INTEGER NOT NULL CHECK (partition >= 0),
    owner           TEXT NOT NULL,
    -- Increases with every change of owner; writes carrying an older token are refused.
    fencing_token   INTEGER NOT NULL CHECK (fencing_token >= 1),
    expires_at      TEXT NOT NULL,
    PRIMARY KEY (lane, partition)
);

-- Provider webhooks, stored before they are answered.
CREATE TABLE callback_inbox (
    id              TEXT PRIMARY KEY,
    provider        TEXT NOT NULL,
    event_id        TEXT NOT NULL,
    district_id     TEXT REFERENCES districts (id),
    received_at     TEXT NOT NULL,
    payload         TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'applied', 'ignored', 'rejected')),
    applied_at      TEXT,
    outcome         TEXT,
    UNIQUE (provider, event_id)
);
CREATE INDEX callback_inbox_pending ON callback_inbox (received_at) WHERE status = 'pending';

CREATE TABLE idempotency_keys (
    scope           TEXT NOT NULL,
    key             TEXT NOT NULL,
    request_hash    BLOB NOT NULL,
    -- NULL while the first request with this key is still being handled.
    response_status INTEGER,
    response_body   BLOB,
    created_at      TEXT NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

CREATE TABLE audit_log (
    id              TEXT PRIMARY KEY,
    district_id     TEXT NOT NULL REFERENCES districts (id),
    staff_id        TEXT,
    action          TEXT NOT NULL,
    target_kind     TEXT,
    target_id       TEXT,
    detail          TEXT NOT NULL DEFAULT '{}',
    at              TEXT NOT NULL
);
CREATE INDEX audit_log_district_at ON audit_log (district_id, at DESC);
