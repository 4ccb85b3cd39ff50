//! What an import did, row by row where a row could not be taken as it was.

use std::collections::BTreeMap;

use serde::Serialize;

/// Rejections and warnings kept in a report; beyond this they are only counted, so that a
/// bundle of nothing but bad rows still gives a report of bounded size.
pub const MAX_LISTED: usize = 10_000;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EntityCounts {
    pub created: u64,
    pub updated: u64,
    pub deleted: u64,
    pub unchanged: u64,
    pub rejected: u64,
    /// Rows of kinds Tidings does not use (departments, aides, …).
    pub ignored: u64,
}

/// A row not imported (`Rejection`) or imported without one of its values (a warning).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RowProblem {
    pub file: &'static str,
    /// 1-based line of the file where the row starts; the header is line 1.
    pub line: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sourced_id: Option<String>,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    /// Counts per entity: schools, students, guardians, staff, classes, enrollments, …
    pub entities: BTreeMap<&'static str, EntityCounts>,
    /// Rows that were not imported, and why.
    pub rejected: Vec<RowProblem>,
    /// Rows imported without a value that could not be used (an invalid phone number).
    pub warnings: Vec<RowProblem>,
    /// How many rejections and warnings were not listed (beyond [`MAX_LISTED`]).
    pub unlisted: u64,
    /// Rows read per file.
    pub rows_read: BTreeMap<&'static str, u64>,
}

impl ImportReport {
    pub fn counts(&mut self, entity: &'static str) -> &mut EntityCounts {
        self.entities.entry(entity).or_default()
    }

    pub fn reject(&mut self, entity: &'static str, problem: RowProblem) {
        self.counts(entity).rejected += 1;
        if self.rejected.len() < MAX_LISTED {
            self.rejected.push(problem);
        } else {
            self.unlisted += 1;
        }
    }

    pub fn warn(&mut self, problem: RowProblem) {
        if self.warnings.len() < MAX_LISTED {
            self.warnings.push(problem);
        } else {
            self.unlisted += 1;
        }
    }

    /// The whole report as a fixed-width table, for the CLI.
    pub fn summary_table(&self) -> String {
        let mut out = format!(
            "{:<12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            "entity", "created", "updated", "deleted", "unchanged", "rejected", "ignored"
        );
        for (entity, c) in &self.entities {
            out.push_str(&format!(
                "{:<12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
                entity, c.created, c.updated, c.deleted, c.unchanged, c.rejected, c.ignored
            ));
        }
        out
    }
}
