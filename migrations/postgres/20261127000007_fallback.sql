-- Fallback: a message may ask that a guardian who is not reached on one channel in time
-- be tried on the next (the app, then a text, then email). The planner adds a standby
-- delivery behind each delivery that has a next channel; it is due at that delivery's
-- deadline, or at once when that delivery fails, and goes only if that delivery did not
-- reach the guardian.
ALTER TABLE messages ADD COLUMN fallback_after_seconds integer CHECK (fallback_after_seconds > 0);
ALTER TABLE deliveries ADD COLUMN fallback_of uuid REFERENCES deliveries (id);
CREATE INDEX deliveries_fallback_of ON deliveries (fallback_of) WHERE fallback_of IS NOT NULL;

-- Whatever moves a delivery to FAILED or SUPPRESSED (the dispatcher, a provider's report),
-- its standby comes due in the same transaction.
CREATE FUNCTION fallback_due() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE deliveries SET next_attempt_at = NEW.updated_at
     WHERE fallback_of = NEW.id
       AND state IN ('CREATED', 'QUEUED')
       AND next_attempt_at > NEW.updated_at;
    RETURN NULL;
END
$$;
CREATE TRIGGER deliveries_fallback_due AFTER UPDATE OF state ON deliveries
    FOR EACH ROW
    WHEN (NEW.state IN ('FAILED', 'SUPPRESSED') AND OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION fallback_due();
