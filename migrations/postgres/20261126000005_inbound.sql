-- SMS guardians send to the district's numbers: STOP/START/HELP, acknowledgments and
-- replies, kept as they arrived (the provider's id makes a repeat recognisable).
CREATE TABLE inbound_messages (
    id                  uuid PRIMARY KEY,
    provider            text NOT NULL,
    provider_message_id text NOT NULL,
    district_id         uuid REFERENCES districts (id),
    guardian_id         uuid,
    from_address        text NOT NULL,
    to_address          text NOT NULL,
    body                text NOT NULL,
    -- stop, start, help, ack, or NULL for a reply.
    keyword             text CHECK (keyword IN ('stop', 'start', 'help', 'ack')),
    received_at         timestamptz NOT NULL,
    UNIQUE (provider, provider_message_id)
);
CREATE INDEX inbound_messages_guardian ON inbound_messages (guardian_id, received_at);
