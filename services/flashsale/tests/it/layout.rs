//! The folders' promise about dependencies, checked on the real dependency graph: what runs links
//! only the foundation, and the production image carries no test or measuring tool.

use std::{collections::BTreeSet, process::Command};

use flashsale_testkit::workspace_root;

/// The crates `cargo tree` puts in a package's normal and build graph, with `extra` arguments.
fn linked(package: &str, extra: &[&str]) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(workspace_root())
        .args([
            "tree",
            "--locked",
            "--offline",
            "-e",
            "normal,build",
            "--prefix",
            "none",
        ])
        .args(["--format", "{p}", "-p", package])
        .args(extra)
        .output()
        .expect("cargo tree runs");
    assert!(
        output.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_production_build_links_no_test_kit_and_the_gateway_no_inventory_store() {
    let dockerfile = std::fs::read_to_string(workspace_root().join("Dockerfile")).unwrap();
    let build = dockerfile
        .lines()
        .find(|line| line.contains("cargo build"))
        .expect("the Dockerfile builds with cargo");
    assert!(
        build.contains("--package flashsale") && build.contains("--no-default-features"),
        "the image must be the production build: {build}"
    );
    let production = linked("flashsale", &["--no-default-features"]);
    for tool in [
        "flashsale-testkit",
        "flashsale-loadgen",
        "plotters",
        "indicatif",
    ] {
        assert!(
            !production.contains(tool),
            "the production build links {tool}"
        );
    }
    let gateway = linked("flashsale-gateway", &[]);
    assert!(
        !gateway.contains("flashsale-inventory"),
        "the gateway links the inventory store: {gateway:?}"
    );
    for service in [
        "flashsale-gateway",
        "flashsale-limiter",
        "flashsale-inventory",
        "flashsale-orders",
    ] {
        let deps = linked(service, &[]);
        assert!(
            !deps.contains("flashsale-testkit"),
            "{service} links the test kit"
        );
    }
}

#[test]
fn the_architecture_walk_names_only_files_that_exist() {
    let root = workspace_root();
    let text = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let mut named = 0;
    for quoted in text.split('`').skip(1).step_by(2) {
        let looks_like_a_path = quoted.contains('/')
            && !quoted.contains(' ')
            && quoted
                .rsplit('.')
                .next()
                .is_some_and(|ext| ["rs", "lua", "proto", "yaml", "toml", "md"].contains(&ext));
        if looks_like_a_path {
            named += 1;
            assert!(
                root.join(quoted).exists(),
                "ARCHITECTURE.md names {quoted}, which is not in the repository"
            );
        }
    }
    assert!(named >= 30, "the walk names real files: only {named} found");
}
