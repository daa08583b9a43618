//! `flashsale-deploycheck`: the offline deployment checks, by hand.
//!
//! ```text
//! flashsale-deploycheck                      # everything the test suite checks
//! flashsale-deploycheck --values mine.yaml   # the chart with your values
//! flashsale-deploycheck generate             # rewrite k8s/ files rendered from the chart
//! ```

use std::{path::PathBuf, process::ExitCode, time::Instant};

use clap::{Parser, Subcommand};
use flashsale_deploycheck::{Error, Problem, Rendering, Tools, render, repo_root, suite};

/// Render the Helm chart and the kustomize overlays, then validate, lint, scan and check them.
#[derive(Debug, Parser)]
#[command(name = "flashsale-deploycheck", version)]
struct Cli {
    /// Check the chart rendered with these values files (in order) instead of the repository's
    /// own renderings.
    #[arg(long, value_name = "FILE")]
    values: Vec<PathBuf>,

    #[command(subcommand)]
    command: Option<Commands>,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Rewrite the kustomize files that are the chart rendered (k8s/base, k8s/components).
    Generate,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(problems) if problems.is_empty() => ExitCode::SUCCESS,
        Ok(problems) => {
            for problem in &problems {
                println!("  {problem}");
            }
            println!("{} problem(s)", problems.len());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: &Cli) -> Result<Vec<Problem>, Error> {
    let root = repo_root();
    let tools = Tools::locate(&root)?;
    if let Some(Commands::Generate) = cli.command {
        for file in render::GENERATED {
            let text = render::generate(&tools, &root, file)?;
            let path = root.join(file.path);
            std::fs::write(&path, text).map_err(|source| Error::Io { path, source })?;
            println!("wrote {}", file.path);
        }
        return Ok(Vec::new());
    }

    let started = Instant::now();
    let mut problems = Vec::new();
    let renderings = if cli.values.is_empty() {
        step(
            "helm lint --strict",
            &mut problems,
            suite::lint(&tools, &root),
        )?;
        step(
            "generated files",
            &mut problems,
            suite::drift(&tools, &root),
        )?;
        render::all(&tools, &root)?
    } else {
        let text = render::helm(&tools, &render::chart_dir(&root), &cli.values, &[])?;
        vec![Rendering::parse("helm --values", text)?]
    };
    println!(
        "rendered {}: {} resources",
        renderings
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        renderings.iter().map(|r| r.resources.len()).sum::<usize>()
    );
    step(
        "semantic checks",
        &mut problems,
        Ok(suite::semantics(&renderings)),
    )?;
    step(
        "kubernetes-validate",
        &mut problems,
        suite::validate(&renderings, &tools),
    )?;
    step(
        "yamllint",
        &mut problems,
        suite::yaml(&renderings, &tools, &root),
    )?;
    step(
        "checkov",
        &mut problems,
        suite::security(&renderings, &tools, &root),
    )?;
    println!("checked in {:.1}s", started.elapsed().as_secs_f64());
    Ok(problems)
}

fn step(
    name: &str,
    problems: &mut Vec<Problem>,
    found: Result<Vec<Problem>, Error>,
) -> Result<(), Error> {
    let found = found?;
    println!(
        "{name}: {}",
        if found.is_empty() {
            "ok".to_owned()
        } else {
            format!("{} problem(s)", found.len())
        }
    );
    problems.extend(found);
    Ok(())
}
