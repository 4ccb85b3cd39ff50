//! The operator assets in `docs/`: the Prometheus alert rules pass `promtool check rules`
//! and their unit tests (`promtool test rules`); the rules and the Grafana dashboard name
//! only metrics Tidings records, the dashboard shows every one of them, the README lists
//! them all, and every alert links a runbook that exists and names what the alert
//! watches.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use tidings_core::telemetry::METRICS;

fn docs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs promtool (installed by `scripts/test-services`) in `docs/prometheus`.
fn promtool(args: &[&str]) -> String {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(docs().join("prometheus"))
        .output()
        .unwrap_or_else(|e| panic!("promtool: {e} (run scripts/test-services to install it)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?}:\n{text}");
    text
}

/// The metric names an expression reads, as recorded (a histogram's `_bucket`, `_count`
/// and `_sum` series are its own name).
fn metrics_in(expr: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("tidings_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| {
                let base = name.strip_suffix(suffix)?;
                METRICS
                    .iter()
                    .any(|(n, kind)| *n == base && *kind == "histogram")
                    .then(|| base.to_owned())
            })
            .unwrap_or(name);
        found.insert(base);
    }
    found
}

fn known(name: &str) -> bool {
    METRICS.iter().any(|(n, _)| *n == name)
}

/// The alerts of the rules file: (name, expression, runbook path).
fn alerts() -> Vec<(String, String, String)> {
    let rules = read(&docs().join("prometheus/alerts.yml"));
    let mut alerts = Vec::new();
    let (mut name, mut expr) = (None, None);
    for line in rules.lines().map(str::trim) {
        if let Some(n) = line.strip_prefix("- alert:") {
            name = Some(n.trim().to_owned());
        } else if let Some(e) = line.strip_prefix("expr:") {
            expr = Some(e.trim().to_owned());
        } else if let Some(url) = line.strip_prefix("runbook_url:") {
            let url = url.trim().trim_matches('"').to_owned();
            alerts.push((name.take().unwrap(), expr.take().unwrap(), url));
        }
    }
    alerts
}

#[test]
fn the_alert_rules_are_valid_and_pass_their_unit_tests() {
    let checked = promtool(&["check", "rules", "alerts.yml"]);
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", alerts().len())),
        "{checked}"
    );
    let tested = promtool(&["test", "rules", "alerts.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
    // Every alert has a case in the unit tests that expects it to fire.
    let tests = read(&docs().join("prometheus/alerts.test.yml"));
    for (alert, _, _) in alerts() {
        assert!(
            tests.contains(&format!(
                "alertname: {alert}\n        exp_alerts:\n          - "
            )),
            "{alert} is never shown firing in alerts.test.yml"
        );
    }
}

#[test]
fn every_alert_watches_recorded_metrics_and_links_a_runbook_naming_them() {
    let alerts = alerts();
    // Lag over objective, no dispatcher, breaker open, dead letters growing, callbacks
    // refused: each watched by an alert.
    for watched in [
        "tidings_consumer_lag_seconds",
        "tidings_partitions_unheld",
        "tidings_provider_breaker_open",
        "tidings_dead_letters",
        "tidings_callback_rejects_total",
    ] {
        assert!(
            alerts
                .iter()
                .any(|(_, expr, _)| metrics_in(expr).contains(watched)),
            "no alert watches {watched}"
        );
    }
    for (alert, expr, runbook) in alerts {
        let metrics = metrics_in(&expr);
        assert!(!metrics.is_empty(), "{alert}: {expr}");
        for metric in &metrics {
            assert!(
                known(metric),
                "{alert} reads {metric}, which Tidings does not record"
            );
        }
        let page = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join(&runbook));
        assert!(page.contains(&alert), "{runbook} does not name {alert}");
        for metric in &metrics {
            assert!(
                page.contains(metric.as_str()),
                "{runbook} does not name {metric}"
            );
        }
    }
}

#[test]
fn the_dashboard_shows_every_metric_and_only_recorded_ones() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read(&docs().join("grafana/tidings.json"))).unwrap();
    assert_eq!(dashboard["title"], "Tidings");
    let mut shown = BTreeSet::new();
    let panels = dashboard["panels"].as_array().unwrap();
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{}", panel["title"]);
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            for metric in metrics_in(expr) {
                assert!(
                    known(&metric),
                    "{}: {metric} is not recorded",
                    panel["title"]
                );
                shown.insert(metric);
            }
        }
    }
    for (metric, _) in METRICS {
        assert!(
            shown.contains(*metric),
            "the dashboard does not show {metric}"
        );
    }
    // Panels do not overlap on Grafana's 24-column grid.
    let mut cells = BTreeSet::new();
    for panel in panels {
        let grid = &panel["gridPos"];
        let (x, y, w, h) = ["x", "y", "w", "h"]
            .map(|k| grid[k].as_u64().unwrap())
            .into();
        assert!(x + w <= 24, "{}", panel["title"]);
        for cell in (x..x + w).flat_map(|x| (y..y + h).map(move |y| (x, y))) {
            assert!(
                cells.insert(cell),
                "{} overlaps another panel",
                panel["title"]
            );
        }
    }
}

#[test]
fn the_readme_lists_every_metric() {
    let readme = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"));
    for (metric, _) in METRICS {
        assert!(
            readme.contains(&format!("`{metric}`")) || readme.contains(&format!("`{metric}{{")),
            "the README does not list {metric}"
        );
    }
}
