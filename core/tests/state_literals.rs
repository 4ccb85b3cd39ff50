//! Whether a delivery may move is decided in Rust by `next()` and written by the store's
//! one batch operation, with state names bound as parameters: no SQL in the code writes a
//! state it spells out. This test reads the SQL string literals of every crate's sources
//! and fails, naming file and line, on a write (UPDATE or INSERT) that names a delivery
//! state. Reads may name states (a partial index is matched only by its literal
//! predicate), and migrations are not code.

use std::path::{Path, PathBuf};

const STATES: [&str; 8] = [
    "'CREATED'",
    "'QUEUED'",
    "'SENT'",
    "'DELIVERED'",
    "'ACKED'",
    "'FAILED'",
    "'CANCELLED'",
    "'SUPPRESSED'",
];

/// A fragment with no verb of its own (`q.push(" WHERE state IN (…)")`) belongs to the
/// statement of the last literal with a verb, if that one is at most this many lines above.
const FRAGMENT_REACH: usize = 12;

/// The string literals of Rust source, each with the line it starts on. Comments, char
/// literals and lifetimes are skipped; raw and byte strings are literals too. Escapes are
/// kept as written (a `\"` does not end the literal).
fn string_literals(source: &str) -> Vec<(usize, String)> {
    let chars: Vec<char> = source.chars().collect();
    let mut literals = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match c {
            '\n' => {
                line += 1;
                i += 1;
            }
            '/' if next == Some('/') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if next == Some('*') => {
                let mut depth = 0;
                while i < chars.len() {
                    if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                        depth += 1;
                        i += 2;
                    } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        line += usize::from(chars[i] == '\n');
                        i += 1;
                    }
                }
            }
            '\'' => {
                // A char literal ('x', '\n', '\'', '"') or a lifetime ('a).
                if next == Some('\\') {
                    i += 3;
                    while i < chars.len() && chars[i] != '\'' {
                        i += 1;
                    }
                    i += 1;
                } else if chars.get(i + 2) == Some(&'\'') {
                    i += 3;
                } else {
                    i += 1;
                }
            }
            'r' | 'b' if is_raw_start(&chars, i) => {
                let start_line = line;
                let mut j = i + usize::from(c == 'b') + 1;
                let mut hashes = 0;
                while chars[j] == '#' {
                    hashes += 1;
                    j += 1;
                }
                j += 1; // the opening quote
                let mut text = String::new();
                loop {
                    if j >= chars.len() {
                        break;
                    }
                    if chars[j] == '"' && (1..=hashes).all(|k| chars.get(j + k) == Some(&'#')) {
                        j += 1 + hashes;
                        break;
                    }
                    line += usize::from(chars[j] == '\n');
                    text.push(chars[j]);
                    j += 1;
                }
                literals.push((start_line, text));
                i = j;
            }
            '"' => {
                let start_line = line;
                let mut j = i + 1;
                let mut text = String::new();
                while j < chars.len() && chars[j] != '"' {
                    if chars[j] == '\\' && j + 1 < chars.len() {
                        text.push(chars[j]);
                        j += 1;
                    }
                    line += usize::from(chars[j] == '\n');
                    text.push(chars[j]);
                    j += 1;
                }
                literals.push((start_line, text));
                i = j + 1;
            }
            _ => i += 1,
        }
    }
    literals
}

/// Whether `chars[i..]` opens a raw string (`r"`, `r#"`, `br"`, `br#"`).
fn is_raw_start(chars: &[char], i: usize) -> bool {
    let mut j = i;
    if chars.get(j) == Some(&'b') {
        j += 1;
    }
    if chars.get(j) != Some(&'r') {
        return false;
    }
    j += 1;
    while chars.get(j) == Some(&'#') {
        j += 1;
    }
    chars.get(j) == Some(&'"')
}

fn has_word(text: &str, word: &str) -> bool {
    text.to_ascii_uppercase()
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .any(|w| w == word)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Write,
    Read,
}

/// The kind of statement a literal is (or ends) in, if it says.
fn verb(text: &str) -> Option<Verb> {
    if has_word(text, "UPDATE") || has_word(text, "INSERT") {
        Some(Verb::Write)
    } else if has_word(text, "SELECT") || has_word(text, "DELETE") {
        Some(Verb::Read)
    } else {
        None
    }
}

/// The lines of `source` with a write that names a delivery state: a literal with an
/// UPDATE or INSERT, or a verbless fragment just after one.
fn state_writes(source: &str) -> Vec<usize> {
    let mut found = Vec::new();
    let mut last: Option<(usize, Verb)> = None;
    for (line, text) in string_literals(source) {
        let verb = verb(&text);
        let statement = verb.or_else(|| {
            last.filter(|(at, _)| line - at <= FRAGMENT_REACH)
                .map(|(_, v)| v)
        });
        if statement == Some(Verb::Write) && STATES.iter().any(|s| text.contains(s)) {
            found.push(line);
        }
        if let Some(verb) = verb {
            last = Some((line, verb));
        }
    }
    found
}

fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
}

#[test]
fn no_sql_write_in_the_code_names_a_delivery_state() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for krate in [
        "core/src",
        "dispatcher/src",
        "callbacks/src",
        "api/src",
        "web-admin/src",
        "channel-adapters/src",
        "sandbox/src",
        "src",
    ] {
        rust_files(&root.join(krate), &mut files);
    }
    let (mut literals, mut offending) = (0, Vec::new());
    for file in &files {
        let source = std::fs::read_to_string(file).unwrap();
        literals += string_literals(&source).len();
        for line in state_writes(&source) {
            let name = file.strip_prefix(&root).unwrap_or(file);
            offending.push(format!("{}:{line}", name.display()));
        }
    }
    // The scan saw the code (a walker that found nothing would pass vacuously).
    assert!(files.len() > 50, "{} files", files.len());
    assert!(literals > 2_000, "{literals} literals");
    assert!(
        offending.is_empty(),
        "SQL that writes a delivery state it spells out (decide with next() and write \
         through the store's batch of transitions, the state bound as a parameter):\n{}",
        offending.join("\n")
    );
}

#[test]
fn the_scanner_finds_a_planted_state_write() {
    let planted = r##"
        // UPDATE deliveries SET state = 'SENT' (a comment: not code)
        /* INSERT INTO delivery_events VALUES ('ACKED') */
        fn f<'a>(q: &'a str) {
            let quote = '"';
            let read = "SELECT count(*) FROM deliveries WHERE state = 'FAILED'";
            let write = "UPDATE deliveries SET state = 'SENT' WHERE id = $1";
            let raw = r#"INSERT INTO delivery_events (to_state) VALUES ('QUEUED')"#;
            q.push(") UPDATE deliveries SET version = version + 1 FROM x");
            q.push(" WHERE state IN ('CREATED', 'QUEUED')");
            let bound = "UPDATE deliveries SET state = $1 WHERE state = $2";
            let escaped = "UPDATE deliveries SET last_error = \"x\", state = 'CANCELLED'";
        }
    "##;
    assert_eq!(state_writes(planted), vec![7, 8, 10, 12]);
}

#[test]
fn reads_and_distant_fragments_are_not_writes() {
    let source = "
        let q = \"INSERT INTO log_entries (lane) VALUES ($1)\";
        let a = 1;
        let a = 1;
        let a = 1;
        let a = 1;
        let a = 1;
        let a = 1;
        let a = 1;
        let a = 1;
        let a = 1;
        let a = 1;
        let a = 1;
        let a = 1;
        const DUE: &str = \"state IN ('CREATED', 'QUEUED') AND next_attempt_at <= $1\";
        let r = \"SELECT id FROM deliveries\";
        let f = \" AND state = 'FAILED'\";
    ";
    assert_eq!(state_writes(source), Vec::<usize>::new());
    assert_eq!(string_literals(source).len(), 4);
}
