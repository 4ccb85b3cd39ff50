-- The dispatcher finds deliveries whose time has come (retries, scheduled sends, quiet
-- hours that ended, attempts left unfinished by a stopped dispatcher) through this index,
-- never by scanning.
DROP INDEX deliveries_retry_due;
CREATE INDEX deliveries_due ON deliveries (next_attempt_at)
    WHERE state IN ('CREATED', 'QUEUED') AND next_attempt_at IS NOT NULL;

-- Live dispatchers, each renewing its row with its leases: every one of them takes a fair
-- share of the partitions (and hands back what is over its share when another starts).
CREATE TABLE dispatchers (
    owner       text PRIMARY KEY,
    expires_at  timestamptz NOT NULL
);

-- Attempts made before the delivery was last replayed from the dead letters: a replay
-- gets the whole retry schedule again.
ALTER TABLE deliveries ADD COLUMN attempt_base integer NOT NULL DEFAULT 0;

-- The idempotency key is the delivery's id as text: the primary key already makes it
-- unique, and every index is written again on each state change.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_idempotency_key_key;
