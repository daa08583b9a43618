//! What schemas cannot see: the relations between resources of one rendering.
//!
//! A manifest can be valid field by field and still do nothing: a Service whose selector has a
//! typo, a probe on a port the container does not open, an autoscaler aimed at a Deployment
//! that does not exist. [`check`] finds those, and what the mesh's own configuration (the
//! `flashsale.toml` in a ConfigMap) asks of the pods that read it.

mod mesh;

use std::collections::BTreeMap;

use serde_yaml_ng::{Mapping, Value};

use self::mesh::mesh_config;
use crate::{
    Problem,
    render::{Resource, at},
};

/// Every semantic problem of one rendering.
pub fn check(resources: &[Resource]) -> Vec<Problem> {
    let index = Index::new(resources);
    let mut problems = Vec::new();
    workload_selectors(&index, &mut problems);
    services(&index, &mut problems);
    autoscalers(&index, &mut problems);
    disruption_budgets(&index, &mut problems);
    probes(&index, &mut problems);
    network_policies(&index, &mut problems);
    topology_spread(&index, &mut problems);
    references(&index, &mut problems);
    pod_monitors(&index, &mut problems);
    for pod in &index.pods {
        mesh_config(&index, pod, &mut problems);
    }
    problems
}

/// A pod template and what owns it.
struct Pod<'r> {
    /// `Kind/name` of the owner.
    owner: String,
    kind: &'r str,
    name: &'r str,
    /// The template's labels.
    labels: Mapping,
    /// The pod spec.
    spec: &'r Value,
    /// Whether it is a long-running workload (a Service or autoscaler may aim at it).
    serves: bool,
    /// `spec.replicas` of the owner, when set.
    replicas: Option<i64>,
}

impl Pod<'_> {
    fn containers(&self) -> impl Iterator<Item = &Value> {
        ["containers", "initContainers"]
            .into_iter()
            .filter_map(|key| self.spec.get(key).and_then(Value::as_sequence))
            .flatten()
    }

    fn main_containers(&self) -> impl Iterator<Item = &Value> {
        items(self.spec.get("containers"))
    }

    fn has_port(&self, port: &Value) -> bool {
        self.main_containers().any(|c| container_has_port(c, port))
    }
}

/// The resources of a rendering, looked up by kind and name.
struct Index<'r> {
    resources: &'r [Resource],
    pods: Vec<Pod<'r>>,
}

impl<'r> Index<'r> {
    fn new(resources: &'r [Resource]) -> Self {
        let mut pods = Vec::new();
        for r in resources {
            let (template, serves) = match r.kind.as_str() {
                "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" => {
                    (r.at(&["spec", "template"]), true)
                }
                "Job" => (r.at(&["spec", "template"]), false),
                "CronJob" => (r.at(&["spec", "jobTemplate", "spec", "template"]), false),
                "Pod" => (Some(&r.value), false),
                _ => (None, false),
            };
            let Some(template) = template else { continue };
            let Some(spec) = template.get("spec") else {
                continue;
            };
            pods.push(Pod {
                owner: r.id(),
                kind: &r.kind,
                name: &r.name,
                labels: at(template, &["metadata", "labels"])
                    .and_then(Value::as_mapping)
                    .cloned()
                    .unwrap_or_default(),
                spec,
                serves,
                replicas: r.at(&["spec", "replicas"]).and_then(Value::as_i64),
            });
        }
        Self { resources, pods }
    }

    fn of_kind(&self, kind: &'r str) -> impl Iterator<Item = &'r Resource> + use<'r> {
        self.resources.iter().filter(move |r| r.kind == kind)
    }

    fn find(&self, kind: &str, name: &str) -> Option<&'r Resource> {
        self.resources
            .iter()
            .find(|r| r.kind == kind && r.name == name)
    }

    fn pod_of(&self, kind: &str, name: &str) -> Option<&Pod<'r>> {
        self.pods.iter().find(|p| p.kind == kind && p.name == name)
    }

    /// Long-running pods a label selector (`matchLabels`/`matchExpressions`) selects.
    fn selected<'i>(&'i self, selector: &'i Value) -> impl Iterator<Item = &'i Pod<'r>> {
        self.pods
            .iter()
            .filter(move |p| p.serves && selects(selector, &p.labels))
    }
}

/// The elements of a sequence, or none.
fn items(value: Option<&Value>) -> impl Iterator<Item = &Value> {
    value.and_then(Value::as_sequence).into_iter().flatten()
}

/// The strings of a sequence, or none.
fn strings(value: Option<&Value>) -> impl Iterator<Item = &str> {
    items(value).filter_map(Value::as_str)
}

/// A Service's ports: their names and the target port each sends to.
fn service_targets(service: &Resource) -> impl Iterator<Item = (String, Value)> + '_ {
    items(service.at(&["spec", "ports"])).map(|port| {
        let target = port
            .get("targetPort")
            .or_else(|| port.get("port"))
            .cloned()
            .unwrap_or(Value::Null);
        (port.get("name").map(scalar).unwrap_or_default(), target)
    })
}

/// A NetworkPolicy's pod selector (absent selects every pod).
fn policy_selector(policy: &Resource) -> Value {
    policy
        .at(&["spec", "podSelector"])
        .cloned()
        .unwrap_or(Value::Mapping(Mapping::new()))
}

/// Whether a `LabelSelector` selects `labels`. An empty selector selects everything.
fn selects(selector: &Value, labels: &Mapping) -> bool {
    let match_labels = selector.get("matchLabels").and_then(Value::as_mapping);
    let expressions = selector
        .get("matchExpressions")
        .and_then(Value::as_sequence);
    let labels_ok = match_labels
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_ok = expressions.into_iter().flatten().all(|e| {
        let key = e.get("key").cloned().unwrap_or(Value::Null);
        let values: Vec<&Value> = e
            .get("values")
            .and_then(Value::as_sequence)
            .map(|v| v.iter().collect())
            .unwrap_or_default();
        let value = labels.get(&key);
        match e.get("operator").and_then(Value::as_str) {
            Some("In") => value.is_some_and(|v| values.contains(&v)),
            Some("NotIn") => value.is_none_or(|v| !values.contains(&v)),
            Some("Exists") => value.is_some(),
            Some("DoesNotExist") => value.is_none(),
            _ => false,
        }
    });
    labels_ok && expressions_ok
}

/// Whether a plain `key: value` selector (a Service's) selects `labels`.
fn selects_plain(selector: &Mapping, labels: &Mapping) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn describe_selector(selector: &Value) -> String {
    let labels = selector
        .get("matchLabels")
        .and_then(Value::as_mapping)
        .or_else(|| selector.as_mapping());
    labels
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some(format!("{}={}", k.as_str()?, scalar(v))))
        .collect::<Vec<_>>()
        .join(",")
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => format!("{other:?}"),
    }
}

fn container_name(container: &Value) -> &str {
    container.get("name").and_then(Value::as_str).unwrap_or("?")
}

/// Whether a container opens `port`: a number, or the name of one of its ports.
fn container_has_port(container: &Value, port: &Value) -> bool {
    let ports = items(container.get("ports"));
    ports.into_iter().any(|p| match port {
        Value::Number(n) => p.get("containerPort").and_then(Value::as_i64) == n.as_i64(),
        Value::String(name) => p.get("name").and_then(Value::as_str) == Some(name),
        _ => false,
    })
}

fn workload_selectors(index: &Index<'_>, problems: &mut Vec<Problem>) {
    for pod in &index.pods {
        let Some(owner) = index.find(pod.kind, pod.name) else {
            continue;
        };
        let Some(selector) = owner.at(&["spec", "selector"]) else {
            continue;
        };
        if !selects(selector, &pod.labels) {
            problems.push(Problem::new(
                &pod.owner,
                format!(
                    "spec.selector ({}) does not match the pod template's labels ({})",
                    describe_selector(selector),
                    describe_selector(&Value::Mapping(pod.labels.clone()))
                ),
            ));
        }
    }
}

fn services(index: &Index<'_>, problems: &mut Vec<Problem>) {
    for service in index.of_kind("Service") {
        let Some(selector) = service
            .at(&["spec", "selector"])
            .and_then(Value::as_mapping)
        else {
            continue; // Endpoints managed elsewhere.
        };
        let selected: Vec<&Pod<'_>> = index
            .pods
            .iter()
            .filter(|p| p.serves && selects_plain(selector, &p.labels))
            .collect();
        if selected.is_empty() {
            problems.push(Problem::new(
                service.id(),
                format!(
                    "selects no pods (selector {})",
                    describe_selector(&Value::Mapping(selector.clone()))
                ),
            ));
            continue;
        }
        for (name, target) in service_targets(service) {
            for pod in &selected {
                if !pod.has_port(&target) {
                    problems.push(Problem::new(
                        service.id(),
                        format!(
                            "port {name}: targetPort {} is not a container port of {}",
                            scalar(&target),
                            pod.owner
                        ),
                    ));
                }
            }
        }
    }
}

/// The least replicas a workload runs: an autoscaler's floor, else `spec.replicas`, else 1.
fn least_replicas(index: &Index<'_>, pod: &Pod<'_>) -> i64 {
    for hpa in index.of_kind("HorizontalPodAutoscaler") {
        if targets(hpa, pod) {
            return hpa
                .at(&["spec", "minReplicas"])
                .and_then(Value::as_i64)
                .unwrap_or(1);
        }
    }
    for scaled in index.of_kind("ScaledObject") {
        if targets(scaled, pod) {
            return scaled
                .at(&["spec", "minReplicaCount"])
                .and_then(Value::as_i64)
                .unwrap_or(0);
        }
    }
    pod.replicas.unwrap_or(1)
}

fn targets(scaler: &Resource, pod: &Pod<'_>) -> bool {
    let kind = scaler
        .at(&["spec", "scaleTargetRef", "kind"])
        .and_then(Value::as_str)
        .unwrap_or("Deployment");
    let name = scaler
        .at(&["spec", "scaleTargetRef", "name"])
        .and_then(Value::as_str);
    kind == pod.kind && name == Some(pod.name)
}

fn autoscalers(index: &Index<'_>, problems: &mut Vec<Problem>) {
    let scalers = index
        .of_kind("HorizontalPodAutoscaler")
        .map(|r| (r, "minReplicas", "maxReplicas"))
        .chain(
            index
                .of_kind("ScaledObject")
                .map(|r| (r, "minReplicaCount", "maxReplicaCount")),
        );
    let mut claimed: BTreeMap<String, String> = BTreeMap::new();
    for (scaler, min_key, max_key) in scalers {
        let kind = scaler
            .at(&["spec", "scaleTargetRef", "kind"])
            .and_then(Value::as_str)
            .unwrap_or("Deployment");
        let name = scaler
            .at(&["spec", "scaleTargetRef", "name"])
            .and_then(Value::as_str)
            .unwrap_or("");
        let min = scaler.at(&["spec", min_key]).and_then(Value::as_i64);
        let max = scaler.at(&["spec", max_key]).and_then(Value::as_i64);
        if let (Some(min), Some(max)) = (min, max)
            && min > max
        {
            problems.push(Problem::new(
                scaler.id(),
                format!("{min_key} {min} is above {max_key} {max}"),
            ));
        }
        let Some(pod) = index.pod_of(kind, name) else {
            problems.push(Problem::new(
                scaler.id(),
                format!("scales {kind}/{name}, which no manifest here defines"),
            ));
            continue;
        };
        if let Some(other) = claimed.insert(pod.owner.clone(), scaler.id()) {
            problems.push(Problem::new(
                scaler.id(),
                format!(
                    "{} is already scaled by {other}: they would fight",
                    pod.owner
                ),
            ));
        }
        if pod.replicas.is_some() {
            problems.push(Problem::new(
                &pod.owner,
                format!(
                    "sets spec.replicas although {} scales it: every apply would reset the count",
                    scaler.id()
                ),
            ));
        }
        let metrics = items(scaler.at(&["spec", "metrics"]));
        for metric in metrics {
            let Some(resource) = at(metric, &["resource", "name"]).and_then(Value::as_str) else {
                continue;
            };
            for container in pod.main_containers() {
                if at(container, &["resources", "requests", resource]).is_none() {
                    problems.push(Problem::new(
                        scaler.id(),
                        format!(
                            "scales on {resource} utilization, but container {} of {} requests no {resource}",
                            container_name(container),
                            pod.owner
                        ),
                    ));
                }
            }
        }
    }
}

fn disruption_budgets(index: &Index<'_>, problems: &mut Vec<Problem>) {
    for pdb in index.of_kind("PodDisruptionBudget") {
        let Some(selector) = pdb.at(&["spec", "selector"]) else {
            continue;
        };
        let selected: Vec<&Pod<'_>> = index.selected(selector).collect();
        if selected.is_empty() {
            problems.push(Problem::new(
                pdb.id(),
                format!("selects no pods (selector {})", describe_selector(selector)),
            ));
        }
        for pod in selected {
            let least = least_replicas(index, pod);
            let blocks = match (
                pdb.at(&["spec", "minAvailable"]).and_then(Value::as_i64),
                pdb.at(&["spec", "maxUnavailable"]).and_then(Value::as_i64),
            ) {
                (Some(min_available), _) => min_available >= least,
                (_, Some(max_unavailable)) => max_unavailable == 0,
                _ => false,
            };
            if blocks {
                problems.push(Problem::new(
                    pdb.id(),
                    format!(
                        "with {least} replica(s) of {} it allows no eviction: node drains would hang",
                        pod.owner
                    ),
                ));
            }
        }
    }
}

const PROBES: [&str; 3] = ["startupProbe", "readinessProbe", "livenessProbe"];

fn probes(index: &Index<'_>, problems: &mut Vec<Problem>) {
    for pod in &index.pods {
        for container in pod.containers() {
            for probe in PROBES {
                let Some(handler) = container.get(probe) else {
                    continue;
                };
                for kind in ["grpc", "tcpSocket", "httpGet"] {
                    let Some(port) = at(handler, &[kind, "port"]) else {
                        continue;
                    };
                    if !container_has_port(container, port) {
                        problems.push(Problem::new(
                            &pod.owner,
                            format!(
                                "container {}: {probe} {kind} port {} is not one of its ports",
                                container_name(container),
                                scalar(port)
                            ),
                        ));
                    }
                }
            }
        }
    }
}

fn network_policies(index: &Index<'_>, problems: &mut Vec<Problem>) {
    let policies: Vec<&Resource> = index.of_kind("NetworkPolicy").collect();
    for policy in &policies {
        let selector = policy_selector(policy);
        let selected: Vec<&Pod<'_>> = index.selected(&selector).collect();
        if selected.is_empty() {
            problems.push(Problem::new(
                policy.id(),
                format!(
                    "podSelector ({}) selects no pods",
                    describe_selector(&selector)
                ),
            ));
        }
        let rules = items(policy.at(&["spec", "ingress"]));
        for rule in rules {
            let ports = rule.get("ports").and_then(Value::as_sequence);
            for port in ports.into_iter().flatten().filter_map(|p| p.get("port")) {
                if !selected.iter().any(|pod| pod.has_port(port)) {
                    problems.push(Problem::new(
                        policy.id(),
                        format!("admits port {}, which none of its pods opens", scalar(port)),
                    ));
                }
            }
            let peers = rule.get("from").and_then(Value::as_sequence);
            for peer in peers.into_iter().flatten() {
                if peer.get("namespaceSelector").is_some() || peer.get("ipBlock").is_some() {
                    continue;
                }
                let Some(from) = peer.get("podSelector") else {
                    continue;
                };
                if !index.pods.iter().any(|p| selects(from, &p.labels)) {
                    problems.push(Problem::new(
                        policy.id(),
                        format!(
                            "admits pods ({}) that no manifest here creates",
                            describe_selector(from)
                        ),
                    ));
                }
            }
        }
    }
    // A port a Service exposes must be admitted by some policy of the pods behind it.
    for service in index.of_kind("Service") {
        let Some(selector) = service
            .at(&["spec", "selector"])
            .and_then(Value::as_mapping)
        else {
            continue;
        };
        for pod in index
            .pods
            .iter()
            .filter(|p| p.serves && selects_plain(selector, &p.labels))
        {
            let governing: Vec<&&Resource> = policies
                .iter()
                .filter(|np| selects(&policy_selector(np), &pod.labels))
                .collect();
            if governing.is_empty() {
                continue;
            }
            for (_, target) in service_targets(service) {
                let admitted = governing.iter().any(|np| {
                    items(np.at(&["spec", "ingress"])).any(|rule| {
                        match rule.get("ports").and_then(Value::as_sequence) {
                            None => true,
                            Some(ports) => ports.iter().any(|p| {
                                p.get("port")
                                    .is_none_or(|p| p == &target || same_port(pod, p, &target))
                            }),
                        }
                    })
                });
                if !admitted {
                    problems.push(Problem::new(
                        service.id(),
                        format!(
                            "port {} of {} is admitted by none of its network policies: unreachable",
                            scalar(&target),
                            pod.owner
                        ),
                    ));
                }
            }
        }
    }
}

/// Whether two port references (numbers or names) are the same port of `pod`.
fn same_port(pod: &Pod<'_>, a: &Value, b: &Value) -> bool {
    let number = |port: &Value| -> Option<i64> {
        match port {
            Value::Number(n) => n.as_i64(),
            Value::String(name) => pod
                .main_containers()
                .filter_map(|c| c.get("ports").and_then(Value::as_sequence))
                .flatten()
                .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
                .and_then(|p| p.get("containerPort").and_then(Value::as_i64)),
            _ => None,
        }
    };
    number(a).is_some() && number(a) == number(b)
}

fn topology_spread(index: &Index<'_>, problems: &mut Vec<Problem>) {
    for pod in &index.pods {
        let constraints = items(pod.spec.get("topologySpreadConstraints"));
        for constraint in constraints {
            let Some(selector) = constraint.get("labelSelector") else {
                continue;
            };
            if !selects(selector, &pod.labels) {
                problems.push(Problem::new(
                    &pod.owner,
                    format!(
                        "topology spread over {} counts pods ({}) other than its own: it spreads nothing",
                        constraint
                            .get("topologyKey")
                            .map(scalar)
                            .unwrap_or_default(),
                        describe_selector(selector)
                    ),
                ));
            }
        }
    }
}

fn references(index: &Index<'_>, problems: &mut Vec<Problem>) {
    // ConfigMaps a pod mounts must be here (Secrets may be the platform's own).
    for pod in &index.pods {
        let volumes = items(pod.spec.get("volumes"));
        for volume in volumes {
            let Some(name) = at(volume, &["configMap", "name"]).and_then(Value::as_str) else {
                continue;
            };
            if index.find("ConfigMap", name).is_none() {
                problems.push(Problem::new(
                    &pod.owner,
                    format!("mounts ConfigMap {name}, which no manifest here defines"),
                ));
            }
        }
        // `kubectl patch horizontalpodautoscaler NAME` must patch an autoscaler that exists.
        for container in pod.containers() {
            let args: Vec<&str> = strings(container.get("args")).collect();
            if let Some(i) = args
                .iter()
                .position(|a| *a == "horizontalpodautoscaler" || *a == "hpa")
                && let Some(name) = args.get(i + 1)
                && index.find("HorizontalPodAutoscaler", name).is_none()
            {
                problems.push(Problem::new(
                    &pod.owner,
                    format!(
                        "container {} patches HorizontalPodAutoscaler/{name}, which no manifest here defines",
                        container_name(container)
                    ),
                ));
            }
        }
    }
    for role in index.of_kind("Role") {
        let rules = items(role.at(&["rules"]));
        for rule in rules {
            let resources: Vec<&str> = strings(rule.get("resources")).collect();
            if !resources.contains(&"horizontalpodautoscalers") {
                continue;
            }
            let names = strings(rule.get("resourceNames"));
            for name in names {
                if index.find("HorizontalPodAutoscaler", name).is_none() {
                    problems.push(Problem::new(
                        role.id(),
                        format!(
                            "grants HorizontalPodAutoscaler/{name}, which no manifest here defines"
                        ),
                    ));
                }
            }
        }
    }
    for binding in index.of_kind("RoleBinding") {
        let role = binding.at(&["roleRef", "name"]).and_then(Value::as_str);
        let kind = binding.at(&["roleRef", "kind"]).and_then(Value::as_str);
        if let (Some(role), Some("Role")) = (role, kind)
            && index.find("Role", role).is_none()
        {
            problems.push(Problem::new(
                binding.id(),
                format!("binds Role/{role}, which no manifest here defines"),
            ));
        }
    }
}

fn pod_monitors(index: &Index<'_>, problems: &mut Vec<Problem>) {
    for monitor in index.of_kind("PodMonitor") {
        let Some(selector) = monitor.at(&["spec", "selector"]) else {
            continue;
        };
        let selected: Vec<&Pod<'_>> = index.selected(selector).collect();
        if selected.is_empty() {
            problems.push(Problem::new(monitor.id(), "selects no pods"));
        }
        let endpoints = items(monitor.at(&["spec", "podMetricsEndpoints"]));
        for port in endpoints.filter_map(|e| e.get("port")) {
            if !selected.iter().any(|p| p.has_port(port)) {
                problems.push(Problem::new(
                    monitor.id(),
                    format!(
                        "scrapes port {}, which none of its pods opens",
                        scalar(port)
                    ),
                ));
            }
        }
    }
}
