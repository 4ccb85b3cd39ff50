-- The next free offset of each (lane, partition) of the log. A fan-out takes its offsets
-- by incrementing the head rows of the partitions it writes to; the row stays locked until
-- the fan-out commits, so entries of one partition become visible in offset order.
CREATE TABLE log_heads (
    lane            TEXT NOT NULL CHECK (lane IN ('emergency', 'normal', 'bulk')),
    partition       INTEGER NOT NULL CHECK (partition >= 0),
    next_offset     INTEGER NOT NULL CHECK (next_offset >= 0),
    PRIMARY KEY (lane, partition)
);
