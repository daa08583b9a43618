//! `flashsale`: one binary for every component of flashsale mesh.
//!
//! `main` parses the command line, loads and validates the configuration, starts telemetry and
//! hands over to the command. Configuration errors print one line naming the key and exit 2.

mod admin;
#[cfg(feature = "local")]
mod bench;
mod cli;
mod config;
mod health;
#[cfg(feature = "local")]
mod local;
mod serve;
#[cfg(feature = "local")]
mod up;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command, ConfigCommand};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match cli.load_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Command::Config(ConfigCommand::Check) = &cli.command {
        // Only the limiter and its sidecar read the rules; elsewhere the file may be absent.
        if let Some(path) = &config.limiter.rules_file {
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    if let Err(e) =
                        flashsale_limiter::RuleSet::parse(&text, &path.display().to_string())
                    {
                        eprintln!("error: limiter.rules_file: {e}");
                        return ExitCode::from(2);
                    }
                }
                Err(e) => eprintln!(
                    "warning: limiter.rules_file {}: {e} (the limiter would not start here)",
                    path.display()
                ),
            }
        }
        return match toml::to_string_pretty(&config) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args, config).await,
            #[cfg(feature = "local")]
            Command::Up(args) => up::run(args, config).await,
            Command::Health(args) => health::run(&args).await,
            Command::Migrate => serve::migrate(config).await,
            Command::Token(args) => admin::token(&args, &config),
            #[cfg(feature = "local")]
            Command::Bench(args) => Box::pin(bench::run(args, config)).await,
            Command::Sale(command) => admin::sale(command, &config).await,
            Command::Config(_) => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
