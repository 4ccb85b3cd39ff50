-- Multi-district installs: operators are staff who manage districts (create, rename,
-- suspend) on top of their own district's role; a suspended district's staff cannot
-- sign in or use the API until it is resumed.
ALTER TABLE staff ADD COLUMN operator BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE districts ADD COLUMN suspended_at TIMESTAMPTZ;

-- The install's first administrator (of its first district) operates it.
UPDATE staff SET operator = TRUE WHERE id = (
    SELECT s.id FROM staff s JOIN districts d ON d.id = s.district_id
    WHERE s.role = 'district_admin' AND s.disabled_at IS NULL
    ORDER BY d.created_at, d.id, s.created_at, s.id LIMIT 1
);
