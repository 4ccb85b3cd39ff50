-- Indexes in the order the web admin pages read, so that a page of a broadcast to
-- 100,000 guardians reads a page of rows, not the whole broadcast.

-- The dead-letters page: a district's failed deliveries, newest id first.
CREATE INDEX deliveries_failed_by_id ON deliveries (district_id, id DESC) WHERE state = 'FAILED';

-- A message's report: its recipients 100 at a time in id order, all of them or those
-- not yet acknowledged (the same partial index counts them).
CREATE INDEX recipients_by_message ON recipients (message_id, id);
DROP INDEX recipients_open;
CREATE INDEX recipients_open ON recipients (message_id, id) WHERE ack_state = 'pending';
