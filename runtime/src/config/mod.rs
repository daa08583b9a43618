//! Typed configuration: defaults, then a TOML file, then secret files, then `FLASHSALE_*`
//! environment variables.
//!
//! Every service reads one document. Each layer overrides the one before it:
//!
//! 1. the defaults of the Rust types (`Default`),
//! 2. an optional TOML file (`--config FILE`),
//! 3. an optional secrets directory (`--secrets-dir DIR`): each file is named by the dotted key
//!    it sets and holds its value, e.g. a file `postgres.url` containing
//!    `postgres://flashsale:…@db:5432/flashsale` (one trailing newline is dropped). This is how
//!    a Kubernetes Secret mounted as a volume reaches the configuration without passing through
//!    the environment; names starting with `.` (the volume's own bookkeeping) are skipped,
//! 4. environment variables `FLASHSALE_<SECTION>__<KEY>=value` (`__` nests; e.g.
//!    `FLASHSALE_REDIS__COMMAND_TIMEOUT=50ms` sets `redis.command_timeout`). Variables without
//!    `__` are not configuration and are ignored (`FLASHSALE_CONFIG` names the file, say).
//!
//! The result is then checked by [`Validate`] before any port is bound. Every error names the
//! key that is wrong and where the bad value came from, on one line.
//!
//! Parsing never reads the process environment by itself: callers pass the variables in, so tests
//! stay independent of each other ([`Loader::with_env`]).

mod backends;
mod sources;

pub use backends::{NatsConfig, PostgresConfig, RedisConfig, ServerConfig};
use sources::{EnvOverrides, SecretFiles};

use std::{
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use figment::{
    Figment,
    providers::{Format, Toml},
};
use secrecy::SecretString;
use serde::de::DeserializeOwned;

/// Prefix of the environment variables that override configuration.
pub const ENV_PREFIX: &str = "FLASHSALE_";

/// A configuration that could not be loaded or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The named file does not exist or cannot be read.
    #[error("config file {path}: {source}")]
    File {
        /// The file that was asked for.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// A value has the wrong type or shape, or a key is unknown.
    #[error("config key `{key}`{origin}: {message}")]
    Parse {
        /// Dotted path of the offending key, e.g. `redis.command_timeout`.
        key: String,
        /// Where the value came from, e.g. ` (from FLASHSALE_REDIS__COMMAND_TIMEOUT)`.
        origin: String,
        /// What is wrong with it.
        message: String,
    },
    /// Values parse but break a rule (a range, a relation between keys).
    #[error("config key `{}`: {}", .0.key, .0.reason)]
    Invalid(Invalid),
}

/// A rule a configuration value breaks, found by [`Validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// Dotted path of the key, e.g. `gateway.listen`.
    pub key: String,
    /// What is wrong, in words an operator can act on.
    pub reason: String,
}

impl Invalid {
    /// A broken rule for `key`.
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// Prefixes the key with the section it was found in: `listen` in `gateway` becomes
    /// `gateway.listen`.
    #[must_use]
    pub fn within(mut self, section: &str) -> Self {
        self.key = format!("{section}.{}", self.key);
        self
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

impl From<Invalid> for ConfigError {
    fn from(invalid: Invalid) -> Self {
        Self::Invalid(invalid)
    }
}

/// Rules a configuration section must satisfy beyond its types.
pub trait Validate {
    /// Checks the rules; the error's key is relative to this section.
    fn validate(&self) -> Result<(), Invalid>;
}

/// Loads a configuration of type `T` from defaults, an optional file and environment pairs.
#[derive(Debug, Default)]
pub struct Loader {
    file: Option<PathBuf>,
    secrets_dir: Option<PathBuf>,
    env: Vec<(String, String)>,
}

impl Loader {
    /// A loader with only the defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads this TOML file over the defaults; it must exist.
    #[must_use]
    pub fn with_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.file = Some(path.into());
        self
    }

    /// Reads secret values from the files in this directory, over the file and under the
    /// environment; it must exist.
    #[must_use]
    pub fn with_secrets_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.secrets_dir = Some(dir.into());
        self
    }

    /// Applies these environment variables last. Only `FLASHSALE_*` names with `__` count.
    #[must_use]
    pub fn with_env<K, V>(mut self, vars: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        self.env
            .extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Applies the process's environment variables last.
    #[must_use]
    pub fn with_process_env(self) -> Self {
        let vars: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        self.with_env(vars)
    }

    /// Merges the layers, deserializes them into `T` and validates the result.
    pub fn load<T>(&self) -> Result<T, ConfigError>
    where
        T: DeserializeOwned + Validate,
    {
        // Defaults come from `#[serde(default)]` on the types, not from serializing them: that
        // would pass secrets through their redacting `Serialize`.
        let mut figment = Figment::new();
        if let Some(path) = &self.file {
            // Toml::file ignores a missing file; a file the operator named must exist.
            std::fs::metadata(path).map_err(|source| ConfigError::File {
                path: path.clone(),
                source,
            })?;
            figment = figment.merge(Toml::file_exact(path));
        }
        if let Some(dir) = &self.secrets_dir {
            figment = figment.merge(SecretFiles::read(dir)?);
        }
        figment = figment.merge(EnvOverrides::from_pairs(&self.env));
        let config: T = figment.extract().map_err(parse_error)?;
        config.validate()?;
        Ok(config)
    }
}

/// Turns figment's error into one line naming the key and its source.
fn parse_error(error: figment::Error) -> ConfigError {
    let more = error.count().saturating_sub(1);
    let key = error.path.join(".");
    let origin = match &error.metadata {
        Some(md) if md.name.contains(ENV_PREFIX) => {
            format!(
                " (from {ENV_PREFIX}{})",
                key.replace('.', "__").to_uppercase()
            )
        }
        Some(md) => match &md.source {
            Some(figment::Source::File(path)) => format!(" (from {})", path.display()),
            _ => format!(" (from {})", md.name),
        },
        None => String::new(),
    };
    let mut message = error.kind.to_string();
    if more > 0 {
        message.push_str(&format!(" (and {more} more problem(s))"));
    }
    ConfigError::Parse {
        key: if key.is_empty() { "<root>".into() } else { key },
        origin,
        message,
    }
}

/// Checks that `value` lies in `min..=max`.
pub fn check_range(
    key: &str,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<(), Invalid> {
    if value < min || value > max {
        return Err(Invalid::new(
            key,
            format!(
                "{} is outside {}..={}",
                humantime::format_duration(value),
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        ));
    }
    Ok(())
}

/// Serde for a list of human-readable durations (`["1s", "5s"]`).
pub mod durations {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// Writes each duration as text.
    pub fn serialize<S: Serializer>(values: &[Duration], serializer: S) -> Result<S::Ok, S::Error> {
        values
            .iter()
            .map(|d| humantime::format_duration(*d).to_string())
            .collect::<Vec<_>>()
            .serialize(serializer)
    }

    /// Reads a list of `humantime` durations.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<Duration>, D::Error> {
        let values = Vec::<humantime_serde::Serde<Duration>>::deserialize(deserializer)?;
        Ok(values
            .into_iter()
            .map(humantime_serde::Serde::into_inner)
            .collect())
    }
}

/// Writes a secret as `"<redacted>"` so printed configs never leak it.
pub fn serialize_redacted<S: serde::Serializer>(
    _secret: &SecretString,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(REDACTED)
}

/// What a secret looks like in printed configuration.
pub const REDACTED: &str = "<redacted>";

/// Resolves a path relative to the config file's folder, when it is relative.
pub fn relative_to(config_file: Option<&Path>, path: &Path) -> PathBuf {
    match config_file.and_then(Path::parent) {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use figment::value::Value;
    use secrecy::ExposeSecret;
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Doc {
        server: ServerConfig,
        redis: RedisConfig,
    }

    impl Validate for Doc {
        fn validate(&self) -> Result<(), Invalid> {
            self.server.validate().map_err(|e| e.within("server"))?;
            self.redis.validate().map_err(|e| e.within("redis"))
        }
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn layers_apply_in_order() {
        let f = file("[server]\nrequest_timeout = \"3s\"\nmax_message_bytes = 2048\n");
        let doc: Doc = Loader::new()
            .with_file(f.path())
            .with_env([
                ("FLASHSALE_SERVER__REQUEST_TIMEOUT", "7s"),
                ("FLASHSALE_CONFIG", "x"),
            ])
            .load()
            .unwrap();
        assert_eq!(doc.server.request_timeout, Duration::from_secs(7));
        assert_eq!(doc.server.max_message_bytes, 2048);
        assert_eq!(doc.server.shutdown_grace, Duration::from_secs(20));
    }

    #[test]
    fn bad_env_value_names_key_and_variable() {
        let err = Loader::new()
            .with_env([("FLASHSALE_REDIS__COMMAND_TIMEOUT", "soon")])
            .load::<Doc>()
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("config key `redis.command_timeout`"),
            "{err}"
        );
        assert!(err.contains("FLASHSALE_REDIS__COMMAND_TIMEOUT"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }

    #[test]
    fn unknown_key_in_file_is_refused() {
        let f = file("[server]\nrequest_timout = \"3s\"\n");
        let err = Loader::new()
            .with_file(f.path())
            .load::<Doc>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("request_timout"), "{err}");
        assert!(err.contains(&f.path().display().to_string()), "{err}");
    }

    #[test]
    fn rule_violations_name_the_key() {
        let err = Loader::new()
            .with_env([("FLASHSALE_REDIS__URL", "http://x")])
            .load::<Doc>()
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("config key `redis.url`: must start with"),
            "{err}"
        );

        let err = Loader::new()
            .with_env([("FLASHSALE_SERVER__SHUTDOWN_GRACE", "1h")])
            .load::<Doc>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.shutdown_grace"), "{err}");
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = Loader::new()
            .with_file("/nonexistent/flashsale.toml")
            .load::<Doc>()
            .unwrap_err();
        assert!(matches!(err, ConfigError::File { .. }));
    }

    #[test]
    fn secrets_are_redacted_when_printed() {
        let doc: Doc = Loader::new()
            .with_env([("FLASHSALE_REDIS__URL", "redis://:hunter2@127.0.0.1:1")])
            .load()
            .unwrap();
        let printed = format!("{}{:?}", toml_like(&doc.redis), doc.redis);
        assert!(!printed.contains("hunter2"), "{printed}");
        assert_eq!(
            doc.redis.url.expose_secret(),
            "redis://:hunter2@127.0.0.1:1"
        );
    }

    #[test]
    fn secret_files_sit_between_the_file_and_the_environment() {
        let f = file("[redis]\nurl = \"redis://from-file:1\"\npool_size = 2\n");
        let dir = tempfile::tempdir().unwrap();
        // The layout of a mounted Secret: visible names link into a hidden, versioned folder.
        let data = dir.path().join("..2026_11_26_data");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("redis.url"), "redis://:s3cret@from-secret:1\n").unwrap();
        std::os::unix::fs::symlink(
            dir.path().join("..data/redis.url"),
            dir.path().join("redis.url"),
        )
        .unwrap();
        std::os::unix::fs::symlink(&data, dir.path().join("..data")).unwrap();

        let doc: Doc = Loader::new()
            .with_file(f.path())
            .with_secrets_dir(dir.path())
            .load()
            .unwrap();
        assert_eq!(
            doc.redis.url.expose_secret(),
            "redis://:s3cret@from-secret:1"
        );
        assert_eq!(doc.redis.pool_size, 2, "the file still applies");

        let doc: Doc = Loader::new()
            .with_secrets_dir(dir.path())
            .with_env([("FLASHSALE_REDIS__URL", "redis://from-env:1")])
            .load()
            .unwrap();
        assert_eq!(doc.redis.url.expose_secret(), "redis://from-env:1");
    }

    #[test]
    fn a_misnamed_secret_file_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("redis.ulr"), "redis://x:1").unwrap();
        let err = Loader::new()
            .with_secrets_dir(dir.path())
            .load::<Doc>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("redis.ulr"), "{err}");
        assert!(err.contains("secret files in"), "{err}");

        let err = Loader::new()
            .with_secrets_dir("/nonexistent/secrets")
            .load::<Doc>()
            .unwrap_err();
        assert!(matches!(err, ConfigError::File { .. }), "{err}");
    }

    fn toml_like<T: Serialize>(value: &T) -> String {
        figment::Figment::from(figment::providers::Serialized::defaults(value))
            .extract::<Value>()
            .map(|v| format!("{v:?}"))
            .unwrap()
    }
}
