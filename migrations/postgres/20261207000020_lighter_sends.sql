-- Writing less per send. Every delivery sent writes two events and an attempt; each of
-- those rows checked its foreign key to the delivery (a lookup and a row lock per row),
-- and every batch's per-second move counts locked its message's row the same way, so
-- that dispatchers sending one broadcast side by side shared a lock on it.
--
-- These rows are written only in the statement that moves or attempts their delivery,
-- from the delivery row that statement has just locked and read (the one write path of
-- the state machine, `transitions::apply`, and the dispatcher's attempts), and deliveries
-- and messages are never deleted while their events are kept: the constraints checked
-- what the write path already makes true, at a cost on every send.
ALTER TABLE delivery_events DROP CONSTRAINT delivery_events_delivery;
ALTER TABLE delivery_attempts DROP CONSTRAINT delivery_attempts_delivery;
ALTER TABLE message_moves DROP CONSTRAINT message_moves_message_id_fkey;

-- Nothing looks a delivery up by its provider's reference (a provider's report names
-- the delivery itself); the unique index cost each send an index entry and a check.
DROP INDEX deliveries_provider_ref;

-- An attempt is written before its provider call and closed after it: room left on each
-- page written from now on lets the closing update stay on the page (heap-only), writing
-- no index entry. Pages already full stay so until the table is rewritten.
ALTER TABLE delivery_attempts SET (fillfactor = 80);
