//! The staff web interface: server-rendered pages over the API crate's services, usable
//! without a JavaScript build step.
