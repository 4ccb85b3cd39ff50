-- How long a district keeps what it sends and hears: messages with their recipients,
-- deliveries, events and attempts; guardians' replies; the audit log. NULL keeps the
-- product's default (core/src/retention.rs), which also holds the minimums.
ALTER TABLE districts ADD COLUMN retain_messages_days INTEGER CHECK (retain_messages_days > 0);
ALTER TABLE districts ADD COLUMN retain_replies_days INTEGER CHECK (retain_replies_days > 0);
ALTER TABLE districts ADD COLUMN retain_audit_days INTEGER CHECK (retain_audit_days > 0);

-- The purge finds a district's old replies by time.
CREATE INDEX inbound_messages_district_received ON inbound_messages (district_id, received_at);
