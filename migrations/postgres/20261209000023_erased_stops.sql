-- Carrier STOPs of guardians erased on request, kept only as a one-way hash of the
-- number (core/src/store/guardian_data.rs): an erased number that opted out is never
-- texted again, even when a roster import brings it back.
CREATE TABLE erased_stops (
    district_id     uuid NOT NULL REFERENCES districts (id),
    address_hash    bytea NOT NULL CHECK (length(address_hash) = 32),
    created_at      timestamptz NOT NULL,
    PRIMARY KEY (district_id, address_hash)
);
