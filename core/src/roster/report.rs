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
    /// Rows of kinds Tidings does not use (departments, aides, …), and demographics rows,
    /// which are checked but not kept.
    pub ignored: u64,
    /// `tobedeleted` rows naming nothing in the directory (never imported, or another
    /// district's): there was nothing to delete.
    pub skipped: u64,
}

/// Deletions of one kind of row, against how many were live before the import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Deletions {
    pub entity: &'static str,
    /// Live rows of the district before the import.
    pub before: u64,
    /// Rows the import deletes (`tobedeleted`, or missing from a `bulk` file).
    pub deleted: u64,
}

/// The kinds of row an import deletes more of than the limit allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OverLimit {
    /// The most an import may delete of any kind without being forced, in percent of
    /// the live rows before it.
    pub max_delete_percent: u8,
    pub entities: Vec<Deletions>,
}

impl std::fmt::Display for OverLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let listed: Vec<String> = self
            .entities
            .iter()
            .map(|d| format!("{} of {} {}", d.deleted, d.before, d.entity))
            .collect();
        write!(
            f,
            "it would delete {}: more than {}% of the directory",
            listed.join(", "),
            self.max_delete_percent
        )
    }
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
    /// A dry run: everything was done in the import's transaction and rolled back.
    pub dry_run: bool,
    /// The import was told to go ahead whatever it deletes.
    pub forced: bool,
    /// Deletions over the limit: set when a dry run would be held back, or a forced
    /// import went ahead anyway. (An import that is held back is not committed; its
    /// report comes with the error.)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub over_delete_limit: Option<OverLimit>,
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
            "{:<12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            "entity",
            "created",
            "updated",
            "deleted",
            "unchanged",
            "rejected",
            "ignored",
            "skipped"
        );
        for (entity, c) in &self.entities {
            out.push_str(&format!(
                "{:<12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
                entity,
                c.created,
                c.updated,
                c.deleted,
                c.unchanged,
                c.rejected,
                c.ignored,
                c.skipped
            ));
        }
        out
    }
}
