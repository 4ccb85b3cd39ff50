//! The `tidings` application: configuration and the commands of the CLI, wired from the
//! library crates. `main.rs` only parses arguments and calls into here.

pub mod bench;
pub mod commands;
pub mod config;
pub mod fuzzing;
pub mod import;
pub mod outbox;
pub mod traces;

pub use config::Config;
pub mod metrics;
