//! OneRoster 1.1 CSV, read as the specification defines it: columns found by header name
//! (never by position), UTF-8 with or without a byte-order mark, RFC 4180 quoting (commas,
//! quotes and line breaks inside fields), list fields as comma-separated values.
//!
//! Parsing is pure: a record becomes a typed row or a reason it cannot be one.
//!
//! Memory is bounded whatever the input: a field longer than [`MAX_FIELD_BYTES`] makes its
//! row a rejection, and a record longer than [`MAX_RECORD_BYTES`] (a quote never closed, a
//! 400 MB field) stops the file there — the reader is refused more bytes, so the record is
//! never held whole — and the file counts as not read to the end (it deletes nothing).

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::sync::{Arc, Mutex, PoisonError};

/// Longest field kept: no OneRoster value comes near it (names, lists of sourcedIds).
pub const MAX_FIELD_BYTES: usize = 64 * 1024;

/// Longest record (row) read; beyond it the file is not read further.
pub const MAX_RECORD_BYTES: u64 = 1024 * 1024;

/// One CSV file of a bundle, read a record at a time.
pub struct CsvFile<R: Read> {
    pub name: &'static str,
    reader: csv::Reader<Counting<R>>,
    lines: Arc<Mutex<Newlines>>,
    columns: HashMap<String, usize>,
    headers: Vec<String>,
    width: usize,
    /// A record over [`MAX_RECORD_BYTES`] was met: nothing more is read.
    stopped: bool,
    /// A field over [`MAX_FIELD_BYTES`] was met: its row is not known for sure.
    cut: bool,
}

/// Where the line breaks are, for the bytes read ahead of the record being reported.
///
/// The csv crate's own line numbers drift by one after every record that ends in CRLF
/// (the usual Windows line end of SIS exports), so lines are counted here from the raw
/// bytes instead: the line of a record is one more than the `\n` bytes up to its start
/// (which the csv crate puts on the `\n` of a CRLF, and after the `\n` of an LF). Only the line breaks not yet passed are kept, so memory stays bounded.
#[derive(Default)]
struct Newlines {
    /// Line breaks before the first pending one.
    passed: u64,
    /// Byte offsets of line breaks read but not yet passed.
    pending: VecDeque<u64>,
    /// Bytes read so far.
    offset: u64,
    /// Where the record being read starts.
    record_start: u64,
    /// The last byte read was a carriage return (its line feed, if one follows, ends the
    /// same line).
    after_cr: bool,
}

impl Newlines {
    fn line_at(&mut self, byte: u64) -> u64 {
        while self.pending.front().is_some_and(|&at| at <= byte) {
            self.pending.pop_front();
            self.passed += 1;
        }
        self.passed + 1
    }
}

struct Counting<R> {
    inner: R,
    lines: Arc<Mutex<Newlines>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // The csv reader asks for more only once it has used what it has, so everything
        // read since the record started belongs to that record.
        let unread_limit = {
            let lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
            (lines.record_start + MAX_RECORD_BYTES).saturating_sub(lines.offset)
        };
        if unread_limit == 0 {
            return Err(std::io::Error::other(TooLong));
        }
        let wanted = buf
            .len()
            .min(usize::try_from(unread_limit).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..wanted])?;
        let mut lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        let base = lines.offset;
        // A line ends with CR LF, LF, or a CR alone (as the csv reader ends records).
        for (i, &b) in buf[..n].iter().enumerate() {
            let ends = b == b'\r' || (b == b'\n' && !lines.after_cr);
            if ends {
                lines.pending.push_back(base + i as u64);
            }
            lines.after_cr = b == b'\r';
        }
        lines.offset += n as u64;
        Ok(n)
    }
}

/// The error a [`Counting`] reader gives when a record exceeds [`MAX_RECORD_BYTES`].
#[derive(Debug)]
struct TooLong;

impl std::fmt::Display for TooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a record longer than {MAX_RECORD_BYTES} bytes")
    }
}

impl std::error::Error for TooLong {}

/// A record with the line it starts on.
pub struct Record {
    pub line: u64,
    fields: csv::StringRecord,
}

impl<R: Read> CsvFile<R> {
    /// Reads the header. Fails with the missing column names if `required` are not all
    /// present.
    pub fn open(name: &'static str, input: R, required: &[&str]) -> Result<Self, String> {
        let lines = Arc::new(Mutex::new(Newlines::default()));
        let counting = Counting {
            inner: input,
            lines: lines.clone(),
        };
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .has_headers(true)
            .from_reader(counting);
        let headers = match reader.headers() {
            Ok(headers) => headers.clone(),
            Err(e) if is_too_long(&e) => {
                return Err(format!(
                    "unreadable header: longer than {MAX_RECORD_BYTES} bytes"
                ))
            }
            Err(e) => return Err(format!("unreadable header: {e}")),
        };
        lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record_start = reader.position().byte();
        let columns: HashMap<String, usize> = headers
            .iter()
            .enumerate()
            .map(|(i, h)| (h.trim().trim_start_matches('\u{feff}').to_owned(), i))
            .collect();
        let missing: Vec<&str> = required
            .iter()
            .copied()
            .filter(|c| !columns.contains_key(*c))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "missing required column(s): {}",
                missing.join(", ")
            ));
        }
        Ok(Self {
            name,
            reader,
            lines,
            columns,
            headers: headers.iter().map(|h| h.trim().to_owned()).collect(),
            width: headers.len(),
            stopped: false,
            cut: false,
        })
    }

    /// Whether every row was read whole: no record too long to read stopped the file
    /// before its end, and no field too long to keep was met. Only such a file may
    /// delete the rows it does not list (the row not read may be the one missing).
    pub fn read_whole(&self) -> bool {
        !self.stopped && !self.cut
    }

    /// The next record, or the reason the next line is not one; `None` at the end.
    pub fn next_record(&mut self) -> Option<Result<Record, (u64, String)>> {
        if self.stopped {
            return None;
        }
        let mut fields = csv::StringRecord::new();
        let read = self.reader.read_record(&mut fields);
        let next_start = self.reader.position().byte();
        let record_start = std::mem::replace(
            &mut self
                .lines
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .record_start,
            next_start,
        );
        match read {
            Ok(false) => None,
            Err(error) if is_too_long(&error) => {
                self.stopped = true;
                let line = self.line_at(record_start);
                Some(Err((
                    line,
                    format!(
                        "row longer than {} KiB: {} was not read from here on, and deletes no one",
                        MAX_RECORD_BYTES / 1024,
                        self.name
                    ),
                )))
            }
            Ok(true) => {
                let line = self.line_of(fields.position());
                if let Some(i) = fields.iter().position(|f| f.len() > MAX_FIELD_BYTES) {
                    self.cut = true;
                    let column = self.headers.get(i).map_or("", String::as_str);
                    return Some(Err((
                        line,
                        format!(
                            "field {column:?} is longer than {} KiB",
                            MAX_FIELD_BYTES / 1024
                        ),
                    )));
                }
                // PostgreSQL's text holds no NUL: such a row could not be stored on one of
                // the two stores, so it is refused on both, and (its person not known for
                // sure) the file deletes no one.
                if let Some(i) = fields.iter().position(|f| f.contains('\0')) {
                    self.cut = true;
                    let column = self.headers.get(i).map_or("", String::as_str);
                    return Some(Err((
                        line,
                        format!("field {column:?} holds a NUL character"),
                    )));
                }
                if fields.len() != self.width {
                    return Some(Err((
                        line,
                        format!(
                            "row has {} fields but the header has {}",
                            fields.len(),
                            self.width
                        ),
                    )));
                }
                Some(Ok(Record { line, fields }))
            }
            Err(error) => {
                let line = self.line_of(error.position());
                Some(Err((line, format!("unreadable row: {error}"))))
            }
        }
    }

    fn line_of(&self, position: Option<&csv::Position>) -> u64 {
        self.line_at(position.map_or(0, |p| p.byte()))
    }

    fn line_at(&self, byte: u64) -> u64 {
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .line_at(byte)
    }

    /// Up to `n` records (or per-line problems).
    pub fn next_batch(&mut self, n: usize) -> Vec<Result<Record, (u64, String)>> {
        std::iter::from_fn(|| self.next_record()).take(n).collect()
    }

    /// The trimmed value of `column` in `record`; empty when the column is absent.
    pub fn get<'r>(&self, record: &'r Record, column: &str) -> &'r str {
        self.columns
            .get(column)
            .and_then(|&i| record.fields.get(i))
            .map(str::trim)
            .unwrap_or("")
    }
}

fn is_too_long(error: &csv::Error) -> bool {
    match error.kind() {
        csv::ErrorKind::Io(e) => e.get_ref().is_some_and(|inner| inner.is::<TooLong>()),
        _ => false,
    }
}

/// `status`: blank (allowed in bulk files) and `active` are live; `tobedeleted` (and the
/// 1.0 `inactive`) delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Active,
    ToBeDeleted,
}

pub fn status(raw: &str) -> Result<Status, String> {
    match raw.to_ascii_lowercase().as_str() {
        "" | "active" => Ok(Status::Active),
        "tobedeleted" | "inactive" => Ok(Status::ToBeDeleted),
        other => Err(format!(
            "invalid status {other:?} (expected active or tobedeleted)"
        )),
    }
}

/// A list field: comma-separated, blanks dropped.
pub fn list(raw: &str) -> Vec<String> {
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `manifest.csv`: `propertyName,value` pairs.
pub fn read_manifest(input: impl Read) -> Result<HashMap<String, String>, String> {
    let mut file = CsvFile::open("manifest.csv", input, &["propertyName", "value"])?;
    let mut properties = HashMap::new();
    while let Some(record) = file.next_record() {
        let record = record.map_err(|(line, reason)| format!("line {line}: {reason}"))?;
        properties.insert(
            file.get(&record, "propertyName").to_owned(),
            file.get(&record, "value").to_owned(),
        );
    }
    Ok(properties)
}

/// How the manifest says a file is provided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The file is the whole picture: rows missing from it are deleted.
    Bulk,
    /// The file holds changes only.
    Delta,
    Absent,
}

pub fn mode(manifest: &HashMap<String, String>, file: &str) -> Result<Mode, String> {
    let key = format!("file.{}", file.trim_end_matches(".csv"));
    match manifest.get(&key).map(|v| v.to_ascii_lowercase()) {
        None => Ok(Mode::Absent),
        Some(v) if v == "bulk" => Ok(Mode::Bulk),
        Some(v) if v == "delta" => Ok(Mode::Delta),
        Some(v) if v == "absent" => Ok(Mode::Absent),
        Some(v) => Err(format!(
            "manifest: {key} is {v:?} (expected bulk, delta or absent)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn columns_are_found_by_name_whatever_their_order_and_a_bom_is_ignored() {
        let csv = "\u{feff}status,name,sourcedId\r\nactive,\"Hill, Valley \"\"High\"\"\",s1\n,\"Two\nLines\",s2\n";
        let mut file = CsvFile::open("orgs.csv", csv.as_bytes(), &["sourcedId", "name"]).unwrap();
        let first = file.next_record().unwrap().unwrap();
        assert_eq!(first.line, 2);
        assert_eq!(file.get(&first, "sourcedId"), "s1");
        assert_eq!(file.get(&first, "name"), "Hill, Valley \"High\"");
        assert_eq!(file.get(&first, "type"), "", "absent columns read as empty");
        let second = file.next_record().unwrap().unwrap();
        assert_eq!(second.line, 3);
        assert_eq!(file.get(&second, "name"), "Two\nLines");
        assert!(file.next_record().is_none());
    }

    #[test]
    fn lines_are_physical_lines_whatever_the_line_ends() {
        for input in [
            "a,b\nx,\"y\nq\"\nz,w\nk,l\n",
            "a,b\r\nx,\"y\r\nq\"\r\nz,w\r\nk,l\r\n",
            "\u{feff}a,b\r\nx,\"y\r\nq\"\nz,w\r\nk,l",
            // Carriage returns alone end lines too (found by fuzzing: every row was
            // reported on the same line).
            "a,b\rx,\"y\rq\"\rz,w\rk,l\r",
            "a,b\rx,\"y\r\nq\"\nz,w\rk,l",
        ] {
            let mut file = CsvFile::open("t.csv", input.as_bytes(), &[]).unwrap();
            let lines: Vec<u64> = std::iter::from_fn(|| file.next_record())
                .map(|r| r.unwrap().line)
                .collect();
            assert_eq!(lines, [2, 4, 5], "{input:?}");
        }
    }

    #[test]
    fn a_missing_required_column_is_named() {
        let err = CsvFile::open(
            "users.csv",
            "sourcedId,role\n".as_bytes(),
            &["sourcedId", "role", "givenName", "familyName"],
        )
        .err()
        .unwrap();
        assert_eq!(err, "missing required column(s): givenName, familyName");
    }

    #[test]
    fn a_short_row_is_reported_with_its_line() {
        let mut file =
            CsvFile::open("orgs.csv", "sourcedId,name\na,b\nc\n".as_bytes(), &[]).unwrap();
        assert!(file.next_record().unwrap().is_ok());
        let (line, reason) = file.next_record().unwrap().err().unwrap();
        assert_eq!(line, 3);
        assert_eq!(reason, "row has 1 fields but the header has 2");
    }

    #[test]
    fn statuses_lists_and_modes() {
        assert_eq!(status(""), Ok(Status::Active));
        assert_eq!(status("ToBeDeleted"), Ok(Status::ToBeDeleted));
        assert!(status("gone").is_err());
        assert_eq!(list(" a, b ,,c"), ["a", "b", "c"]);
        let manifest: HashMap<_, _> = [
            ("file.users".to_owned(), "bulk".to_owned()),
            ("file.orgs".into(), "delta".into()),
        ]
        .into();
        assert_eq!(mode(&manifest, "users.csv"), Ok(Mode::Bulk));
        assert_eq!(mode(&manifest, "orgs.csv"), Ok(Mode::Delta));
        assert_eq!(mode(&manifest, "classes.csv"), Ok(Mode::Absent));
    }

    /// Line breaks in `text`: CR LF, LF, or CR alone.
    fn breaks(text: &str) -> u64 {
        (text.matches('\r').count() + text.matches('\n').count() - text.matches("\r\n").count())
            as u64
    }

    fn quote(field: &str) -> String {
        format!("\"{}\"", field.replace('"', "\"\""))
    }

    proptest! {
        /// Any field values (but NUL), quoted as RFC 4180 says, read back exactly (trimmed), on the
        /// physical line where they start, whatever mix of line ends the file uses.
        #[test]
        fn quoted_fields_round_trip_on_their_lines(
            // No NUL: a row holding one is refused (its own test).
            rows in proptest::collection::vec(("[^\u{feff}\u{0}]{0,12}", "[^\u{feff}\u{0}]{0,12}", any::<bool>()), 1..8),
            bom in any::<bool>(),
        ) {
            let mut csv = String::from(if bom { "\u{feff}sourcedId,name\n" } else { "sourcedId,name\n" });
            for (a, b, crlf) in &rows {
                csv.push_str(&format!("{},{}{}", quote(a), quote(b), if *crlf { "\r\n" } else { "\n" }));
            }
            let mut file = CsvFile::open("orgs.csv", csv.as_bytes(), &["sourcedId", "name"]).unwrap();
            let mut line = 2;
            for (a, b, _) in &rows {
                let record = file.next_record().unwrap().unwrap();
                prop_assert_eq!(file.get(&record, "sourcedId"), a.trim());
                prop_assert_eq!(file.get(&record, "name"), b.trim());
                prop_assert_eq!(record.line, line);
                line += 1 + breaks(a) + breaks(b);
            }
            prop_assert!(file.next_record().is_none());
        }

        /// A field is kept up to [`MAX_FIELD_BYTES`]; one longer rejects its row, on its
        /// line and naming its column, and the rows after it are still read.
        #[test]
        fn a_field_over_the_limit_rejects_its_row_only(
            extra in -2i64..=2,
            before in 0usize..3,
            crlf in any::<bool>(),
        ) {
            let end = if crlf { "\r\n" } else { "\n" };
            let long = "x".repeat((MAX_FIELD_BYTES as i64 + extra) as usize);
            let mut csv = format!("sourcedId,name{end}");
            for i in 0..before {
                csv.push_str(&format!("a{i},\"two{end}lines\"{end}"));
            }
            csv.push_str(&format!("long,{long}{end}after,ok{end}"));
            let mut file = CsvFile::open("orgs.csv", csv.as_bytes(), &[]).unwrap();
            for _ in 0..before {
                prop_assert!(file.next_record().unwrap().is_ok());
            }
            let line = 2 + 2 * before as u64;
            match file.next_record().unwrap() {
                Ok(record) => {
                    prop_assert!(extra <= 0);
                    prop_assert_eq!(record.line, line);
                    prop_assert_eq!(file.get(&record, "name").len(), long.len());
                }
                Err((at, reason)) => {
                    prop_assert!(extra > 0);
                    prop_assert_eq!(at, line);
                    prop_assert_eq!(reason, "field \"name\" is longer than 64 KiB");
                }
            }
            let after = file.next_record().unwrap().unwrap();
            prop_assert_eq!(after.line, line + 1);
            prop_assert!(file.next_record().is_none());
            prop_assert_eq!(file.read_whole(), extra <= 0);
        }

        /// A record past [`MAX_RECORD_BYTES`] (an unclosed quote, a huge field) stops the
        /// file on the line it starts, and the reader is refused the rest.
        #[test]
        fn a_record_over_the_limit_stops_the_file_on_its_line(
            rows in 0usize..4,
            quoted in any::<bool>(),
        ) {
            let mut csv = String::from("sourcedId,name\n");
            for i in 0..rows {
                csv.push_str(&format!("r{i},n\n"));
            }
            let huge = "y".repeat(MAX_RECORD_BYTES as usize + 1);
            if quoted {
                csv.push_str(&format!("big,\"{huge}"));
            } else {
                csv.push_str(&format!("big,{huge}\nlater,row\n"));
            }
            let mut file = CsvFile::open("users.csv", csv.as_bytes(), &[]).unwrap();
            for _ in 0..rows {
                prop_assert!(file.next_record().unwrap().is_ok());
            }
            let (line, reason) = file.next_record().unwrap().err().unwrap();
            prop_assert_eq!(line, 2 + rows as u64);
            prop_assert!(reason.starts_with("row longer than 1024 KiB"), "{}", reason);
            prop_assert!(file.next_record().is_none());
            prop_assert!(!file.read_whole());
        }

        /// Arbitrary bytes never panic the reader: every line is a record or a reason.
        #[test]
        fn the_reader_is_total(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut input = b"sourcedId,name\n".to_vec();
            input.extend(body);
            let mut file = CsvFile::open("orgs.csv", input.as_slice(), &[]).unwrap();
            for _ in 0..400 {
                if file.next_record().is_none() { break; }
            }
        }
    }
}
