//! `tidings import oneroster` and `tidings serve --demo`, run as a district's IT person
//! runs them.

mod support;

use std::io::Write;
use std::path::Path;

use support::{tidings, Server};
use tidings_core::testing::TestDatabase;

const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/demo");

fn zip_of(dir: &Path, replace: Option<(&str, &str, &str)>) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        let mut body = std::fs::read_to_string(entry.path()).unwrap();
        if let Some((file, from, to)) = replace {
            if name == file {
                body = body.replacen(from, to, 1);
            }
        }
        zip.start_file(name, zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(body.as_bytes()).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

#[tokio::test]
async fn a_zip_with_a_bad_row_imports_the_rest_and_names_the_row() {
    let db = TestDatabase::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("roster.zip");
    // One student pointed at a school that does not exist.
    std::fs::write(
        &path,
        zip_of(
            Path::new(DEMO),
            Some(("users.csv", "school-0,student", "school-99,student")),
        ),
    )
    .unwrap();

    let output = tidings(&db.url)
        .args(["import", "oneroster"])
        .arg(&path)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let students = stdout
        .lines()
        .find(|l| l.starts_with("students"))
        .expect("a students row");
    let cells: Vec<&str> = students.split_whitespace().collect();
    assert_eq!(
        cells,
        ["students", "299", "0", "0", "0", "1", "0"],
        "{stdout}"
    );
    let rejected: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("rejected"))
        .collect();
    assert_eq!(
        rejected.len(),
        2,
        "the student, and then its enrollment: {stdout}"
    );
    assert!(rejected[0].starts_with("rejected users.csv:"), "{stdout}");
    assert!(rejected[0].contains("unknown reference"), "{stdout}");
    assert!(
        stdout.contains("Sign in as:"),
        "an empty database gets its first administrator"
    );

    // The same bundle again: nothing created, nothing deleted.
    let again = tidings(&db.url)
        .args(["import", "oneroster"])
        .arg(&path)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8(again.stdout).unwrap();
    let students = stdout.lines().find(|l| l.starts_with("students")).unwrap();
    assert_eq!(
        students.split_whitespace().collect::<Vec<_>>(),
        ["students", "0", "0", "0", "299", "1", "0"]
    );
}

#[tokio::test]
async fn a_path_that_is_not_a_bundle_is_one_clear_line() {
    let db = TestDatabase::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "not a zip").unwrap();
    let output = tidings(&db.url)
        .args(["import", "oneroster"])
        .arg(&path)
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: not a directory or a zip file"),
        "{stderr}"
    );
}

#[tokio::test]
async fn serve_demo_loads_the_demo_district_once() {
    let db = TestDatabase::postgres_empty().await;
    let server = Server::start_with(&mut tidings(&db.url), &["--demo"]).await;
    let banner = server.banner.join("\n");
    assert!(
        banner.contains("Loaded the demo district: 300 students"),
        "{banner}"
    );
    assert!(server.terminate().await.success());
    let again = Server::start_with(&mut tidings(&db.url), &["--demo"]).await;
    assert!(
        !again.banner.join("\n").contains("Loaded the demo district"),
        "loaded only into an empty directory"
    );
    assert!(again.terminate().await.success());
}

/// The benchmarks run end to end and their last line is the JSON object they promise.
#[tokio::test]
async fn the_benchmarks_print_their_figures_as_json() {
    let last_json = |output: std::process::Output| -> serde_json::Value {
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8(output.stdout).unwrap();
        serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
    };
    let import = last_json(
        support::tidings("sqlite://unused.db")
            .args(["bench", "import", "--students", "200"])
            .output()
            .await
            .unwrap(),
    );
    assert_eq!(import["suite"], "import");
    assert_eq!(import["rejected"], 0);
    assert_eq!(
        import["reimport_unchanged_rows"], import["rows"],
        "an unchanged roster re-imports as unchanged"
    );
    assert!(import["rows_per_s"].as_f64().unwrap() > 0.0);

    let db = TestDatabase::postgres_empty().await;
    let fanout = last_json(
        support::tidings("sqlite://unused.db")
            .args([
                "bench",
                "fanout",
                "--students",
                "200",
                "--channels",
                "2",
                "--database-url",
                &db.url,
            ])
            .output()
            .await
            .unwrap(),
    );
    assert_eq!(fanout["store"], "postgres");
    assert_eq!(
        fanout["deliveries"].as_u64().unwrap(),
        2 * fanout["guardians"].as_u64().unwrap()
    );
}
