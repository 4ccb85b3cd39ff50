-- Deleting a recipient (a purge, an erasure) checks that no delivery still refers to it;
-- without an index SQLite found those by district alone, reading every delivery of the
-- district for each recipient deleted (a purge of a 100,000-guardian broadcast's
-- recipients read about 10^11 rows). Updates never change recipient_id, so on SQLite
-- the index costs only the insert. (PostgreSQL rewrites every index on a delivery's
-- state change; it does without.)
CREATE INDEX deliveries_recipient ON deliveries (recipient_id);
