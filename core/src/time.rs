//! The one source of "now". Timestamps are UTC with microsecond precision: what
//! PostgreSQL keeps, so that a value written and read back compares equal on both stores.

use chrono::{DateTime, SubsecRound, Utc};

pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}
