-- A delivery's message, guardian and recipient are checked by one foreign key instead of
-- three. PostgreSQL checks a foreign key row by row, locking the referenced row each time,
-- so the fan-out paid three lookups and three row locks per delivery (one on the message
-- row, one on the guardian row, one on the recipient row). The recipient already
-- references its message and guardian; referencing it by all four columns also checks
-- that a delivery's message and guardian are its recipient's, which the three separate
-- keys did not.
ALTER TABLE recipients
    ADD CONSTRAINT recipients_reached UNIQUE (district_id, message_id, guardian_id, id);

ALTER TABLE deliveries
    ADD CONSTRAINT deliveries_recipient
    FOREIGN KEY (district_id, message_id, guardian_id, recipient_id)
    REFERENCES recipients (district_id, message_id, guardian_id, id);

ALTER TABLE deliveries
    DROP CONSTRAINT deliveries_district_id_message_id_fkey,
    DROP CONSTRAINT deliveries_district_id_recipient_id_fkey,
    DROP CONSTRAINT deliveries_district_id_guardian_id_fkey;

-- Nothing references recipients by (district_id, id) any more.
ALTER TABLE recipients DROP CONSTRAINT recipients_district_id_id_key;

ALTER TABLE log_entries DROP CONSTRAINT log_entries_district_id_delivery_id_fkey;
