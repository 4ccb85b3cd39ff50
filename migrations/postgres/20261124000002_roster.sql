-- Roster imports (OneRoster 1.1 CSV). Imported rows keep a hash of the fields the import
-- sets, so that re-importing an unchanged row writes nothing.

ALTER TABLE schools ADD COLUMN roster_hash TEXT;
ALTER TABLE students ADD COLUMN roster_hash TEXT;
ALTER TABLE guardians ADD COLUMN roster_hash TEXT;
ALTER TABLE staff ADD COLUMN roster_hash TEXT;
ALTER TABLE classes ADD COLUMN roster_hash TEXT;
ALTER TABLE enrollments ADD COLUMN roster_hash TEXT;

-- Where a contact point came from: an import never deactivates what a guardian registered
-- in the app or staff entered by hand.
ALTER TABLE contact_points ADD COLUMN source TEXT NOT NULL DEFAULT 'roster'
    CHECK (source IN ('roster', 'staff', 'app'));

CREATE TABLE imports (
    id              uuid PRIMARY KEY,
    district_id     uuid NOT NULL REFERENCES districts (id),
    staff_id        uuid,
    format          TEXT NOT NULL CHECK (format IN ('oneroster')),
    source_name     TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz,
    -- The per-entity counts and per-row rejections, as returned to whoever ran it.
    report          jsonb,
    error           TEXT
);
CREATE INDEX imports_district_started ON imports (district_id, started_at DESC);
