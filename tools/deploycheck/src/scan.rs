//! The outside checkers, run on files and renderings; each returns what it found.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value as Json;

use crate::{
    Error, Problem, Rendering, Tools,
    tools::{describe, run},
};

/// The Kubernetes version manifests must be valid for.
pub const KUBERNETES_VERSION: &str = "1.31.0";

/// Custom resources the chart may emit, by kind and apiVersion: no built-in schema knows them,
/// and any other unknown kind or apiVersion is an error.
pub const KNOWN_CRDS: &[(&str, &str)] = &[
    ("ScaledObject", "keda.sh/v1alpha1"),
    ("PodMonitor", "monitoring.coreos.com/v1"),
    ("ServiceMonitor", "monitoring.coreos.com/v1"),
    ("Certificate", "cert-manager.io/v1"),
    ("Issuer", "cert-manager.io/v1"),
];

/// checkov checks skipped for renderings that pull images by tag (development installs and the
/// chart's defaults). Both ask for digest pinning: CKV_K8S_43 ("Image should use digest") and
/// CKV_K8S_15 ("Image Pull Policy should be Always", which checkov waives for digests). A
/// production install pins `image.digest`, and renderings doing so are scanned with both on.
pub const TAG_PINNED_SKIPS: &[&str] = &["CKV_K8S_15", "CKV_K8S_43"];

/// `helm lint --strict` of `chart` with `values`.
pub fn helm_lint(tools: &Tools, chart: &Path, values: &Path) -> Result<Vec<Problem>, Error> {
    let mut command = Command::new(&tools.helm);
    command
        .args(["lint", "--strict"])
        .arg(chart)
        .arg("--values")
        .arg(values);
    let output = run(&mut command)?;
    if output.status.success() {
        return Ok(Vec::new());
    }
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    let subject = format!("helm lint {}", values.display());
    let mut problems: Vec<Problem> = text
        .lines()
        .filter(|l| {
            l.starts_with("[ERROR]") || l.starts_with("[WARNING]") || l.starts_with("Error")
        })
        .map(|l| Problem::new(&subject, l.trim()))
        .collect();
    if problems.is_empty() {
        problems.push(Problem::new(&subject, text.trim()));
    }
    Ok(problems)
}

/// Validates every resource of `rendering` against the Kubernetes schemas, strictly (unknown
/// fields are errors). An unknown kind or apiVersion is an error unless it is a known CRD.
pub fn kubernetes_validate(
    tools: &Tools,
    rendering: &Rendering,
    dir: &Path,
) -> Result<Vec<Problem>, Error> {
    let file = dir.join(rendering.file_name());
    write(&file, &rendering.text)?;
    let mut command = Command::new(&tools.kubernetes_validate);
    command
        .args(["--kubernetes-version", KUBERNETES_VERSION, "--strict"])
        .arg(&file);
    let output = run(&mut command)?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let subject = format!("kubernetes-validate {}", rendering.name);
    let mut problems = Vec::new();
    for line in stdout.lines().chain(stderr.lines()) {
        let line = line.trim();
        if line.is_empty() || line.starts_with("INFO") {
            continue;
        }
        if line.starts_with("WARN")
            && KNOWN_CRDS
                .iter()
                .any(|(kind, api)| line.contains(&format!("kind {kind} with api version {api} ")))
        {
            continue;
        }
        problems.push(Problem::new(
            &subject,
            line.replace(&*file.to_string_lossy(), ""),
        ));
    }
    if !output.status.success() && problems.is_empty() {
        problems.push(Problem::new(
            &subject,
            format!("{} exited with {}", describe(&command), output.status),
        ));
    }
    Ok(problems)
}

/// `yamllint` with the repository's `.yamllint.yaml` over `paths`; errors fail, warnings
/// (long lines) are only reported by yamllint itself.
pub fn yamllint(tools: &Tools, config: &Path, paths: &[PathBuf]) -> Result<Vec<Problem>, Error> {
    let mut command = Command::new(&tools.yamllint);
    command
        .arg("--config-file")
        .arg(config)
        .args(["--format", "parsable"])
        .args(paths);
    let output = run(&mut command)?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut problems: Vec<Problem> = stdout
        .lines()
        .filter(|l| l.contains("[error]"))
        .map(|l| {
            let (place, message) = l.split_once(": [error] ").unwrap_or((l, ""));
            Problem::new(format!("yamllint {place}"), message)
        })
        .collect();
    if !output.status.success() && problems.is_empty() {
        problems.push(Problem::new(
            "yamllint",
            format!(
                "exited with {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        ));
    }
    Ok(problems)
}

/// `checkov --framework kubernetes` over every rendering, offline. Renderings that pull an
/// image by tag are scanned with [`TAG_PINNED_SKIPS`] off; the rest with every check.
pub fn checkov(tools: &Tools, renderings: &[Rendering]) -> Result<Vec<Problem>, Error> {
    // checkov silently skips hidden folders, and temporary folders are hidden by default.
    let scratch = tempfile::Builder::new()
        .prefix("flashsale-checkov-")
        .tempdir()
        .map_err(|source| Error::Io {
            path: std::env::temp_dir(),
            source,
        })?;
    let dir = scratch.path();
    let (pinned, by_tag): (Vec<&Rendering>, Vec<&Rendering>) =
        renderings.iter().partition(|r| pins_images(r));
    let mut problems = Vec::new();
    for (group, skips) in [("pinned", &[][..]), ("by-tag", TAG_PINNED_SKIPS)] {
        let members = if group == "pinned" { &pinned } else { &by_tag };
        if members.is_empty() {
            continue;
        }
        let group_dir = dir.join(group);
        std::fs::create_dir_all(&group_dir).map_err(|source| Error::Io {
            path: group_dir.clone(),
            source,
        })?;
        for rendering in members {
            write(&group_dir.join(rendering.file_name()), &rendering.text)?;
        }
        let expected: usize = members.iter().map(|r| r.resources.len()).sum();
        problems.extend(checkov_dir(tools, &group_dir, skips, expected)?);
    }
    Ok(problems)
}

/// Whether every container image of a rendering is pinned by digest.
pub fn pins_images(rendering: &Rendering) -> bool {
    let images: Vec<&str> = rendering
        .text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("image:"))
        .map(|i| i.trim().trim_matches('"'))
        .collect();
    !images.is_empty() && images.iter().all(|i| i.contains("@sha256:"))
}

/// `checkov --framework dockerfile` over the image's build file; skips are inline comments
/// with their reasons.
pub fn checkov_dockerfile(tools: &Tools, dockerfile: &Path) -> Result<Vec<Problem>, Error> {
    let mut command = Command::new(&tools.checkov);
    command
        .args(["--framework", "dockerfile", "--skip-download", "--quiet"])
        .args(["--output", "json", "--file"])
        .arg(dockerfile);
    checkov_report(&mut command, 1)
}

fn checkov_dir(
    tools: &Tools,
    dir: &Path,
    skips: &[&str],
    expected: usize,
) -> Result<Vec<Problem>, Error> {
    let mut command = Command::new(&tools.checkov);
    command
        .args(["--framework", "kubernetes", "--skip-download", "--quiet"])
        .args(["--output", "json", "--directory"])
        .arg(dir);
    if !skips.is_empty() {
        command.arg("--skip-check").arg(skips.join(","));
    }
    checkov_report(&mut command, expected)
}

/// Runs checkov and reads its JSON report: the failed checks, after making sure it scanned at
/// least `expected` resources.
fn checkov_report(command: &mut Command, expected: usize) -> Result<Vec<Problem>, Error> {
    command
        .env("CHECKOV_RUN_SCA_PACKAGE_SCAN_V2", "false")
        .env("BC_SKIP_MAPPING", "TRUE");
    let output = run(command)?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: Json = serde_json::from_str(stdout.trim()).map_err(|e| Error::Tool {
        command: describe(command),
        reason: format!(
            "unreadable report ({e}): {} {}",
            stdout.chars().take(300).collect::<String>(),
            String::from_utf8_lossy(&output.stderr).trim()
        ),
    })?;
    // One report, or one per framework; with --quiet, a clean run may be a summary alone.
    let reports = match report {
        Json::Array(reports) => reports,
        other => vec![other],
    };
    // A scan that read nothing must not pass for a clean one.
    let scanned: u64 = reports
        .iter()
        .filter_map(|r| r.pointer("/summary/resource_count").and_then(Json::as_u64))
        .sum();
    if scanned < expected as u64 {
        return Err(Error::Tool {
            command: describe(command),
            reason: format!("scanned {scanned} resources of the {expected} it was given"),
        });
    }
    let mut problems = Vec::new();
    for report in reports {
        let failed = report
            .pointer("/results/failed_checks")
            .and_then(Json::as_array)
            .cloned()
            .unwrap_or_default();
        for check in failed {
            let field = |key: &str| check.get(key).and_then(Json::as_str).unwrap_or("?");
            problems.push(Problem::new(
                format!("checkov {}", field("file_path").trim_start_matches('/')),
                format!(
                    "{} {} ({})",
                    field("check_id"),
                    field("check_name"),
                    field("resource")
                ),
            ));
        }
    }
    Ok(problems)
}

fn write(path: &Path, text: &str) -> Result<(), Error> {
    std::fs::write(path, text).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}
