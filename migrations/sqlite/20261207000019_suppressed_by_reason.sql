-- A message's report counts its suppressed deliveries by reason (no address, opted out,
-- quiet hours…). Read from this index alone: a broadcast to 100,000 guardians may have
-- tens of thousands of them, and reading each one's row took most of the report's time.
CREATE INDEX deliveries_suppressed ON deliveries (message_id, suppressed_reason) WHERE state = 'SUPPRESSED';
