//! Where a OneRoster bundle comes from: a directory of CSV files, or a zip of them (as
//! SIS exports arrive), which is unpacked to a private temporary directory first so that
//! every file can be streamed, and read twice where the import needs two passes.
//!
//! A zip is unpacked through a bounded reader: no entry grows past [`ZipLimits`] (size,
//! and ratio to its compressed size) whatever its header declares, and neither does the
//! whole archive, so a small upload cannot fill the disk (a zip bomb).

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

/// How far a zip may unpack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZipLimits {
    /// Largest uncompressed file.
    pub entry_bytes: u64,
    /// Largest uncompressed total of the files Tidings reads.
    pub total_bytes: u64,
    /// Largest ratio of a file's uncompressed size to its compressed size (deflated CSV
    /// is 5-20 times smaller; a bomb, thousands of times)…
    pub ratio: u64,
    /// …except within this many bytes, so that small, repetitive files (a manifest) pass.
    pub ratio_free_bytes: u64,
}

impl Default for ZipLimits {
    fn default() -> Self {
        Self {
            entry_bytes: 1024 * 1024 * 1024,
            total_bytes: 2 * 1024 * 1024 * 1024,
            ratio: 100,
            ratio_free_bytes: 1024 * 1024,
        }
    }
}

/// An opened bundle.
#[derive(Debug)]
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
        Self::from_zip_limited(reader, &ZipLimits::default())
    }

    /// [`Bundle::from_zip`] within `limits`. A file over them fails the whole bundle with
    /// its name and the line it had reached: a file cut short would import as if rows
    /// had been deleted.
    pub fn from_zip_limited(
        reader: impl Read + std::io::Seek,
        limits: &ZipLimits,
    ) -> Result<Self, ImportError> {
        let mut total = 0u64;
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
            let by_ratio = entry
                .compressed_size()
                .saturating_mul(limits.ratio)
                .max(limits.ratio_free_bytes);
            let (cap, what) = [
                (limits.entry_bytes, format!("{} bytes", limits.entry_bytes)),
                (
                    limits.total_bytes.saturating_sub(total),
                    format!("{} bytes for the whole bundle", limits.total_bytes),
                ),
                (
                    by_ratio,
                    format!("{} times its compressed size", limits.ratio),
                ),
            ]
            .into_iter()
            .min_by_key(|(cap, _)| *cap)
            .unwrap_or_default();
            let out = File::create(unpacked.path().join(known))
                .map_err(|e| ImportError::Bundle(format!("unpacking {known}: {e}")))?;
            let mut out = LineCounting {
                inner: std::io::BufWriter::new(out),
                newlines: 0,
            };
            // One byte more than the cap shows whether the file goes beyond it.
            let written = std::io::copy(&mut (&mut entry).take(cap + 1), &mut out)
                .map_err(|e| ImportError::Bundle(format!("unpacking {known}: {e}")))?;
            if written > cap {
                return Err(ImportError::Bundle(format!(
                    "{known} line {}: unpacks to more than {what}; nothing was imported",
                    out.newlines + 1
                )));
            }
            std::io::Write::flush(&mut out.inner)
                .map_err(|e| ImportError::Bundle(format!("unpacking {known}: {e}")))?;
            total += written;
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

/// A writer that counts the line breaks through it, to say where a file was cut off.
struct LineCounting<W> {
    inner: W,
    newlines: u64,
}

impl<W: std::io::Write> std::io::Write for LineCounting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.newlines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
