//! What the Helm chart and the kustomize overlays give each container (a `flashsale.toml` from a
//! ConfigMap, secret files, rules, environment) is a configuration the real binary accepts.

use std::path::{Path, PathBuf};

use flashsale_deploycheck::{Resource, Tools, render, render::at, repo_root};
use serde_yaml_ng::Value;

use crate::flashsale_configured;

/// Stand-ins for what the platform's Secret holds, by the key each file sets.
fn sample_secret(key: &str) -> &'static str {
    match key {
        "redis.url" => "redis://:s3cret@redis.platform.svc:6379",
        "nats.url" => "nats://nats.platform.svc:4222",
        "nats.auth" => "nats-token",
        "postgres.url" => "postgres://flashsale:s3cret@postgres.platform.svc:5432/flashsale",
        "gateway.auth.secret" => "a-production-token-secret-0123456789abcdef",
        "gateway.waiting_room_secret" => "a-production-waiting-room-key-0123456789",
        "public.pem" => "-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----\n",
        "tls.crt" | "ca.crt" => "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
        "tls.key" => "-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n",
        other => panic!("no sample for secret file {other}"),
    }
}

/// Recreates one container's mounts under `dir` and returns (mount path, local path) pairs.
fn materialize(
    resources: &[Resource],
    pod_spec: &Value,
    container: &Value,
    dir: &Path,
) -> Vec<(String, PathBuf)> {
    let volumes = pod_spec["volumes"]
        .as_sequence()
        .cloned()
        .unwrap_or_default();
    let mut mounts = Vec::new();
    for mount in container["volumeMounts"]
        .as_sequence()
        .into_iter()
        .flatten()
    {
        let name = mount["name"].as_str().unwrap();
        let mount_path = mount["mountPath"].as_str().unwrap().to_owned();
        let local = dir.join(name);
        std::fs::create_dir_all(&local).unwrap();
        let volume = volumes
            .iter()
            .find(|v| v["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("volume {name}"));
        if let Some(config_map) = at(volume, &["configMap", "name"]).and_then(Value::as_str) {
            let cm = resources
                .iter()
                .find(|r| r.kind == "ConfigMap" && r.name == config_map)
                .unwrap_or_else(|| panic!("ConfigMap {config_map}"));
            for (key, value) in cm.value["data"].as_mapping().unwrap() {
                std::fs::write(local.join(key.as_str().unwrap()), value.as_str().unwrap()).unwrap();
            }
        } else if let Some(items) = at(volume, &["secret", "items"]).and_then(Value::as_sequence) {
            for item in items {
                let path = item["path"].as_str().unwrap();
                std::fs::write(local.join(path), sample_secret(path)).unwrap();
            }
        }
        mounts.push((mount_path, local));
    }
    mounts
}

fn localize(text: &str, mounts: &[(String, PathBuf)]) -> String {
    mounts.iter().fold(text.to_owned(), |text, (mount, local)| {
        text.replace(mount.as_str(), &local.display().to_string())
    })
}

#[test]
fn every_rendered_container_configuration_loads() {
    let root = repo_root();
    let tools = Tools::locate(&root).unwrap_or_else(|e| panic!("{e}"));
    let (mut checked, mut rules_checked) = (0, 0);
    for rendering in render::all(&tools, &root).unwrap() {
        for resource in &rendering.resources {
            let pod_spec = match resource.kind.as_str() {
                "Deployment" => resource.at(&["spec", "template", "spec"]),
                _ => None,
            };
            let Some(pod_spec) = pod_spec else { continue };
            let containers = ["initContainers", "containers"]
                .iter()
                .filter_map(|k| pod_spec[*k].as_sequence())
                .flatten();
            for container in containers {
                let env = container["env"].as_sequence().cloned().unwrap_or_default();
                if !env.iter().any(|e| e["name"] == "FLASHSALE_CONFIG") {
                    continue;
                }
                let what = format!(
                    "{} {} container {}",
                    rendering.name,
                    resource.id(),
                    container["name"].as_str().unwrap()
                );
                let dir = tempfile::tempdir().unwrap();
                let mounts = materialize(&rendering.resources, pod_spec, container, dir.path());
                // Paths in the configuration point into the mounts.
                for (_, local) in &mounts {
                    for entry in std::fs::read_dir(local).unwrap() {
                        let path = entry.unwrap().path();
                        if path.extension().is_some_and(|e| e == "toml") {
                            let text = std::fs::read_to_string(&path).unwrap();
                            std::fs::write(&path, localize(&text, &mounts)).unwrap();
                        }
                    }
                }
                let mut command = flashsale_configured();
                for variable in &env {
                    let (Some(name), Some(value)) =
                        (variable["name"].as_str(), variable["value"].as_str())
                    else {
                        continue;
                    };
                    if name.starts_with("FLASHSALE_") {
                        command.env(name, localize(value, &mounts));
                    }
                }
                let output = command.args(["config", "check"]).output().unwrap();
                let stdout = String::from_utf8_lossy(&output.stdout);
                assert!(
                    output.status.success(),
                    "{what}: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
                assert!(stdout.contains("[gateway]"), "{what}: {stdout}");
                // Where the rules are read, they are there and valid.
                let args: Vec<&str> = container["args"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                if args.starts_with(&["serve", "limiter-sidecar"]) {
                    assert!(
                        output.stderr.is_empty(),
                        "{what}: {}",
                        String::from_utf8_lossy(&output.stderr)
                    );
                    rules_checked += 1;
                }
                assert!(!stdout.contains("s3cret"), "{what}: secrets printed");
                checked += 1;
            }
        }
    }
    // Five renderings of four Deployments, two with a migrating init container, one with a
    // sidecar: at least 6 containers each.
    assert!(checked >= 30, "checked {checked} containers");
    assert_eq!(rules_checked, 5, "one sidecar a rendering");
}
