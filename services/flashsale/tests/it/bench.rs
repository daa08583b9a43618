//! `flashsale bench` end to end, small: it starts its mesh, sells out, audits, and writes a
//! report with three plots. (The figures are for BENCHMARKS.md, not asserted here.)

use crate::flashsale;

#[test]
fn bench_runs_a_small_sale_and_writes_its_report() {
    let out = tempfile::tempdir().unwrap();
    let output = flashsale()
        .args([
            "bench",
            "--scenario",
            "quick",
            "--stock",
            "200",
            "--users",
            "1000",
            "--attempts",
            "3000",
            "--concurrency",
            "64",
            "--baseline",
            "echo,naive-postgres",
            "--half-peak",
            "2s",
            "--out",
        ])
        .arg(out.path())
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for expected in [
        "PASS no oversell (Redis)",
        "PASS no loss",
        "PASS Redis agrees with Postgres",
        "Baseline echo",
        "Baseline naive-postgres",
        "whole-sale time mesh ÷ naive-postgres",
        "p99 at half the peak rate",
    ] {
        assert!(
            stdout.contains(expected),
            "missing `{expected}` in:\n{stdout}"
        );
    }
    let html = std::fs::read_to_string(out.path().join("report.html")).unwrap();
    assert_eq!(html.matches("<svg").count(), 3, "three plots");
    for id in ["latency", "throughput", "stock"] {
        assert!(html.contains(&format!("<figure id=\"{id}\">")), "{id} plot");
    }
    assert!(out.path().join("summary.txt").exists());
}
