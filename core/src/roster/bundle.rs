//! Where a OneRoster bundle comes from: a directory of CSV files, or a zip of them (as
//! SIS exports arrive), which is unpacked to a private temporary directory first so that
//! every file can be streamed, and read twice where the import needs two passes.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use super::ImportError;

/// The files of a OneRoster 1.1 CSV bundle that Tidings reads.
pub const FILES: [&str; 8] = [
    "manifest.csv",
    "orgs.csv",
    "academicSessions.csv",
    "courses.csv",
    "classes.csv",
    "users.csv",
    "enrollments.csv",
    "demographics.csv",
];

/// An opened bundle.
pub struct Bundle {
    dir: PathBuf,
    /// Keeps an unpacked zip alive for as long as the bundle.
    _unpacked: Option<tempfile::TempDir>,
}

impl Bundle {
    /// Opens a directory, or a `.zip` file (recognised by its content, not its name).
    pub fn open(path: &Path) -> Result<Self, ImportError> {
        if path.is_dir() {
            return Ok(Self {
                dir: path.to_owned(),
                _unpacked: None,
            });
        }
        let file = File::open(path)
            .map_err(|e| ImportError::Bundle(format!("cannot open {}: {e}", path.display())))?;
        Self::from_zip(file)
    }

    /// Unpacks the bundle's known files from a zip. Entries may sit at the root or under
    /// one folder; nothing else is extracted, so names in the archive can never write
    /// outside the temporary directory.
    pub fn from_zip(reader: impl Read + std::io::Seek) -> Result<Self, ImportError> {
        let mut archive = zip::ZipArchive::new(reader)
            .map_err(|e| ImportError::Bundle(format!("not a directory or a zip file: {e}")))?;
        let unpacked = tempfile::tempdir()
            .map_err(|e| ImportError::Bundle(format!("temporary directory: {e}")))?;
        for index in 0..archive.len() {
            let mut entry = archive
                .by_index(index)
                .map_err(|e| ImportError::Bundle(format!("zip entry {index}: {e}")))?;
            if entry.is_dir() {
                continue;
            }
            let path = entry
                .name()
                .map_err(|e| ImportError::Bundle(format!("zip entry {index}: {e}")))?
                .into_owned();
            let name = path.rsplit('/').next().unwrap_or_default();
            let depth = path.matches('/').count();
            let Some(known) = FILES.iter().find(|f| f.eq_ignore_ascii_case(name)) else {
                continue;
            };
            if depth > 1 {
                continue;
            }
            let mut out = File::create(unpacked.path().join(known))
                .map_err(|e| ImportError::Bundle(format!("unpacking {known}: {e}")))?;
            std::io::copy(&mut entry, &mut out)
                .map_err(|e| ImportError::Bundle(format!("unpacking {known}: {e}")))?;
        }
        Ok(Self {
            dir: unpacked.path().to_owned(),
            _unpacked: Some(unpacked),
        })
    }

    /// A bundle file, if present (names compared without regard to case).
    pub fn file(&self, name: &str) -> Result<Option<BufReader<File>>, ImportError> {
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| ImportError::Bundle(format!("cannot read {}: {e}", self.dir.display())))?;
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .eq_ignore_ascii_case(name)
            {
                let file = File::open(entry.path())
                    .map_err(|e| ImportError::Bundle(format!("cannot open {name}: {e}")))?;
                return Ok(Some(BufReader::with_capacity(256 * 1024, file)));
            }
        }
        Ok(None)
    }
}
