//! Roster imports: a district administrator imports the student information system's
//! OneRoster bundle, or tries one (a dry run reports what it would do and changes
//! nothing). The import, its history entry and its audit row commit together or not at
//! all; an import that would delete more of the directory than allowed is held back.

use super::{Refusal, ServiceError, Services};
use crate::roster::{self, Bundle, ImportError, ImportOptions, ImportReport};
use crate::{ImportId, Role, Staff};

/// A roster to import, as a front end received it.
#[derive(Debug, Clone, Copy)]
pub struct RosterUpload<'a> {
    pub bundle: &'a Bundle,
    /// Where it came from, for the history ("upload", a file name).
    pub source_name: &'a str,
    /// Import, report, and roll back.
    pub dry_run: bool,
    /// Go ahead whatever share of the directory the import deletes.
    pub force: bool,
    /// The most of any kind of row an import may delete unforced, in percent.
    pub max_delete_percent: u8,
}

/// What an import did.
#[derive(Debug, Clone)]
pub enum Imported {
    /// Committed, with its history entry.
    Recorded(ImportId, ImportReport),
    /// A dry run: what it would have done.
    DryRun(ImportReport),
}

impl Services {
    /// Imports `upload` into the caller's district; `progress` hears the rows read so far.
    pub async fn import_roster(
        &self,
        caller: &Staff,
        upload: RosterUpload<'_>,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<Imported, ServiceError> {
        if caller.role != Role::DistrictAdmin {
            return Err(Refusal::Forbidden.into());
        }
        let options = ImportOptions {
            default_region: self.default_phone_region.clone(),
            max_delete_percent: Some(upload.max_delete_percent),
            force: upload.force,
            dry_run: upload.dry_run,
            clock: self.clock.clone(),
        };
        let result = roster::import_recorded(
            self.store.as_ref(),
            caller.district_id,
            Some(caller.id),
            upload.bundle,
            upload.source_name,
            &options,
            progress,
        )
        .await;
        match result {
            Ok((Some(id), report)) => Ok(Imported::Recorded(id, report)),
            Ok((None, report)) => Ok(Imported::DryRun(report)),
            Err(ImportError::Store(error)) => Err(ServiceError::from(error)),
            Err(ImportError::HeldBack { over, report }) => Err(Refusal::ImportHeldBack {
                over: Box::new(over),
                report,
            }
            .into()),
            Err(other) => Err(Refusal::InvalidRoster(other.to_string()).into()),
        }
    }
}
