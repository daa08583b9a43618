//! The mesh's own configuration as each container gets it: the `flashsale.toml` its
//! ConfigMap mounts, the files it names, the ports it listens on, the services it calls, and
//! the time Kubernetes gives it to drain. Defaults are the crates' own.

use std::{net::SocketAddr, time::Duration};

use serde_yaml_ng::Value;

use super::{Index, Pod, at, container_has_port, container_name, items, strings};
use crate::Problem;

/// The `serve` target's listen key in `flashsale.toml`, and its default address (read from the
/// component's own configuration defaults, so a changed default is checked as it is).
fn listen_key(component: &str) -> Option<(&'static [&'static str], SocketAddr)> {
    let limiter = flashsale_limiter::Config::default();
    let orders = flashsale_orders::Config::default();
    Some(match component {
        "gateway" => (
            &["gateway", "listen"],
            flashsale_gateway::Config::default().listen,
        ),
        "inventory" => (
            &["inventory", "listen"],
            flashsale_inventory::Config::default().listen,
        ),
        "orders" => (&["orders", "listen"], orders.listen),
        "limiter" => (&["limiter", "listen"], limiter.listen),
        "order-consumer" => (&["orders", "consumer_listen"], orders.consumer_listen),
        "limiter-sidecar" => (&["limiter", "sidecar", "listen"], limiter.sidecar.listen),
        _ => return None,
    })
}

/// What one container of the mesh reads: its `flashsale.toml` and where it is mounted.
struct MeshContainer<'v> {
    container: &'v Value,
    args: Vec<&'v str>,
    config: toml::Table,
}

impl MeshContainer<'_> {
    fn name(&self) -> &str {
        container_name(self.container)
    }

    fn config_str(&self, path: &[&str]) -> Option<&str> {
        let mut value: Option<&toml::Value> = None;
        for (i, key) in path.iter().enumerate() {
            value = if i == 0 {
                self.config.get(*key)
            } else {
                value?.get(*key)
            };
        }
        value?.as_str()
    }

    fn arg(&self, flag: &str) -> Option<&str> {
        let i = self.args.iter().position(|a| *a == flag)?;
        self.args.get(i + 1).copied()
    }

    fn env(&self, name: &str) -> Option<&str> {
        self.container
            .get("env")
            .and_then(Value::as_sequence)?
            .iter()
            .find(|e| e.get("name").and_then(Value::as_str) == Some(name))?
            .get("value")
            .and_then(Value::as_str)
    }

    /// The volume mounted at the folder of `path`, and the file's name in it.
    fn mount_for<'p>(&self, path: &'p str) -> Option<(&str, &'p str)> {
        let (dir, file) = path.rsplit_once('/')?;
        let mount = self
            .container
            .get("volumeMounts")
            .and_then(Value::as_sequence)?
            .iter()
            .find(|m| {
                m.get("mountPath")
                    .and_then(Value::as_str)
                    .map(|p| p.trim_end_matches('/'))
                    == Some(dir)
            })?;
        Some((mount.get("name").and_then(Value::as_str)?, file))
    }
}

/// Reads the `flashsale.toml` a container's `FLASHSALE_CONFIG` points at, through its mounts.
fn mesh_container<'v>(
    index: &Index<'_>,
    pod: &Pod<'_>,
    container: &'v Value,
) -> Option<Result<MeshContainer<'v>, String>> {
    let mut mesh = MeshContainer {
        container,
        args: strings(container.get("args")).collect(),
        config: toml::Table::new(),
    };
    let path = mesh.env("FLASHSALE_CONFIG")?;
    let Some((volume, file)) = mesh.mount_for(path) else {
        return Some(Err(format!(
            "FLASHSALE_CONFIG is {path}, but no volume is mounted there"
        )));
    };
    let Some(config_map) = volume_source(pod, volume, "configMap") else {
        return Some(Err(format!(
            "FLASHSALE_CONFIG is {path}, but volume {volume} is not a ConfigMap"
        )));
    };
    let text = index
        .find("ConfigMap", config_map)
        .and_then(|cm| at(&cm.value, &["data", file]))
        .and_then(Value::as_str)?;
    match text.parse::<toml::Table>() {
        Ok(config) => mesh.config = config,
        Err(e) => {
            return Some(Err(format!(
                "ConfigMap {config_map} key {file} is not TOML: {e}"
            )));
        }
    }
    Some(Ok(mesh))
}

fn volume_source<'p>(pod: &'p Pod<'_>, volume: &str, kind: &str) -> Option<&'p str> {
    pod.spec
        .get("volumes")
        .and_then(Value::as_sequence)?
        .iter()
        .find(|v| v.get("name").and_then(Value::as_str) == Some(volume))
        .and_then(|v| at(v, &[kind, "name"]).or_else(|| at(v, &[kind, "secretName"])))
        .and_then(Value::as_str)
}

/// Whether a file named `file` appears in volume `volume` of `pod`.
fn volume_provides(index: &Index<'_>, pod: &Pod<'_>, volume: &str, file: &str) -> bool {
    let Some(source) = pod
        .spec
        .get("volumes")
        .and_then(Value::as_sequence)
        .and_then(|vs| {
            vs.iter()
                .find(|v| v.get("name").and_then(Value::as_str) == Some(volume))
        })
    else {
        return false;
    };
    let source = source
        .get("configMap")
        .or_else(|| source.get("secret"))
        .or_else(|| source.get("projected"));
    let Some(source) = source else {
        return true; // emptyDir and the like: written at run time.
    };
    if let Some(items) = source.get("items").and_then(Value::as_sequence) {
        return items
            .iter()
            .any(|i| i.get("path").and_then(Value::as_str) == Some(file));
    }
    match source.get("name").and_then(Value::as_str) {
        // A whole ConfigMap: its keys are the files.
        Some(name) => index
            .find("ConfigMap", name)
            .is_none_or(|cm| at(&cm.value, &["data", file]).is_some()),
        None => true, // A whole Secret: its keys are not ours to see.
    }
}

/// Checks what each mesh container of `pod` reads against what the pod gives it.
pub(super) fn mesh_config(index: &Index<'_>, pod: &Pod<'_>, problems: &mut Vec<Problem>) {
    let mut drains = Vec::new();
    for container in pod.main_containers() {
        let Some(mesh) = mesh_container(index, pod, container) else {
            continue;
        };
        let mesh = match mesh {
            Ok(mesh) => mesh,
            Err(reason) => {
                problems.push(Problem::new(
                    &pod.owner,
                    format!("container {}: {reason}", container_name(container)),
                ));
                continue;
            }
        };
        let component = (mesh.args.first() == Some(&"serve"))
            .then(|| mesh.args.get(1).copied())
            .flatten();
        let mut found = Vec::new();
        mounted_files(index, pod, &mesh, component, &mut found);
        if let Some(component) = component {
            listens(pod, &mesh, component, problems);
        }
        if component == Some("limiter-sidecar") {
            sidecar_upstream(pod, &mesh, &mut found);
        }
        backend_urls(index, &mesh, &mut found);
        for message in found {
            problems.push(Problem::new(
                &pod.owner,
                format!("container {}: {message}", mesh.name()),
            ));
        }
        let grace = mesh
            .config_str(&["server", "shutdown_grace"])
            .and_then(|g| humantime::parse_duration(g).ok())
            .unwrap_or(flashsale_runtime::config::ServerConfig::default().shutdown_grace);
        let pre_stop = at(container, &["lifecycle", "preStop", "sleep", "seconds"])
            .and_then(Value::as_u64)
            .map_or(Duration::ZERO, Duration::from_secs);
        drains.push((mesh.name().to_owned(), pre_stop, grace));
    }
    drain_in_time(pod, drains, problems);
}

/// The secrets directory and every file the configuration names must be in a mounted volume
/// that provides them.
fn mounted_files(
    index: &Index<'_>,
    pod: &Pod<'_>,
    mesh: &MeshContainer<'_>,
    component: Option<&str>,
    found: &mut Vec<String>,
) {
    if let Some(dir) = mesh.env("FLASHSALE_SECRETS_DIR")
        && mesh.mount_for(&format!("{dir}/x")).is_none()
    {
        found.push(format!(
            "FLASHSALE_SECRETS_DIR is {dir}, but no volume is mounted there"
        ));
    }
    let mut files: Vec<(&str, &[&str])> = Vec::new();
    if matches!(component, Some("limiter" | "limiter-sidecar")) {
        files.push(("limiter.rules_file", &["limiter", "rules_file"]));
    }
    if component == Some("gateway") {
        files.push((
            "gateway.auth.public_key_file",
            &["gateway", "auth", "public_key_file"],
        ));
    }
    files.extend([
        ("tls.cert", &["tls", "cert"][..]),
        ("tls.key", &["tls", "key"][..]),
        ("tls.ca", &["tls", "ca"][..]),
    ]);
    for (key, path) in files {
        let Some(file) = mesh.config_str(path).filter(|f| !f.is_empty()) else {
            continue;
        };
        match mesh.mount_for(file) {
            Some((volume, name)) if volume_provides(index, pod, volume, name) => {}
            Some((volume, name)) => {
                found.push(format!(
                    "{key} is {file}, but volume {volume} holds no {name}"
                ));
            }
            None => found.push(format!("{key} is {file}, but no volume is mounted there")),
        }
    }
}

/// The addresses a component listens on must be ports it declares, reachable from the pod IP.
fn listens(pod: &Pod<'_>, mesh: &MeshContainer<'_>, component: &str, problems: &mut Vec<Problem>) {
    let Some((path, default)) = listen_key(component) else {
        return;
    };
    let listen = mesh
        .arg("--listen")
        .or_else(|| mesh.config_str(path))
        .map_or_else(|| default.to_string(), str::to_owned);
    // A gateway behind a sidecar in its pod is reached through it alone.
    let fronted = component == "gateway" && has_sidecar(pod);
    let what = format!("{} ({listen})", path.join("."));
    check_listen(mesh, &what, &listen, fronted, problems, pod);
    for (what, flag, key) in [
        (
            "metrics",
            "--metrics-listen",
            &["telemetry", "metrics_listen"],
        ),
        ("health", "--health-listen", &["server", "health_listen"]),
    ] {
        // The sidecar is a proxy: it answers health through its upstream.
        if what == "health" && component == "limiter-sidecar" {
            continue;
        }
        if let Some(addr) = mesh.arg(flag).or_else(|| mesh.config_str(key)) {
            let addr = addr.to_owned();
            check_listen(
                mesh,
                &format!("{what} ({addr})"),
                &addr,
                false,
                problems,
                pod,
            );
        }
    }
}

/// The sidecar forwards to a port of its own pod.
fn sidecar_upstream(pod: &Pod<'_>, mesh: &MeshContainer<'_>, found: &mut Vec<String>) {
    let default = flashsale_limiter::Config::default().sidecar.upstream;
    let upstream = mesh
        .arg("--upstream")
        .or_else(|| mesh.config_str(&["limiter", "sidecar", "upstream"]))
        .unwrap_or(&default);
    let port = upstream
        .rsplit_once(':')
        .and_then(|(_, p)| p.trim_end_matches('/').parse::<i64>().ok());
    if !port.is_some_and(|p| pod.has_port(&Value::from(p))) {
        found.push(format!(
            "limiter.sidecar.upstream {upstream} is not a port of this pod"
        ));
    }
}

/// Backend URLs must name a Service here that has the port.
fn backend_urls(index: &Index<'_>, mesh: &MeshContainer<'_>, found: &mut Vec<String>) {
    for path in [
        &["gateway", "inventory_url"][..],
        &["gateway", "orders_url"][..],
        &["orders", "inventory_url"][..],
    ] {
        let Some(url) = mesh.config_str(path) else {
            continue;
        };
        if let Some(problem) = check_backend_url(index, url) {
            found.push(format!("{} {url}: {problem}", path.join(".")));
        }
    }
}

/// Kubernetes must give each container its preStop pause and its drain before it kills it.
fn drain_in_time(
    pod: &Pod<'_>,
    drains: Vec<(String, Duration, Duration)>,
    problems: &mut Vec<Problem>,
) {
    let period = pod
        .spec
        .get("terminationGracePeriodSeconds")
        .and_then(Value::as_u64)
        .unwrap_or(30);
    for (container, pre_stop, grace) in drains {
        if Duration::from_secs(period) <= pre_stop + grace {
            problems.push(Problem::new(
                &pod.owner,
                format!(
                    "terminationGracePeriodSeconds {period} is not longer than container {container}'s preStop {}s + server.shutdown_grace {}: it would be killed mid-drain",
                    pre_stop.as_secs(),
                    humantime::format_duration(grace)
                ),
            ));
        }
    }
}

/// Whether a limiter sidecar runs in the pod (its upstream is checked to be a port here).
fn has_sidecar(pod: &Pod<'_>) -> bool {
    pod.main_containers().any(|c| {
        strings(c.get("args"))
            .take(2)
            .eq(["serve", "limiter-sidecar"])
    })
}

/// A listen address must be a declared port, and (unless `loopback_ok`) reachable from the
/// pod's IP.
fn check_listen(
    mesh: &MeshContainer<'_>,
    what: &str,
    listen: &str,
    loopback_ok: bool,
    problems: &mut Vec<Problem>,
    pod: &Pod<'_>,
) {
    let Some((host, port)) = listen.rsplit_once(':') else {
        return;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.starts_with("127.") || host == "::1" || host == "localhost";
    if loopback && !loopback_ok {
        problems.push(Problem::new(
            &pod.owner,
            format!(
                "container {}: {what} is loopback: probes and Services cannot reach it",
                mesh.name()
            ),
        ));
    }
    let Ok(port) = port.parse::<i64>() else {
        return;
    };
    if !container_has_port(mesh.container, &Value::from(port)) {
        problems.push(Problem::new(
            &pod.owner,
            format!(
                "container {}: {what} is not one of its container ports",
                mesh.name()
            ),
        ));
    }
}

/// `http://name:port` must be a Service here with that port.
fn check_backend_url(index: &Index<'_>, url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let (host, port) = authority.rsplit_once(':')?;
    let port: i64 = port.parse().ok()?;
    if host.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    let service_name = host.split('.').next().unwrap_or(host);
    let Some(service) = index.find("Service", service_name) else {
        return Some(format!("no Service {service_name} here"));
    };
    let has_port = items(service.at(&["spec", "ports"]))
        .any(|p| p.get("port").and_then(Value::as_i64) == Some(port));
    (!has_port).then(|| format!("Service {service_name} has no port {port}"))
}
