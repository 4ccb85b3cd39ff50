-- Tidings schema, PostgreSQL dialect. migrations/sqlite/ holds the same schema for SQLite;
-- the two must stay equivalent (the store conformance suite runs against both).
--
-- Every table carries district_id: a district is a tenant and every query is scoped by it.
-- Timestamps are written by the application (UTC, microsecond precision), never defaulted.

CREATE TABLE districts (
    id                          uuid PRIMARY KEY,
    sourced_id                  text UNIQUE,
    name                        text NOT NULL,
    default_language            text NOT NULL DEFAULT 'en',
    timezone                    text NOT NULL DEFAULT 'UTC',
    retention_days              integer CHECK (retention_days > 0),
    max_recipients_per_message  integer CHECK (max_recipients_per_message > 0),
    max_messages_per_hour       integer CHECK (max_messages_per_hour > 0),
    created_at                  timestamptz NOT NULL,
    deleted_at                  timestamptz
);

CREATE TABLE schools (
    id                  uuid PRIMARY KEY,
    district_id         uuid NOT NULL REFERENCES districts (id),
    sourced_id          text,
    name                text NOT NULL,
    timezone            text NOT NULL DEFAULT 'UTC',
    -- Quiet hours as minutes after local midnight; start > end wraps past midnight.
    quiet_start_minute  smallint CHECK (quiet_start_minute BETWEEN 0 AND 1439),
    quiet_end_minute    smallint CHECK (quiet_end_minute BETWEEN 0 AND 1439),
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    deleted_at          timestamptz,
    UNIQUE (district_id, sourced_id),
    UNIQUE (district_id, id)
);

CREATE TABLE staff (
    id              uuid PRIMARY KEY,
    district_id     uuid NOT NULL REFERENCES districts (id),
    sourced_id      text,
    -- Stored lower-cased by the application; sign-in is by email across districts.
    email           text NOT NULL UNIQUE CHECK (email = lower(email)),
    display_name    text NOT NULL,
    role            text NOT NULL CHECK (role IN ('district_admin', 'school_admin', 'teacher', 'viewer')),
    -- argon2id PHC string; NULL until the staff member is invited and sets one.
    password_hash   text,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    disabled_at     timestamptz,
    UNIQUE (district_id, sourced_id),
    UNIQUE (district_id, id)
);

-- The schools a school admin (or a teacher, for reports) is assigned to.
CREATE TABLE staff_schools (
    district_id uuid NOT NULL,
    staff_id    uuid NOT NULL,
    school_id   uuid NOT NULL,
    PRIMARY KEY (staff_id, school_id),
    FOREIGN KEY (district_id, staff_id) REFERENCES staff (district_id, id),
    FOREIGN KEY (district_id, school_id) REFERENCES schools (district_id, id)
);

CREATE TABLE api_tokens (
    id              uuid PRIMARY KEY,
    district_id     uuid NOT NULL,
    staff_id        uuid NOT NULL,
    name            text NOT NULL,
    -- SHA-256 of the token's secret part; the token itself is never stored.
    secret_hash     bytea NOT NULL CHECK (length(secret_hash) = 32),
    created_at      timestamptz NOT NULL,
    last_used_at    timestamptz,
    expires_at      timestamptz,
    revoked_at      timestamptz,
    FOREIGN KEY (district_id, staff_id) REFERENCES staff (district_id, id)
);
CREATE INDEX api_tokens_staff ON api_tokens (staff_id);

CREATE TABLE students (
    id              uuid PRIMARY KEY,
    district_id     uuid NOT NULL REFERENCES districts (id),
    school_id       uuid NOT NULL,
    sourced_id      text,
    given_name      text NOT NULL,
    family_name     text NOT NULL,
    grade           text,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    deleted_at      timestamptz,
    UNIQUE (district_id, sourced_id),
    UNIQUE (district_id, id),
    FOREIGN KEY (district_id, school_id) REFERENCES schools (district_id, id)
);
CREATE INDEX students_school_grade ON students (school_id, grade) WHERE deleted_at IS NULL;

CREATE TABLE classes (
    id              uuid PRIMARY KEY,
    district_id     uuid NOT NULL REFERENCES districts (id),
    school_id       uuid NOT NULL,
    sourced_id      text,
    title           text NOT NULL,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    deleted_at      timestamptz,
    UNIQUE (district_id, sourced_id),
    UNIQUE (district_id, id),
    FOREIGN KEY (district_id, school_id) REFERENCES schools (district_id, id)
);

CREATE TABLE enrollments (
    id              uuid PRIMARY KEY,
    district_id     uuid NOT NULL REFERENCES districts (id),
    class_id        uuid NOT NULL,
    sourced_id      text,
    role            text NOT NULL CHECK (role IN ('student', 'teacher')),
    student_id      uuid,
    staff_id        uuid,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    deleted_at      timestamptz,
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
    id                  uuid PRIMARY KEY,
    district_id         uuid NOT NULL REFERENCES districts (id),
    sourced_id          text,
    given_name          text NOT NULL,
    family_name         text NOT NULL,
    preferred_language  text,
    quiet_start_minute  smallint CHECK (quiet_start_minute BETWEEN 0 AND 1439),
    quiet_end_minute    smallint CHECK (quiet_end_minute BETWEEN 0 AND 1439),
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    deleted_at          timestamptz,
    UNIQUE (district_id, sourced_id),
    UNIQUE (district_id, id)
);

CREATE TABLE guardian_students (
    district_id     uuid NOT NULL,
    guardian_id     uuid NOT NULL,
    student_id      uuid NOT NULL,
    relationship    text,
    created_at      timestamptz NOT NULL,
    deleted_at      timestamptz,
    PRIMARY KEY (guardian_id, student_id),
    FOREIGN KEY (district_id, guardian_id) REFERENCES guardians (district_id, id),
    FOREIGN KEY (district_id, student_id) REFERENCES students (district_id, id)
);
CREATE INDEX guardian_students_student ON guardian_students (student_id) WHERE deleted_at IS NULL;

CREATE TABLE contact_points (
    id              uuid PRIMARY KEY,
    district_id     uuid NOT NULL,
    guardian_id     uuid NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('sms', 'email', 'push')),
    -- E.164 number, lower-cased email address, or device token.
    address         text NOT NULL,
    push_platform   text CHECK (push_platform IN ('apns', 'fcm')),
    verified        boolean NOT NULL DEFAULT false,
    active          boolean NOT NULL DEFAULT true,
    -- Why it is not deliverable (hard bounce, unregistered device, invalid number).
    inactive_reason text,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    CHECK ((kind = 'push') = (push_platform IS NOT NULL)),
    UNIQUE (guardian_id, kind, address),
    UNIQUE (district_id, id),
    FOREIGN KEY (district_id, guardian_id) REFERENCES guardians (district_id, id)
);
CREATE INDEX contact_points_address ON contact_points (kind, address);

CREATE TABLE opt_outs (
    id              uuid PRIMARY KEY,
    district_id     uuid NOT NULL,
    guardian_id     uuid NOT NULL,
    channel         text NOT NULL CHECK (channel IN ('sms', 'email', 'push')),
    -- carrier: an SMS STOP, which even emergencies respect.
    source          text NOT NULL CHECK (source IN ('carrier', 'guardian', 'staff', 'complaint')),
    address         text,
    created_at      timestamptz NOT NULL,
    revoked_at      timestamptz,
    FOREIGN KEY (district_id, guardian_id) REFERENCES guardians (district_id, id)
);
CREATE UNIQUE INDEX opt_outs_active ON opt_outs (guardian_id, channel, source) WHERE revoked_at IS NULL;

CREATE TABLE messages (
    id                  uuid PRIMARY KEY,
    district_id         uuid NOT NULL REFERENCES districts (id),
    author_id           uuid NOT NULL,
    kind                text NOT NULL CHECK (kind IN ('emergency', 'attendance', 'general')),
    lane                text NOT NULL CHECK (lane IN ('emergency', 'normal', 'bulk')),
    delivery_guarantee  text NOT NULL CHECK (delivery_guarantee IN ('at_least_once', 'at_most_once')),
    subject             text NOT NULL,
    body                text NOT NULL,
    -- {"es": {"subject": "...", "body": "..."}, ...}
    translations        jsonb NOT NULL DEFAULT '{}',
    -- ["sms", "email", "push"]
    channels            jsonb NOT NULL,
    -- The audience as asked for, kept for the report.
    audience            jsonb NOT NULL,
    requires_ack        boolean NOT NULL,
    ack_deadline        timestamptz,
    scheduled_at        timestamptz,
    renotify_of         uuid REFERENCES messages (id),
    created_at          timestamptz NOT NULL,
    cancelled_at        timestamptz,
    UNIQUE (district_id, id),
    FOREIGN KEY (district_id, author_id) REFERENCES staff (district_id, id)
);
CREATE INDEX messages_district_created ON messages (district_id, created_at DESC);

CREATE TABLE recipients (
    id              uuid PRIMARY KEY,
    district_id     uuid NOT NULL,
    message_id      uuid NOT NULL,
    guardian_id     uuid NOT NULL,
    language        text NOT NULL,
    ack_state       text NOT NULL CHECK (ack_state IN ('not_required', 'pending', 'acked')),
    acked_at        timestamptz,
    -- The channel or surface the acknowledgment came through: sms, email, push, link, app.
    ack_via         text,
    CHECK ((ack_state = 'acked') = (acked_at IS NOT NULL)),
    UNIQUE (message_id, guardian_id),
    UNIQUE (district_id, id),
    FOREIGN KEY (district_id, message_id) REFERENCES messages (district_id, id),
    FOREIGN KEY (district_id, guardian_id) REFERENCES guardians (district_id, id)
);
CREATE INDEX recipients_open ON recipients (message_id) WHERE ack_state = 'pending';
CREATE INDEX recipients_guardian ON recipients (guardian_id);

CREATE TABLE deliveries (
    id                  uuid PRIMARY KEY,
    district_id         uuid NOT NULL,
    message_id          uuid NOT NULL,
    recipient_id        uuid NOT NULL,
    guardian_id         uuid NOT NULL,
    channel             text NOT NULL CHECK (channel IN ('sms', 'email', 'push')),
    contact_point_id    uuid,
    address             text,
    state               text NOT NULL CHECK (state IN ('CREATED', 'QUEUED', 'SENT', 'DELIVERED', 'ACKED', 'FAILED', 'CANCELLED', 'SUPPRESSED')),
    -- Compare-and-swap guard: every transition is WHERE version = <seen>, version + 1.
    version             bigint NOT NULL DEFAULT 0 CHECK (version >= 0),
    attempts            integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at     timestamptz,
    -- Carried on every provider call so that the provider deduplicates a resend.
    idempotency_key     text NOT NULL UNIQUE,
    provider            text,
    provider_ref        text,
    last_error          text,
    suppressed_reason   text,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    queued_at           timestamptz,
    sent_at             timestamptz,
    delivered_at        timestamptz,
    acked_at            timestamptz,
    failed_at           timestamptz,
    cancelled_at        timestamptz,
    suppressed_at       timestamptz,
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
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    district_id     uuid NOT NULL,
    delivery_id     uuid NOT NULL,
    from_state      text NOT NULL CHECK (from_state IN ('CREATED', 'QUEUED', 'SENT', 'DELIVERED', 'ACKED', 'FAILED', 'CANCELLED', 'SUPPRESSED')),
    to_state        text NOT NULL CHECK (to_state IN ('CREATED', 'QUEUED', 'SENT', 'DELIVERED', 'ACKED', 'FAILED', 'CANCELLED', 'SUPPRESSED')),
    -- The version the delivery reached with this transition: unique, so two writers
    -- can never both record the same step.
    version         bigint NOT NULL,
    at              timestamptz NOT NULL,
    actor_kind      text NOT NULL CHECK (actor_kind IN ('dispatcher', 'provider', 'guardian', 'staff', 'system')),
    -- dispatcher process id, provider:event-id, guardian link/app, staff id.
    actor_ref       text NOT NULL,
    detail          text,
    UNIQUE (delivery_id, version),
    FOREIGN KEY (district_id, delivery_id) REFERENCES deliveries (district_id, id)
);

-- One row per provider call, recorded before the call and completed after it.
CREATE TABLE delivery_attempts (
    district_id     uuid NOT NULL,
    delivery_id     uuid NOT NULL,
    attempt         integer NOT NULL CHECK (attempt >= 1),
    idempotency_key text NOT NULL,
    provider        text NOT NULL,
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz,
    outcome         text NOT NULL CHECK (outcome IN ('in_flight', 'sent', 'transient', 'permanent', 'in_doubt', 'suppressed')),
    error           text,
    PRIMARY KEY (delivery_id, attempt),
    FOREIGN KEY (district_id, delivery_id) REFERENCES deliveries (district_id, id)
);

-- The durable internal log: entries per (lane, partition) in offset order.
CREATE TABLE log_entries (
    lane            text NOT NULL CHECK (lane IN ('emergency', 'normal', 'bulk')),
    partition       integer NOT NULL CHECK (partition >= 0),
    "offset"        bigint NOT NULL CHECK ("offset" >= 0),
    district_id     uuid NOT NULL,
    delivery_id     uuid NOT NULL,
    created_at      timestamptz NOT NULL,
    PRIMARY KEY (lane, partition, "offset"),
    FOREIGN KEY (district_id, delivery_id) REFERENCES deliveries (district_id, id)
);
CREATE INDEX log_entries_delivery ON log_entries (delivery_id);

CREATE TABLE consumer_offsets (
    consumer_group  text NOT NULL,
    lane            text NOT NULL CHECK (lane IN ('emergency', 'normal', 'bulk')),
    partition       integer NOT NULL CHECK (partition >= 0),
    -- Every entry with offset <= committed_offset has a durable outcome.
    committed_offset bigint NOT NULL CHECK (committed_offset >= -1),
    fencing_token   bigint NOT NULL,
    updated_at      timestamptz NOT NULL,
    PRIMARY KEY (consumer_group, lane, partition)
);

CREATE TABLE partition_leases (
    lane            text NOT NULL CHECK (lane IN ('emergency', 'normal', 'bulk')),
    partition       integer NOT NULL CHECK (partition >= 0),
    owner           text NOT NULL,
    -- Increases with every change of owner; writes carrying an older token are refused.
    fencing_token   bigint NOT NULL CHECK (fencing_token >= 1),
    expires_at      timestamptz NOT NULL,
    PRIMARY KEY (lane, partition)
);

-- Provider webhooks, stored before they are answered.
CREATE TABLE callback_inbox (
    id              uuid PRIMARY KEY,
    provider        text NOT NULL,
    event_id        text NOT NULL,
    district_id     uuid REFERENCES districts (id),
    received_at     timestamptz NOT NULL,
    payload         jsonb NOT NULL,
    status          text NOT NULL CHECK (status IN ('pending', 'applied', 'ignored', 'rejected')),
    applied_at      timestamptz,
    outcome         text,
    UNIQUE (provider, event_id)
);
CREATE INDEX callback_inbox_pending ON callback_inbox (received_at) WHERE status = 'pending';

CREATE TABLE idempotency_keys (
    scope           text NOT NULL,
    key             text NOT NULL,
    request_hash    bytea NOT NULL,
    -- NULL while the first request with this key is still being handled.
    response_status smallint,
    response_body   bytea,
    created_at      timestamptz NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

CREATE TABLE audit_log (
    id              uuid PRIMARY KEY,
    district_id     uuid NOT NULL REFERENCES districts (id),
    staff_id        uuid,
    action          text NOT NULL,
    target_kind     text,
    target_id       text,
    detail          jsonb NOT NULL DEFAULT '{}',
    at              timestamptz NOT NULL
);
CREATE INDEX audit_log_district_at ON audit_log (district_id, at DESC);
