//! The deployment checks on the repository's chart and kustomize tree, and proof that each
//! check catches the mistake it exists for.

// A test reads as one story from set-up to the last assertion; only code outside tests is held
// to one screen a function.
#![allow(clippy::too_many_lines)]

use std::{path::Path, sync::OnceLock};

use flashsale_deploycheck::{Problem, Rendering, Tools, render, repo_root, scan, semantic, suite};
use serde_yaml_ng::Value;

fn root() -> &'static Path {
    static ROOT: OnceLock<std::path::PathBuf> = OnceLock::new();
    ROOT.get_or_init(repo_root)
}

fn tools() -> Tools {
    Tools::locate(root()).unwrap_or_else(|e| panic!("{e}"))
}

fn renderings() -> Vec<Rendering> {
    render::all(&tools(), root()).unwrap_or_else(|e| panic!("{e}"))
}

fn assert_clean(what: &str, problems: &[Problem]) {
    let listed: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert!(
        problems.is_empty(),
        "{what}: {} problem(s)\n  {}",
        problems.len(),
        listed.join("\n  ")
    );
}

/// The chart rendered with `ci/default-values.yaml`: the base the seeded mistakes edit.
fn default_rendering() -> Rendering {
    let chart = render::chart_dir(root());
    let text = render::helm(
        &tools(),
        &chart,
        &[chart.join("ci/default-values.yaml")],
        &[],
    )
    .unwrap();
    Rendering::parse("default", text).unwrap()
}

// ---- the repository's files pass every check ----

#[test]
fn every_source_is_rendered() {
    let names: Vec<String> = renderings().into_iter().map(|r| r.name).collect();
    for expected in [
        "helm ci/default-values.yaml",
        "helm ci/prod-values.yaml",
        "helm ci/keda-values.yaml",
        "kustomize overlays/dev",
        "kustomize overlays/prod",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
}

#[test]
fn the_chart_lints_strictly_with_every_ci_values_file() {
    assert_clean("helm lint", &suite::lint(&tools(), root()).unwrap());
}

#[test]
fn generated_kustomize_files_are_the_chart_rendered() {
    assert_clean("drift", &suite::drift(&tools(), root()).unwrap());
}

#[test]
fn every_rendering_passes_the_semantic_checks() {
    assert_clean("semantic", &suite::semantics(&renderings()));
}

#[test]
fn every_rendering_is_valid_kubernetes_1_31() {
    assert_clean(
        "kubernetes-validate",
        &suite::validate(&renderings(), &tools()).unwrap(),
    );
}

#[test]
fn yaml_sources_and_renderings_are_lint_clean() {
    assert_clean(
        "yamllint",
        &suite::yaml(&renderings(), &tools(), root()).unwrap(),
    );
}

#[test]
fn checkov_reports_no_failed_check() {
    assert_clean(
        "checkov",
        &suite::security(&renderings(), &tools(), root()).unwrap(),
    );
}

/// Production renderings pin every image by digest, so checkov scans them with every check on.
#[test]
fn production_renderings_pin_images_and_are_scanned_in_full() {
    let renderings = renderings();
    for name in ["helm ci/prod-values.yaml", "kustomize overlays/prod"] {
        let rendering = renderings.iter().find(|r| r.name == name).unwrap();
        assert!(scan::pins_images(rendering), "{name} pulls an image by tag");
    }
    let default = renderings
        .iter()
        .find(|r| r.name == "helm ci/default-values.yaml")
        .unwrap();
    assert!(!scan::pins_images(default));
}

/// What the autoscalers ask the Prometheus adapter for is what its rules provide.
#[test]
fn autoscaler_metrics_are_served_by_the_adapter_rules() {
    let text =
        std::fs::read_to_string(root().join("k8s/monitoring/prometheus-adapter.values.yaml"))
            .unwrap();
    let adapter: Value = serde_yaml_ng::from_str(&text).unwrap();
    let provided = |kind: &str| -> Vec<String> {
        adapter["rules"][kind]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|r| r["name"]["as"].as_str().unwrap().to_owned())
            .collect()
    };
    let (custom, external) = (provided("custom"), provided("external"));
    let mut asked = 0;
    for rendering in renderings() {
        for hpa in rendering
            .resources
            .iter()
            .filter(|r| r.kind == "HorizontalPodAutoscaler")
        {
            for metric in hpa.at(&["spec", "metrics"]).unwrap().as_sequence().unwrap() {
                let (list, name) = match metric["type"].as_str().unwrap() {
                    "Pods" => (&custom, metric["pods"]["metric"]["name"].as_str()),
                    "External" => (&external, metric["external"]["metric"]["name"].as_str()),
                    _ => continue,
                };
                let name = name.unwrap();
                asked += 1;
                assert!(
                    list.iter().any(|p| p == name),
                    "{} {} asks for {name}, which the adapter rules do not provide",
                    rendering.name,
                    hpa.id()
                );
            }
        }
    }
    assert!(asked >= 3, "the autoscalers read custom metrics");
}

// ---- each check catches the mistake it exists for ----

/// A selector typo in the chart's source: the Service would route to nothing.
#[test]
fn a_selector_typo_in_the_chart_is_caught() {
    let chart = tempfile::tempdir().unwrap();
    copy_dir(&render::chart_dir(root()), chart.path());
    let template = chart.path().join("templates/gateway.yaml");
    let text = std::fs::read_to_string(&template).unwrap();
    let service = text.find("kind: Service").unwrap();
    let (head, tail) = text.split_at(service);
    let tail = tail.replacen(
        r#"(dict "root" . "component" $component)"#,
        r#"(dict "root" . "component" "gatewya")"#,
        2,
    );
    assert_ne!(tail, text[service..], "the seed applies");
    std::fs::write(&template, format!("{head}{tail}")).unwrap();

    let text = render::helm(
        &tools(),
        chart.path(),
        &[chart.path().join("ci/default-values.yaml")],
        &[],
    )
    .unwrap();
    let rendering = Rendering::parse("seeded", text).unwrap();
    let problems = semantic::check(&rendering.resources);
    assert_found(
        &problems,
        "Service/flashsale-gateway",
        "selects no pods (selector app.kubernetes.io/name=flashsale,app.kubernetes.io/instance=flashsale,app.kubernetes.io/component=gatewya)",
    );
    // Schemas alone see nothing wrong.
    assert_clean(
        "kubernetes-validate on the seeded chart",
        &scan::kubernetes_validate(&tools(), &rendering, chart.path()).unwrap(),
    );
}

/// One mistake seeded into a rendered resource, and what the semantic checks must say.
struct Seed {
    kind: &'static str,
    name: &'static str,
    path: &'static [&'static str],
    value: Value,
    subject: &'static str,
    says: &'static str,
}

#[test]
fn seeded_mistakes_in_manifests_are_each_caught() {
    let seeds = [
        Seed {
            kind: "Deployment",
            name: "flashsale-inventory",
            path: &[
                "spec",
                "selector",
                "matchLabels",
                "app.kubernetes.io/component",
            ],
            value: "inventroy".into(),
            subject: "Deployment/flashsale-inventory",
            says: "spec.selector (app.kubernetes.io/name=flashsale,app.kubernetes.io/instance=flashsale,app.kubernetes.io/component=inventroy) does not match the pod template's labels",
        },
        Seed {
            kind: "Service",
            name: "flashsale-orders",
            path: &["spec", "ports", "0", "targetPort"],
            value: "grcp".into(),
            subject: "Service/flashsale-orders",
            says: "port grpc: targetPort grcp is not a container port of Deployment/flashsale-orders",
        },
        Seed {
            kind: "Deployment",
            name: "flashsale-inventory",
            path: &[
                "spec",
                "template",
                "spec",
                "containers",
                "0",
                "readinessProbe",
                "grpc",
                "port",
            ],
            value: 50099.into(),
            subject: "Deployment/flashsale-inventory",
            says: "container inventory: readinessProbe grpc port 50099 is not one of its ports",
        },
        Seed {
            kind: "HorizontalPodAutoscaler",
            name: "flashsale-gateway",
            path: &["spec", "scaleTargetRef", "name"],
            value: "flashsale-gatewya".into(),
            subject: "HorizontalPodAutoscaler/flashsale-gateway",
            says: "scales Deployment/flashsale-gatewya, which no manifest here defines",
        },
        Seed {
            kind: "HorizontalPodAutoscaler",
            name: "flashsale-orders",
            path: &["spec", "minReplicas"],
            value: 9.into(),
            subject: "HorizontalPodAutoscaler/flashsale-orders",
            says: "minReplicas 9 is above maxReplicas 8",
        },
        Seed {
            kind: "Deployment",
            name: "flashsale-consumer",
            path: &["spec", "replicas"],
            value: 3.into(),
            subject: "Deployment/flashsale-consumer",
            says: "sets spec.replicas although HorizontalPodAutoscaler/flashsale-consumer scales it",
        },
        Seed {
            kind: "PodDisruptionBudget",
            name: "flashsale-orders",
            path: &["spec", "maxUnavailable"],
            value: 0.into(),
            subject: "PodDisruptionBudget/flashsale-orders",
            says: "allows no eviction",
        },
        Seed {
            kind: "Deployment",
            name: "flashsale-orders",
            path: &["spec", "template", "spec", "terminationGracePeriodSeconds"],
            value: 20.into(),
            subject: "Deployment/flashsale-orders",
            says: "terminationGracePeriodSeconds 20 is not longer than container orders's preStop 5s + server.shutdown_grace 20s",
        },
        Seed {
            kind: "NetworkPolicy",
            name: "flashsale-gateway",
            path: &["spec", "ingress", "0", "ports", "0", "port"],
            value: "metrics".into(),
            subject: "Service/flashsale-gateway",
            says: "port grpc of Deployment/flashsale-gateway is admitted by none of its network policies: unreachable",
        },
        Seed {
            kind: "Deployment",
            name: "flashsale-gateway",
            path: &[
                "spec",
                "template",
                "spec",
                "topologySpreadConstraints",
                "0",
                "labelSelector",
                "matchLabels",
                "app.kubernetes.io/component",
            ],
            value: "inventory".into(),
            subject: "Deployment/flashsale-gateway",
            says: "topology spread over topology.kubernetes.io/zone counts pods",
        },
        Seed {
            kind: "Deployment",
            name: "flashsale-gateway",
            path: &[
                "spec",
                "template",
                "spec",
                "containers",
                "1",
                "volumeMounts",
                "2",
                "mountPath",
            ],
            value: "/etc/flashsale/rules".into(),
            subject: "Deployment/flashsale-gateway",
            says: "container limiter-sidecar: limiter.rules_file is /etc/flashsale/limits/limits.yaml, but no volume is mounted there",
        },
    ];
    for seed in &seeds {
        let mut resources = default_rendering().resources;
        let target = resources
            .iter_mut()
            .find(|r| r.kind == seed.kind && r.name == seed.name)
            .unwrap_or_else(|| panic!("{}/{} in the rendering", seed.kind, seed.name));
        set(&mut target.value, seed.path, seed.value.clone());
        let problems = semantic::check(&resources);
        assert_found(&problems, seed.subject, seed.says);
    }
}

/// The configuration the chart writes, changed so a listener moves off its declared port.
#[test]
fn configuration_that_disagrees_with_the_pod_is_caught() {
    let mut rendering = default_rendering();
    let config = rendering
        .resources
        .iter_mut()
        .find(|r| r.kind == "ConfigMap" && r.name == "flashsale-config")
        .unwrap();
    let toml = config.value["data"]["flashsale.toml"].as_str().unwrap();
    let seeded = toml.replace("0.0.0.0:50052", "0.0.0.0:50062").replace(
        "https://flashsale-orders:50053",
        "https://flashsale-order:50053",
    );
    assert_ne!(seeded, toml);
    config.value["data"]["flashsale.toml"] = seeded.into();
    let problems = semantic::check(&rendering.resources);
    assert_found(
        &problems,
        "Deployment/flashsale-inventory",
        "container inventory: inventory.listen (0.0.0.0:50062) is not one of its container ports",
    );
    assert_found(
        &problems,
        "Deployment/flashsale-gateway",
        "container gateway: gateway.orders_url https://flashsale-order:50053: no Service flashsale-order here",
    );
}

/// The chart's defaults: mutual TLS between the services, the gateway on loopback behind its
/// sidecar, every container that reads the configuration holding the certificate it names, and
/// probes on the plaintext health port. A container without the certificate is caught.
#[test]
fn the_defaults_speak_mutual_tls_with_the_gateway_behind_its_sidecar() {
    let mut rendering = default_rendering();
    let find = |rendering: &Rendering, kind: &str, name: &str| {
        rendering
            .resources
            .iter()
            .find(|r| r.kind == kind && r.name == name)
            .unwrap_or_else(|| panic!("{kind}/{name}"))
            .value
            .clone()
    };
    let config = find(&rendering, "ConfigMap", "flashsale-config");
    let config: toml::Table = config["data"]["flashsale.toml"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let text = |path: &[&str]| {
        let mut value = &config[path[0]];
        for key in &path[1..] {
            value = &value[*key];
        }
        value.as_str().unwrap().to_owned()
    };
    assert_eq!(text(&["tls", "ca"]), "/etc/flashsale/tls/ca.crt");
    assert_eq!(text(&["gateway", "listen"]), "127.0.0.1:50051");
    for url in [
        &["gateway", "inventory_url"][..],
        &["gateway", "orders_url"],
        &["orders", "inventory_url"],
    ] {
        assert!(text(url).starts_with("https://"), "{url:?}: {}", text(url));
    }
    let secret = find(&rendering, "Secret", "flashsale-mesh-tls");
    for key in ["tls.crt", "tls.key", "ca.crt"] {
        assert!(
            secret["data"][key].as_str().is_some_and(|v| !v.is_empty()),
            "{key}"
        );
    }
    for component in ["gateway", "inventory", "orders", "consumer"] {
        let deployment = find(&rendering, "Deployment", &format!("flashsale-{component}"));
        let probe = &deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"];
        assert_eq!(probe["grpc"]["port"].as_u64(), Some(50058), "{component}");
    }
    assert_clean("defaults", &semantic::check(&rendering.resources));

    // The orders container without the certificate's mount.
    let orders = rendering
        .resources
        .iter_mut()
        .find(|r| r.kind == "Deployment" && r.name == "flashsale-orders")
        .unwrap();
    let mounts = orders.value["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
        .as_sequence_mut()
        .unwrap();
    mounts.retain(|m| m["name"].as_str() != Some("tls"));
    assert_found(
        &semantic::check(&rendering.resources),
        "Deployment/flashsale-orders",
        "container orders: tls.cert is /etc/flashsale/tls/tls.crt, but no volume is mounted there",
    );

    // The kustomize base takes its certificate from cert-manager.
    let base = std::fs::read_to_string(root().join("k8s/base/flashsale.yaml")).unwrap();
    let base = Rendering::parse("base", base).unwrap();
    let certificate = find(&base, "Certificate", "flashsale-mesh");
    let names: Vec<&str> = certificate["spec"]["dnsNames"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for name in ["flashsale-inventory", "flashsale-orders.flashsale.svc"] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    assert_eq!(
        certificate["spec"]["secretName"].as_str(),
        Some("flashsale-mesh-tls")
    );
}

#[test]
fn unknown_api_versions_and_schema_violations_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let text = "\
apiVersion: policy/v1beta1
kind: PodDisruptionBudget
metadata: {name: old}
spec: {maxUnavailable: 1, selector: {matchLabels: {a: b}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: typed}
spec:
  replicas: two
  selector: {matchLabels: {a: b}}
  template:
    metadata: {labels: {a: b}}
    spec:
      containers: [{name: a, image: x}]
---
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata: {name: allowed}
spec: {scaleTargetRef: {name: typed}}
";
    let rendering = Rendering::parse("seeded", text.to_owned()).unwrap();
    let problems = scan::kubernetes_validate(&tools(), &rendering, dir.path()).unwrap();
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(problems.len(), 2, "{text:#?}");
    assert!(
        text.iter()
            .any(|p| p.contains("PodDisruptionBudget with api version policy/v1beta1")),
        "{text:#?}"
    );
    assert!(
        text.iter()
            .any(|p| p.contains("'two' is not of type 'integer'")),
        "{text:#?}"
    );
}

#[test]
fn checkov_and_yamllint_catch_what_they_exist_for() {
    let mut rendering = default_rendering();
    rendering.text = rendering.text.replace(
        "allowPrivilegeEscalation: false",
        "allowPrivilegeEscalation: true",
    );
    let dir = tempfile::tempdir().unwrap();
    let problems = scan::checkov(&tools(), std::slice::from_ref(&rendering)).unwrap();
    assert_reported(&problems, "CKV_K8S_20 ");

    // The image must not run as root.
    let dockerfile = dir.path().join("Dockerfile");
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    std::fs::write(&dockerfile, text.replace("USER 65532:65532\n", "")).unwrap();
    let problems = scan::checkov_dockerfile(&tools(), &dockerfile).unwrap();
    assert_reported(&problems, "CKV_DOCKER_3 ");

    let file = dir.path().join("duplicate.yaml");
    std::fs::write(&file, "metadata:\n  name: a\n  name: b\n").unwrap();
    let problems = scan::yamllint(&tools(), &root().join(".yamllint.yaml"), &[file]).unwrap();
    assert_reported(&problems, "duplication of key \"name\"");
}

#[test]
fn the_values_schema_and_the_chart_refuse_bad_values() {
    let chart = render::chart_dir(root());
    let dir = tempfile::tempdir().unwrap();
    for (values, says) in [
        (
            "redis: {url: http://redis:6379}",
            "redis.url: Does not match pattern",
        ),
        (
            "gateway: {autoscaling: {minReplicas: two}}",
            "gateway.autoscaling.minReplicas: Invalid type",
        ),
        (
            "inventory: {autoscaling: {minReplicas: 9, maxReplicas: 3}}",
            "inventory.autoscaling.minReplicas (9) is above maxReplicas (3)",
        ),
        (
            "config: {sever: {shutdown_grace: 1s}}",
            "Additional property sever is not allowed",
        ),
        ("postgres: {url: \"\"}", "postgres.url is required"),
        (
            "preScale: {enabled: true, windows: [{name: big, raise: '0 9 * * *', restore: '0 10 * * *', minReplicas: {orders: 50}}]}",
            "preScale window big raises orders to 50, above its maxReplicas 8",
        ),
    ] {
        let file = dir.path().join("values.yaml");
        std::fs::write(&file, values).unwrap();
        let err = render::helm(
            &tools(),
            &chart,
            &[chart.join("ci/default-values.yaml"), file],
            &[],
        )
        .expect_err(values)
        .to_string();
        assert!(err.contains(says), "{values}: {err}");
    }
}

fn assert_reported(problems: &[Problem], says: &str) {
    assert!(
        problems.iter().any(|p| p.message.contains(says)),
        "expected a problem saying {says}, found {problems:#?}"
    );
}

fn assert_found(problems: &[Problem], subject: &str, says: &str) {
    assert!(
        problems
            .iter()
            .any(|p| p.subject == subject && p.message.contains(says)),
        "expected {subject}: {says}\nfound:\n  {}",
        problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}

/// Sets the value at `path` (mapping keys, or indices into sequences); the last key may be new.
fn set(value: &mut Value, path: &[&str], new: Value) {
    let (last, parents) = path.split_last().expect("a path");
    let mut at = value;
    for key in parents {
        at = if at.is_sequence() {
            &mut at.as_sequence_mut().unwrap()[key.parse::<usize>().unwrap()]
        } else {
            at.get_mut(*key)
                .unwrap_or_else(|| panic!("no {key} in the path {path:?}"))
        };
    }
    if let Some(seq) = at.as_sequence_mut() {
        seq[last.parse::<usize>().unwrap()] = new;
    } else {
        at.as_mapping_mut()
            .unwrap_or_else(|| panic!("{path:?} does not end in a mapping"))
            .insert(Value::from(*last), new);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
