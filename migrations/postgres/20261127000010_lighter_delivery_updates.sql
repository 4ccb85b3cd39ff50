-- Every change of a delivery's state writes a new entry into each of the deliveries'
-- indexes (a state change can never be a heap-only update): two such changes per send,
-- each with two audit events. One index of deliveries is made smaller, one dropped, and
-- the events lose an index.

-- A guardian's deliveries on a channel are looked up only to find an earlier one waiting
-- for a retry (QUEUED): the index holds only those, so a send no longer writes it.
-- (SQLite keeps the whole index: it writes an index on update only when a column in it
-- changes, so the whole index cost a send nothing, where this one would cost two writes.)
DROP INDEX deliveries_guardian_channel;
CREATE INDEX deliveries_queued_guardian ON deliveries (guardian_id, channel, created_at)
    WHERE state = 'QUEUED';

-- The audit trail and the attempts reference their delivery by its primary key. The
-- (district_id, id) unique index existed only for them; the district they carry is copied
-- from the delivery row in the statement that writes them.
ALTER TABLE delivery_events
    DROP CONSTRAINT delivery_events_district_id_delivery_id_fkey,
    ADD CONSTRAINT delivery_events_delivery FOREIGN KEY (delivery_id) REFERENCES deliveries (id);
ALTER TABLE delivery_attempts
    DROP CONSTRAINT delivery_attempts_district_id_delivery_id_fkey,
    ADD CONSTRAINT delivery_attempts_delivery FOREIGN KEY (delivery_id) REFERENCES deliveries (id);
ALTER TABLE deliveries DROP CONSTRAINT deliveries_district_id_id_key;

-- An event is identified by its delivery and the version the delivery reached with it
-- (already unique); the generated id beside it was read by nothing and cost every event
-- a sequence step and an index entry.
ALTER TABLE delivery_events DROP COLUMN id;
ALTER TABLE delivery_events
    DROP CONSTRAINT delivery_events_delivery_id_version_key,
    ADD CONSTRAINT delivery_events_pkey PRIMARY KEY (delivery_id, version);
