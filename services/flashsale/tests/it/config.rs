//! A bad configuration stops start-up with one clear line and a non-zero exit.

use crate::{flashsale, write};

fn run_and_capture(command: &mut std::process::Command) -> (i32, String) {
    let output = command.output().expect("flashsale runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bad_file_value_names_the_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "bad.toml",
        "[gateway]\nlisten = \"not-an-address\"\n",
    );
    let (code, stderr) = run_and_capture(
        flashsale()
            .args(["--config"])
            .arg(&file)
            .args(["serve", "gateway"]),
    );
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("`gateway.listen`"), "{stderr}");
    assert!(stderr.contains("bad.toml"), "names the file: {stderr}");
}

#[test]
fn unknown_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "typo.toml", "[redis]\nurll = \"redis://x\"\n");
    let (code, stderr) = run_and_capture(
        flashsale()
            .args(["--config"])
            .arg(&file)
            .args(["serve", "inventory"]),
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("redis.urll"), "{stderr}");
}

#[test]
fn bad_env_value_names_the_variable_and_exits_2() {
    let (code, stderr) = run_and_capture(
        flashsale()
            .env("FLASHSALE_REDIS__COMMAND_TIMEOUT", "soon")
            .args(["serve", "inventory"]),
    );
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("`redis.command_timeout`"), "{stderr}");
    assert!(
        stderr.contains("FLASHSALE_REDIS__COMMAND_TIMEOUT"),
        "{stderr}"
    );
}

#[test]
fn rule_violation_names_the_key() {
    let (code, stderr) = run_and_capture(
        flashsale()
            .env("FLASHSALE_SERVER__SHUTDOWN_GRACE", "2h")
            .args(["serve", "orders"]),
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("`server.shutdown_grace`"), "{stderr}");
}

#[test]
fn missing_file_is_an_error() {
    let (code, stderr) =
        run_and_capture(flashsale().args(["--config", "/nonexistent/x.toml", "serve", "gateway"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("/nonexistent/x.toml"), "{stderr}");
}

#[test]
fn config_check_prints_the_effective_config_without_secrets() {
    let output = flashsale()
        .env(
            "FLASHSALE_POSTGRES__URL",
            "postgres://app:s3cret@127.0.0.1:5432/fs",
        )
        .env("FLASHSALE_GATEWAY__LISTEN", "127.0.0.1:6000")
        .args(["config", "check"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("listen = \"127.0.0.1:6000\""), "{stdout}");
    assert!(!stdout.contains("s3cret"), "{stdout}");
}

#[test]
fn config_check_validates_the_rules_file_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(
        dir.path(),
        "limits.yaml",
        "domain: flashsale\ndescriptors:\n  - key: user\n    rate_limit: {unit: fortnight, requests_per_unit: 5}\n",
    );
    let (code, stderr) = run_and_capture(
        flashsale()
            .env("FLASHSALE_LIMITER__RULES_FILE", &rules)
            .args(["config", "check"]),
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("limits.yaml"), "names the file: {stderr}");

    // A file that is not there is only a warning: most components never read it.
    let (code, stderr) = run_and_capture(
        flashsale()
            .env(
                "FLASHSALE_LIMITER__RULES_FILE",
                dir.path().join("absent.yaml"),
            )
            .args(["config", "check"]),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.starts_with("warning: limiter.rules_file"),
        "{stderr}"
    );
}

/// Components other than the gateway read the same document without serving buyers: an open
/// `gateway.listen` with the development secret is the gateway's problem alone.
#[test]
fn the_development_secret_is_refused_only_where_the_gateway_serves() {
    let (code, stderr) = run_and_capture(
        flashsale()
            .env("FLASHSALE_GATEWAY__LISTEN", "0.0.0.0:50051")
            .args(["config", "check"]),
    );
    assert_eq!(code, 0, "{stderr}");
    // The gateway itself refuses before binding anything.
    let (code, stderr) = run_and_capture(
        flashsale()
            .env("FLASHSALE_GATEWAY__LISTEN", "0.0.0.0:50051")
            .args(["serve", "gateway"]),
    );
    assert_ne!(code, 0, "{stderr}");
    assert!(stderr.contains("gateway.auth.secret"), "{stderr}");
}

#[test]
fn mutual_tls_settings_are_checked_before_anything_binds() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("tls.crt");
    std::fs::write(&not_pem, "just some text\n").unwrap();

    // Half a configuration.
    let (code, stderr) = run_and_capture(
        flashsale()
            .env("FLASHSALE_TLS__CERT", &not_pem)
            .args(["serve", "inventory"]),
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("`tls.key`"), "{stderr}");
    assert!(stderr.contains("missing: key, ca"), "{stderr}");

    // Files that are not what they claim.
    let (code, stderr) = run_and_capture(
        flashsale()
            .env("FLASHSALE_TLS__CERT", &not_pem)
            .env("FLASHSALE_TLS__KEY", dir.path().join("absent.key"))
            .env("FLASHSALE_TLS__CA", &not_pem)
            .args(["config", "check"]),
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("`tls.cert`"), "{stderr}");
    assert!(stderr.contains("no PEM CERTIFICATE block"), "{stderr}");
    assert!(
        !stderr.contains("just some text"),
        "file contents stay out of errors: {stderr}"
    );

    // https:// backends without mutual TLS.
    let (code, stderr) = run_and_capture(
        flashsale()
            .env("FLASHSALE_ORDERS__INVENTORY_URL", "https://inventory:50052")
            .args(["config", "check"]),
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("`orders.inventory_url`"), "{stderr}");
    assert!(stderr.contains("needs mutual TLS"), "{stderr}");
}

/// Every component, started at trace level with credentials in every store URL and the token
/// secret set, logs none of them, whether its stores answer or not (here they do not).
#[test]
fn secrets_never_reach_the_logs() {
    const SECRETS: [&str; 4] = [
        "gateway-token-secret-3f9a7c1e5b-0d4f6a",
        "redis-password-8d2e",
        "nats-password-41bc",
        "postgres-password-77e0",
    ];
    let components = [
        "gateway",
        "inventory",
        "orders",
        "order-consumer",
        "limiter",
        "limiter-sidecar",
    ];
    let dir = tempfile::tempdir().unwrap();
    let rules = write(
        dir.path(),
        "limits.yaml",
        "domain: flashsale\ndescriptors:\n  - key: user\n    rate_limit: { unit: second, requests_per_unit: 5 }\n",
    );
    let children: Vec<_> = components
        .iter()
        .map(|component| {
            let log = dir.path().join(format!("{component}.log"));
            let child = flashsale()
                .env("FLASHSALE_TELEMETRY__LOG_LEVEL", "trace")
                .env("FLASHSALE_GATEWAY__AUTH__SECRET", SECRETS[0])
                .env(
                    "FLASHSALE_REDIS__URL",
                    format!("redis://:{}@127.0.0.1:9", SECRETS[1]),
                )
                .env(
                    "FLASHSALE_NATS__URL",
                    format!("nats://app:{}@127.0.0.1:9", SECRETS[2]),
                )
                .env(
                    "FLASHSALE_POSTGRES__URL",
                    format!("postgres://app:{}@127.0.0.1:9/fs", SECRETS[3]),
                )
                .env("FLASHSALE_LIMITER__RULES_FILE", &rules)
                .args(["serve", component, "--listen", "127.0.0.1:0"])
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap();
            (component, log, crate::Running(child))
        })
        .collect();
    // Long enough to try, fail and retry its connections.
    std::thread::sleep(std::time::Duration::from_secs(3));
    for (component, log, child) in children {
        drop(child);
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            !text.is_empty(),
            "{component} logged nothing at trace level"
        );
        for secret in SECRETS {
            assert!(
                !text.contains(secret),
                "{component} logged {secret}:\n{text}"
            );
        }
    }
}

#[test]
fn credentials_in_the_nats_url_are_refused_without_being_echoed() {
    let (code, stderr) = run_and_capture(
        flashsale()
            .env(
                "FLASHSALE_NATS__URL",
                "nats://app:hunter2-secret@127.0.0.1:4222",
            )
            .args(["config", "check"]),
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("`nats.url`") && stderr.contains("nats.auth"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
}
