//! Channel adapters: one module per provider (Twilio, Kannel, SMTP, APNs, FCM), each
//! carrying the delivery's idempotency key the way that provider deduplicates, and
//! classifying every outcome. Adapters know nothing about the log or the store.
