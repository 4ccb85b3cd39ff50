//! The provider sandbox: speaks the Twilio, APNs and FCM HTTP APIs on loopback, sends
//! their signed callbacks, and injects faults on demand, for demos, staging and tests.
