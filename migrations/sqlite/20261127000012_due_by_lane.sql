-- Inside a district's share of what comes due, emergencies go first: a district's own
-- scheduled newsletter coming due no longer holds up its emergency retries. A delivery
-- carries its message's lane (it never changes), and the index that finds what is due
-- is ordered by district, then lane. (SQLite keeps the default: it cannot drop one; every
-- insert names the lane.)
ALTER TABLE deliveries ADD COLUMN lane TEXT NOT NULL DEFAULT 'normal'
    CHECK (lane IN ('emergency', 'normal', 'bulk'));
UPDATE deliveries SET lane = (SELECT m.lane FROM messages m WHERE m.id = deliveries.message_id)
WHERE message_id IN (SELECT id FROM messages WHERE lane <> 'normal');
DROP INDEX deliveries_due;
CREATE INDEX deliveries_due ON deliveries (district_id, lane, next_attempt_at)
    WHERE state IN ('CREATED', 'QUEUED') AND next_attempt_at IS NOT NULL;
