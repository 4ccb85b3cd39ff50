-- How many of a message's deliveries were written on each channel in each state (CREATED,
-- or SUPPRESSED when the guardian could not be reached): one row per chunk of a send,
-- written with the deliveries in the same transaction. With message_moves they give a
-- message's deliveries per channel and state now — what it started with, plus what moved
-- in, less what moved out — without reading every delivery of a broadcast. Rows are only
-- ever inserted.
CREATE TABLE message_starts (
    id          INTEGER PRIMARY KEY,
    message_id  TEXT NOT NULL REFERENCES messages (id),
    district_id TEXT NOT NULL,
    channel     TEXT NOT NULL,
    state       TEXT NOT NULL,
    n           INTEGER NOT NULL CHECK (n > 0)
);
CREATE INDEX message_starts_by_message ON message_starts (message_id);

-- What each message started with: its deliveries now, less the moves recorded since.
INSERT INTO message_starts (message_id, district_id, channel, state, n)
SELECT message_id, district_id, channel, state, sum(n) FROM (
    SELECT message_id, district_id, channel, state, count(*) AS n FROM deliveries
    GROUP BY message_id, district_id, channel, state
    UNION ALL
    SELECT message_id, district_id, channel, to_state, -sum(n) FROM message_moves
    GROUP BY message_id, district_id, channel, to_state
    UNION ALL
    SELECT message_id, district_id, channel, from_state, sum(n) FROM message_moves
    GROUP BY message_id, district_id, channel, from_state
) AS changes
GROUP BY message_id, district_id, channel, state
HAVING sum(n) > 0;
