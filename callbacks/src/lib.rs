//! Provider webhooks and inbound SMS: verified, stored in the callback inbox before they
//! are answered, then applied to deliveries through the state machine.
