-- The W3C trace context of the request that wrote a message, when traces are exported:
-- the spans of its deliveries' sends link back to it.
ALTER TABLE messages ADD COLUMN traceparent TEXT;
