//! The outside binaries the checks run, found in the repository's `.tools/` (where
//! `scripts/setup.sh` puts them) or on `PATH`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use crate::Error;

/// Paths of every tool the checks need.
#[derive(Debug, Clone)]
pub struct Tools {
    /// Helm 3.
    pub helm: PathBuf,
    /// kubectl (its built-in kustomize renders the overlays).
    pub kubectl: PathBuf,
    /// PyPI `kubernetes-validate`.
    pub kubernetes_validate: PathBuf,
    /// PyPI `yamllint`.
    pub yamllint: PathBuf,
    /// PyPI `checkov`.
    pub checkov: PathBuf,
}

impl Tools {
    /// Finds every tool, or says which one is missing.
    pub fn locate(root: &Path) -> Result<Self, Error> {
        let dirs = [root.join(".tools/bin"), root.join(".tools/k8s/bin")];
        let find = |tool: &'static str| find(tool, &dirs);
        Ok(Self {
            helm: find("helm")?,
            kubectl: find("kubectl")?,
            kubernetes_validate: find("kubernetes-validate")?,
            yamllint: find("yamllint")?,
            checkov: find("checkov")?,
        })
    }
}

fn find(tool: &'static str, dirs: &[PathBuf]) -> Result<PathBuf, Error> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let search = std::env::join_paths(dirs.iter().cloned().chain(std::env::split_paths(&path)))
        .unwrap_or_default();
    which::which_in(tool, Some(search), ".").map_err(|_| Error::MissingTool {
        tool,
        searched: dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// Runs `command` to completion, capturing its output. Exit status is the caller's to judge.
pub fn run(command: &mut Command) -> Result<Output, Error> {
    command.output().map_err(|e| Error::Tool {
        command: describe(command),
        reason: e.to_string(),
    })
}

/// Runs `command` and returns its standard output, or its standard error as the failure.
pub fn run_ok(command: &mut Command) -> Result<String, Error> {
    let output = run(command)?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(Error::Tool {
            command: describe(command),
            reason: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        })
    }
}

/// The command line, for messages.
pub fn describe(command: &Command) -> String {
    std::iter::once(command.get_program().to_string_lossy().into_owned())
        .chain(command.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}
