-- When an operator last moved a partition's offset back (core/src/store/rewind.rs): a
-- partition is rewound at most once in a while.
ALTER TABLE consumer_offsets ADD COLUMN rewound_at TEXT;
