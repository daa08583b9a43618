//! Offline checks of how the mesh is deployed: the Helm chart (`helm/flashsale`) and the
//! kustomize tree (`k8s/`).
//!
//! No cluster is needed. Every check runs on rendered manifests:
//!
//! - [`render`]: `helm template` for each values file in `helm/flashsale/ci/`, `kubectl
//!   kustomize` for each overlay, parsed into [`Resource`]s; and the kustomize files that are
//!   generated from the chart ([`render::generated`]).
//! - [`scan`]: the outside tools: `helm lint --strict`, `kubernetes-validate` against
//!   Kubernetes 1.31 schemas (an unknown apiVersion is an error; the CRDs the chart may emit are
//!   allowed by name), `yamllint`, and `checkov --framework kubernetes`.
//! - [`semantic`]: what schemas cannot see: selectors that select nothing, Service and probe
//!   ports no container has, autoscalers aiming at nothing or with min above max, a grace period
//!   shorter than the drain, configuration that points at files no volume provides.
//! - [`tools`]: where the binaries are (`.tools/`, installed by `scripts/setup.sh`).
//!
//! The test suite of this crate runs all of it; `flashsale-deploycheck` runs it by hand, on the
//! repository's files or on a values file of yours.

pub mod render;
pub mod scan;
pub mod semantic;
pub mod tools;

use std::{fmt, path::PathBuf};

pub use render::{Rendering, Resource};
pub use tools::Tools;

/// Something wrong in a rendering, found by a tool or by the semantic checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What it is about: `Kind/name` of a resource, or a file.
    pub subject: String,
    /// What is wrong.
    pub message: String,
}

impl Problem {
    /// A problem about `subject`.
    pub fn new(subject: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            subject: subject.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.subject, self.message)
    }
}

/// Why a check could not run at all (as opposed to finding problems).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tool is not installed.
    #[error("{tool} not found in {searched} or on PATH: run scripts/setup.sh")]
    MissingTool {
        /// Its name.
        tool: &'static str,
        /// Where it was looked for.
        searched: String,
    },
    /// A tool could not be started or failed in a way that is not a finding.
    #[error("{command}: {reason}")]
    Tool {
        /// The command line.
        command: String,
        /// What happened.
        reason: String,
    },
    /// A rendering is not YAML the checks can read.
    #[error("{source_name}: {reason}")]
    Parse {
        /// Which rendering.
        source_name: String,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What happened.
        source: std::io::Error,
    },
}

/// The repository's root (`flashsale_testkit::workspace_root`, the one place it is found).
pub fn repo_root() -> PathBuf {
    flashsale_testkit::workspace_root()
}

/// Every check the repository's deployment files must pass, one function a check; the test
/// suite runs each on its own, `flashsale-deploycheck` runs them all.
pub mod suite {
    use std::path::{Path, PathBuf};

    use crate::{Error, Problem, Rendering, Tools, render, scan, semantic};

    /// `helm lint --strict` with each `ci/` values file.
    pub fn lint(tools: &Tools, root: &Path) -> Result<Vec<Problem>, Error> {
        let chart = render::chart_dir(root);
        let mut problems = Vec::new();
        for values in render::ci_values(root)? {
            problems.extend(scan::helm_lint(tools, &chart, &values)?);
        }
        Ok(problems)
    }

    /// The semantic checks on every rendering.
    pub fn semantics(renderings: &[Rendering]) -> Vec<Problem> {
        renderings
            .iter()
            .flat_map(|r| {
                semantic::check(&r.resources)
                    .into_iter()
                    .map(move |p| Problem::new(format!("{} {}", r.name, p.subject), p.message))
            })
            .collect()
    }

    /// Schema validation of every rendering against Kubernetes 1.31.
    pub fn validate(renderings: &[Rendering], tools: &Tools) -> Result<Vec<Problem>, Error> {
        let dir = scratch()?;
        let mut problems = Vec::new();
        for rendering in renderings {
            problems.extend(scan::kubernetes_validate(tools, rendering, dir.path())?);
        }
        Ok(problems)
    }

    /// yamllint over the YAML the repository holds and every rendering.
    pub fn yaml(
        renderings: &[Rendering],
        tools: &Tools,
        root: &Path,
    ) -> Result<Vec<Problem>, Error> {
        let dir = scratch()?;
        let mut paths = source_yaml(root)?;
        for rendering in renderings {
            let file = dir.path().join(rendering.file_name());
            std::fs::write(&file, &rendering.text).map_err(|source| Error::Io {
                path: file.clone(),
                source,
            })?;
            paths.push(file);
        }
        scan::yamllint(tools, &root.join(".yamllint.yaml"), &paths)
    }

    /// checkov over every rendering and the image's Dockerfile.
    pub fn security(
        renderings: &[Rendering],
        tools: &Tools,
        root: &Path,
    ) -> Result<Vec<Problem>, Error> {
        let mut problems = scan::checkov(tools, renderings)?;
        problems.extend(scan::checkov_dockerfile(tools, &root.join("Dockerfile"))?);
        Ok(problems)
    }

    /// Generated kustomize files that no longer match the chart.
    pub fn drift(tools: &Tools, root: &Path) -> Result<Vec<Problem>, Error> {
        let mut problems = Vec::new();
        for file in render::GENERATED {
            let wanted = render::generate(tools, root, file)?;
            let path = root.join(file.path);
            let current = std::fs::read_to_string(&path).unwrap_or_default();
            if current != wanted {
                problems.push(Problem::new(
                    file.path,
                    "is not the chart rendered as it is now: run `cargo run -p flashsale-deploycheck -- generate`",
                ));
            }
        }
        Ok(problems)
    }

    /// The YAML files kept in the repository: the chart's values, the kustomize tree, the
    /// monitoring examples (templates are not YAML until rendered).
    pub fn source_yaml(root: &Path) -> Result<Vec<PathBuf>, Error> {
        let chart = render::chart_dir(root);
        let mut paths = vec![chart.join("Chart.yaml"), chart.join("values.yaml")];
        paths.extend(render::ci_values(root)?);
        let mut stack = vec![root.join("k8s")];
        while let Some(dir) = stack.pop() {
            let entries = std::fs::read_dir(&dir).map_err(|source| Error::Io {
                path: dir.clone(),
                source,
            })?;
            for entry in entries {
                let path = entry
                    .map_err(|source| Error::Io {
                        path: dir.clone(),
                        source,
                    })?
                    .path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                    paths.push(path);
                }
            }
        }
        paths.sort();
        Ok(paths)
    }

    fn scratch() -> Result<tempfile::TempDir, Error> {
        tempfile::Builder::new()
            .prefix("deploycheck")
            .tempdir()
            .map_err(|source| Error::Io {
                path: std::env::temp_dir(),
                source,
            })
    }
}
