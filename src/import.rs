//! `tidings import oneroster PATH` and the bundled demo district.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use tidings_core::roster::{self, Bundle, ImportError, ImportOptions, ImportReport};
use tidings_core::store::Store;
use tidings_core::{DistrictId, ImportId};

use crate::commands::open_store;
use crate::Config;

/// Rejections printed by the CLI; the stored report keeps them all (up to its limit).
const PRINTED: usize = 50;

/// The district to import into: the one named, or the only one there is.
pub async fn choose_district(
    store: &dyn Store,
    asked: Option<DistrictId>,
) -> anyhow::Result<DistrictId> {
    let districts = store.districts().await?;
    match asked {
        Some(id) if districts.iter().any(|d| d.id == id) => Ok(id),
        Some(id) => bail!("no district {id}"),
        None => match districts.as_slice() {
            [only] => Ok(only.id),
            [] => bail!("the database has no district yet"),
            many => bail!(
                "the database has {} districts; choose one with --district ({})",
                many.len(),
                many.iter()
                    .map(|d| format!("{} {}", d.id, d.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    }
}

/// Imports a bundle from the command line, recording the run in the import history (a
/// dry run has no id).
pub async fn run_import(
    store: &dyn Store,
    district: DistrictId,
    bundle: &Bundle,
    source_name: &str,
    options: &ImportOptions,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> anyhow::Result<(Option<ImportId>, ImportReport)> {
    roster::import_recorded(
        store,
        district,
        None,
        bundle,
        source_name,
        options,
        progress,
    )
    .await
    .context("the import was rolled back; the directory is as it was")
}

/// How `tidings import oneroster` was asked to run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Run {
    /// `--dry-run`: import, report, roll back.
    pub dry_run: bool,
    /// `--force`: go ahead whatever the import deletes.
    pub force: bool,
}

/// `tidings import oneroster PATH`.
pub async fn oneroster(
    config: &Config,
    path: &Path,
    district: Option<DistrictId>,
    run: Run,
) -> anyhow::Result<()> {
    let store = open_store(config, config.migrate_on_start).await?;
    crate::commands::bootstrap(config, store.as_ref()).await?;
    let district = choose_district(store.as_ref(), district).await?;
    let bundle = Bundle::open(path)?;
    let options = ImportOptions {
        default_region: config.default_phone_region.clone(),
        max_delete_percent: Some(config.roster_max_delete_percent),
        force: run.force,
        dry_run: run.dry_run,
        ..ImportOptions::default()
    };
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {human_pos} rows imported ({per_sec}, {elapsed})",
        )
        .expect("a valid progress template"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let progress = {
        let bar = bar.clone();
        move |rows: u64| bar.set_position(rows)
    };
    let result = roster::import_recorded(
        store.as_ref(),
        district,
        None,
        &bundle,
        &path.display().to_string(),
        &options,
        &progress,
    )
    .await;
    bar.finish_and_clear();
    let (id, report) = match result {
        Ok(done) => done,
        Err(ImportError::HeldBack { over, report }) => {
            print_report(&report);
            bail!(
                "import held back, nothing was changed: {over}. Check the export; if these \
                 deletions are right, run the import again with --force \
                 (--dry-run shows what an import would do)"
            );
        }
        Err(error) => {
            return Err(anyhow::Error::new(error)
                .context("the import was rolled back; the directory is as it was"))
        }
    };
    print_report(&report);
    match (id, &report.over_delete_limit) {
        (None, Some(over)) => println!(
            "dry run, nothing was changed: {} rejected rows, {} warnings; without --force \
             this import would be held back: {over}",
            report.rejected.len(),
            report.warnings.len()
        ),
        (None, None) => println!(
            "dry run, nothing was changed: {} rejected rows, {} warnings",
            report.rejected.len(),
            report.warnings.len()
        ),
        (Some(id), over) => {
            if let Some(over) = over {
                println!("forced: {over}");
            }
            println!(
                "import {id}: {} rejected rows, {} warnings",
                report.rejected.len(),
                report.warnings.len()
            );
        }
    }
    Ok(())
}

/// The report's table and its first problems, on standard output.
fn print_report(report: &ImportReport) {
    print!("{}", report.summary_table());
    for problem in report.rejected.iter().take(PRINTED) {
        println!(
            "rejected {}:{} {}: {}",
            problem.file,
            problem.line,
            problem.sourced_id.as_deref().unwrap_or("-"),
            problem.reason
        );
    }
    for problem in report
        .warnings
        .iter()
        .take(PRINTED.saturating_sub(report.rejected.len()))
    {
        println!(
            "warning  {}:{} {}: {}",
            problem.file,
            problem.line,
            problem.sourced_id.as_deref().unwrap_or("-"),
            problem.reason
        );
    }
    let listed = report.rejected.len() + report.warnings.len();
    if listed > PRINTED {
        println!(
            "… {} more rows with problems are in the stored report",
            listed - PRINTED
        );
    }
}

/// The demo district of `demo/`, compiled into the binary so that `serve --demo` works
/// wherever the binary is.
const DEMO_FILES: [(&str, &str); 7] = [
    ("manifest.csv", include_str!("../demo/manifest.csv")),
    ("orgs.csv", include_str!("../demo/orgs.csv")),
    (
        "academicSessions.csv",
        include_str!("../demo/academicSessions.csv"),
    ),
    ("courses.csv", include_str!("../demo/courses.csv")),
    ("classes.csv", include_str!("../demo/classes.csv")),
    ("users.csv", include_str!("../demo/users.csv")),
    ("enrollments.csv", include_str!("../demo/enrollments.csv")),
];

/// Loads the demo district into an empty directory; does nothing if students exist.
pub async fn load_demo(
    store: &dyn Store,
    district: DistrictId,
) -> anyhow::Result<Option<ImportReport>> {
    if store.directory_counts(district).await?.students > 0 {
        return Ok(None);
    }
    let dir = tempfile::tempdir()?;
    for (name, body) in DEMO_FILES {
        std::fs::write(dir.path().join(name), body)?;
    }
    let bundle = Bundle::open(dir.path())?;
    let (_, report) = run_import(
        store,
        district,
        &bundle,
        "demo district",
        &ImportOptions::default(),
        &|_| {},
    )
    .await?;
    Ok(Some(report))
}
