//! The dispatcher: reads the partitioned delivery log in offset order, owns partitions by
//! lease, sends through the channel adapters, and records every attempt and outcome before
//! committing an offset. It never decides a transition itself: `tidings_core::delivery::next`
//! does.
