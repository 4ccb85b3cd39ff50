-- Deliveries coming due are read district by district (each district a fair share of
-- what one look reads), so the index that finds them is ordered by district first.
DROP INDEX deliveries_due;
CREATE INDEX deliveries_due ON deliveries (district_id, next_attempt_at)
    WHERE state IN ('CREATED', 'QUEUED') AND next_attempt_at IS NOT NULL;
