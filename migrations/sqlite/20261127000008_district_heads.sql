-- Fairness between districts inside a lane: a partition is read district by district, so a
-- small district's message is not stuck behind a large district's broadcast. Per
-- (lane, partition, district) the offset of its last entry, written by the fan-out while
-- it holds the partition's head row; and an index to read one district's entries of a
-- partition in offset order.
CREATE TABLE log_district_heads (
    lane            TEXT NOT NULL CHECK (lane IN ('emergency', 'normal', 'bulk')),
    partition       INTEGER NOT NULL CHECK (partition >= 0),
    district_id     TEXT NOT NULL REFERENCES districts (id),
    last_offset     INTEGER NOT NULL CHECK (last_offset >= 0),
    PRIMARY KEY (lane, partition, district_id)
);

INSERT INTO log_district_heads (lane, partition, district_id, last_offset)
SELECT lane, partition, district_id, max("offset") FROM log_entries
GROUP BY lane, partition, district_id;

CREATE INDEX log_entries_district ON log_entries (lane, partition, district_id, "offset");
