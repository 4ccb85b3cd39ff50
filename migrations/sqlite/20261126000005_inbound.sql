-- SMS guardians send to the district's numbers: STOP/START/HELP, acknowledgments and
-- replies, kept as they arrived (the provider's id makes a repeat recognisable).
CREATE TABLE inbound_messages (
    id                  TEXT PRIMARY KEY,
    provider            TEXT NOT NULL,
    provider_message_id TEXT NOT NULL,
    district_id         TEXT REFERENCES districts (id),
    guardian_id         TEXT,
    from_address        TEXT NOT NULL,
    to_address          TEXT NOT NULL,
    body                TEXT NOT NULL,
    -- stop, start, help, ack, or NULL for a reply.
    keyword             TEXT CHECK (keyword IN ('stop', 'start', 'help', 'ack')),
    received_at         TEXT NOT NULL,
    UNIQUE (provider, provider_message_id)
);
CREATE INDEX inbound_messages_guardian ON inbound_messages (guardian_id, received_at);
