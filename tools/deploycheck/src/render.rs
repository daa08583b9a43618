//! Rendering the chart and the overlays into resources the checks can read.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use serde_yaml_ng::{Mapping, Value};

use crate::{Error, Tools, tools::run_ok};

/// The release name and namespace every rendering of the chart uses.
pub const RELEASE: &str = "flashsale";
/// The namespace the chart is rendered into.
pub const NAMESPACE: &str = "flashsale";

/// One Kubernetes object of a rendering.
#[derive(Debug, Clone)]
pub struct Resource {
    /// `kind`.
    pub kind: String,
    /// `apiVersion`.
    pub api_version: String,
    /// `metadata.name`.
    pub name: String,
    /// The whole object.
    pub value: Value,
}

impl Resource {
    /// `Kind/name`, how problems name it.
    pub fn id(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }

    /// The value at a path of mapping keys, e.g. `["spec", "selector"]`.
    pub fn at(&self, path: &[&str]) -> Option<&Value> {
        at(&self.value, path)
    }
}

/// The value under `path` in `value`.
pub fn at<'v>(value: &'v Value, path: &[&str]) -> Option<&'v Value> {
    path.iter().try_fold(value, |v, key| v.get(*key))
}

/// The manifests one source renders to.
#[derive(Debug, Clone)]
pub struct Rendering {
    /// Where they came from, e.g. `helm ci/prod-values.yaml` or `kustomize overlays/dev`.
    pub name: String,
    /// The rendered text.
    pub text: String,
    /// The objects in it.
    pub resources: Vec<Resource>,
}

impl Rendering {
    /// Parses `text` rendered from `name`.
    pub fn parse(name: impl Into<String>, text: String) -> Result<Self, Error> {
        let name = name.into();
        let resources = parse(&name, &text)?;
        Ok(Self {
            name,
            text,
            resources,
        })
    }

    /// A file name for this rendering, e.g. `helm-ci-prod-values.yaml`.
    pub fn file_name(&self) -> String {
        let mut name: String = self
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        while name.contains("--") {
            name = name.replace("--", "-");
        }
        format!("{}.yaml", name.trim_matches('-'))
    }
}

/// Splits a multi-document YAML text into resources; empty documents are skipped.
pub fn parse(source_name: &str, text: &str) -> Result<Vec<Resource>, Error> {
    let mut resources = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(text) {
        let value =
            <Value as serde::Deserialize>::deserialize(document).map_err(|e| Error::Parse {
                source_name: source_name.to_owned(),
                reason: e.to_string(),
            })?;
        if value.is_null() {
            continue;
        }
        let field = |path: &[&str]| {
            at(&value, path)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| Error::Parse {
                    source_name: source_name.to_owned(),
                    reason: format!("a document has no {}", path.join(".")),
                })
        };
        resources.push(Resource {
            kind: field(&["kind"])?,
            api_version: field(&["apiVersion"])?,
            name: field(&["metadata", "name"])?,
            value,
        });
    }
    Ok(resources)
}

/// The chart's directory.
pub fn chart_dir(root: &Path) -> PathBuf {
    root.join("helm/flashsale")
}

/// The values files in `helm/flashsale/ci/`, each rendered and checked.
pub fn ci_values(root: &Path) -> Result<Vec<PathBuf>, Error> {
    yaml_files(&chart_dir(root).join("ci"))
}

/// The kustomize overlays in `k8s/overlays/`.
pub fn overlays(root: &Path) -> Result<Vec<PathBuf>, Error> {
    let dir = root.join("k8s/overlays");
    let mut found: Vec<PathBuf> = read_dir(&dir)?
        .into_iter()
        .filter(|p| p.join("kustomization.yaml").is_file())
        .collect();
    found.sort();
    Ok(found)
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let io = |source| Error::Io {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::read_dir(dir)
        .map_err(io)?
        .map(|entry| entry.map(|e| e.path()).map_err(io))
        .collect()
}

/// The `.yaml` files directly in `dir`, sorted.
pub fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut found: Vec<PathBuf> = read_dir(dir)?
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    found.sort();
    Ok(found)
}

/// `helm template` of the chart in `chart` with `values` (in order), optionally only some
/// templates.
pub fn helm(
    tools: &Tools,
    chart: &Path,
    values: &[PathBuf],
    show_only: &[&str],
) -> Result<String, Error> {
    let mut command = Command::new(&tools.helm);
    command
        .args(["template", RELEASE])
        .arg(chart)
        .args(["--namespace", NAMESPACE]);
    for file in values {
        command.arg("--values").arg(file);
    }
    for template in show_only {
        command.args(["--show-only", template]);
    }
    run_ok(&mut command)
}

/// `kubectl kustomize` of `dir`.
pub fn kustomize(tools: &Tools, dir: &Path) -> Result<String, Error> {
    run_ok(Command::new(&tools.kubectl).arg("kustomize").arg(dir))
}

/// Every rendering the repository ships: the chart with each `ci/` values file, then each
/// kustomize overlay.
pub fn all(tools: &Tools, root: &Path) -> Result<Vec<Rendering>, Error> {
    let chart = chart_dir(root);
    let mut renderings = Vec::new();
    for values in ci_values(root)? {
        let name = format!("helm {}", relative(&chart, &values));
        let text = helm(tools, &chart, std::slice::from_ref(&values), &[])?;
        renderings.push(Rendering::parse(name, text)?);
    }
    for overlay in overlays(root)? {
        let name = format!("kustomize {}", relative(&root.join("k8s"), &overlay));
        let text = kustomize(tools, &overlay)?;
        renderings.push(Rendering::parse(name, text)?);
    }
    Ok(renderings)
}

fn relative(base: &Path, path: &Path) -> String {
    path.strip_prefix(base)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// A file of the kustomize tree that is the chart rendered, so the two never drift apart.
#[derive(Debug, Clone, Copy)]
pub struct Generated {
    /// Where it lives, relative to the repository root.
    pub path: &'static str,
    /// The values files it is rendered with, relative to the repository root, in order.
    pub values: &'static [&'static str],
    /// Only these templates; empty means all but `helm test` hooks.
    pub show_only: &'static [&'static str],
}

/// Every generated file of `k8s/`.
pub const GENERATED: &[Generated] = &[
    Generated {
        path: "k8s/base/flashsale.yaml",
        values: &["k8s/base/values.yaml"],
        show_only: &[],
    },
    Generated {
        path: "k8s/components/prescale/prescale.yaml",
        values: &[
            "k8s/base/values.yaml",
            "k8s/components/prescale/values.yaml",
        ],
        show_only: &["templates/prescale.yaml"],
    },
    Generated {
        path: "k8s/components/keda/scaledobject.yaml",
        values: &["k8s/base/values.yaml", "k8s/components/keda/values.yaml"],
        show_only: &["templates/keda.yaml"],
    },
];

/// Renders `file` from the chart as it should read now.
pub fn generate(tools: &Tools, root: &Path, file: &Generated) -> Result<String, Error> {
    let values: Vec<PathBuf> = file.values.iter().map(|v| root.join(v)).collect();
    let text = helm(tools, &chart_dir(root), &values, file.show_only)?;
    let mut out = format!(
        "# Generated from helm/flashsale with {} by\n\
         # `cargo run -p flashsale-deploycheck -- generate`: edit the chart or those values,\n\
         # not this file. The test suite fails while it is out of date.\n",
        file.values.join(" + ")
    );
    let mut first = true;
    for document in parse(file.path, &text)? {
        if is_test_hook(&document.value) {
            continue;
        }
        let mut value = document.value;
        for_kustomize(&mut value);
        if !first {
            out.push_str("---\n");
        }
        first = false;
        let yaml = serde_yaml_ng::to_string(&value).map_err(|e| Error::Parse {
            source_name: file.path.to_owned(),
            reason: e.to_string(),
        })?;
        let _ = write!(out, "{yaml}");
    }
    Ok(out)
}

fn is_test_hook(value: &Value) -> bool {
    at(value, &["metadata", "annotations", "helm.sh/hook"])
        .and_then(Value::as_str)
        .is_some_and(|hook| hook.split(',').any(|h| h.trim().starts_with("test")))
}

/// What kustomize users expect of a base: no namespace (the overlay sets it) and no Helm
/// bookkeeping labels.
fn for_kustomize(value: &mut Value) {
    if let Some(metadata) = value.get_mut("metadata").and_then(Value::as_mapping_mut) {
        metadata.shift_remove("namespace");
        if let Some(labels) = metadata.get_mut("labels").and_then(Value::as_mapping_mut) {
            relabel(labels);
        }
    }
    if let Some(subjects) = value.get_mut("subjects").and_then(Value::as_sequence_mut) {
        for subject in subjects {
            if let Some(subject) = subject.as_mapping_mut() {
                subject.shift_remove("namespace");
            }
        }
    }
}

fn relabel(labels: &mut Mapping) {
    labels.shift_remove("helm.sh/chart");
    if labels.contains_key("app.kubernetes.io/managed-by") {
        labels.insert(
            Value::from("app.kubernetes.io/managed-by"),
            Value::from("kustomize"),
        );
    }
}
