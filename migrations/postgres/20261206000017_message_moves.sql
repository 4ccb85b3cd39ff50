-- How many of a message's deliveries on a channel moved from one state to another in
-- each second: written by every batch of transitions beside its delivery_events rows, in
-- the same transaction, so that the report's chart of states over time reads a few rows
-- per batch instead of every event of a broadcast. Rows are only ever inserted (a batch
-- adds its own counts, never updates another's), so writers take no lock on them.
CREATE TABLE message_moves (
    id          bigserial PRIMARY KEY,
    message_id  uuid NOT NULL REFERENCES messages (id),
    district_id uuid NOT NULL,
    channel     text NOT NULL,
    from_state  text NOT NULL,
    to_state    text NOT NULL,
    second      bigint NOT NULL,
    n           bigint NOT NULL CHECK (n > 0)
);
CREATE INDEX message_moves_by_message ON message_moves (message_id);

INSERT INTO message_moves (message_id, district_id, channel, from_state, to_state, second, n)
SELECT d.message_id, d.district_id, d.channel, e.from_state, e.to_state,
       CAST(floor(extract(epoch FROM e.at)) AS BIGINT), count(*)
FROM delivery_events e JOIN deliveries d ON d.id = e.delivery_id
GROUP BY 1, 2, 3, 4, 5, 6;
