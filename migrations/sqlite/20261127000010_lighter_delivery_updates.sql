-- Every change of a delivery's state writes each of the deliveries' indexes that hold the
-- row: two such changes per send. A guardian's deliveries on a channel are looked up only
-- to find an earlier one waiting for a retry (QUEUED): the index holds only those, so a
-- send no longer writes it.
DROP INDEX deliveries_guardian_channel;
CREATE INDEX deliveries_queued_guardian ON deliveries (guardian_id, channel, created_at)
    WHERE state = 'QUEUED';
