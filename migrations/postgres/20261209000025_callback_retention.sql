-- How long a district keeps providers' reports on its deliveries in the callback inbox
-- (core/src/retention.rs; NULL keeps the default). An applied report carries its
-- delivery's district; refused requests belong to none and keep the install's retention.
ALTER TABLE districts ADD COLUMN retain_callbacks_days integer CHECK (retain_callbacks_days > 0);
CREATE INDEX callback_inbox_district_received ON callback_inbox (district_id, received_at)
    WHERE district_id IS NOT NULL;
