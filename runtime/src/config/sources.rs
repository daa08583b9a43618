//! Where configuration comes from besides the defaults and the file: a secrets directory (one
//! file a key) and `FLASHSALE_*` environment variables, each a figment provider.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use figment::{
    Metadata, Profile, Provider,
    value::{Dict, Map, Value},
};

use super::{ConfigError, ENV_PREFIX};

/// The files of a secrets directory as a figment provider: file `a.b` sets key `a.b`.
pub(super) struct SecretFiles {
    dir: PathBuf,
    dict: Dict,
}

impl SecretFiles {
    pub(super) fn read(dir: &Path) -> Result<Self, ConfigError> {
        let file_error = |source| ConfigError::File {
            path: dir.to_path_buf(),
            source,
        };
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .map_err(file_error)?
            .collect::<Result<_, _>>()
            .map_err(file_error)?;
        entries.sort_by_key(std::fs::DirEntry::file_name);
        let mut dict = Dict::new();
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            // A mounted Secret keeps its data behind `..data` links; only the visible names count.
            if name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            // Follows the volume's symbolic links; subdirectories are not keys.
            if !std::fs::metadata(&path).map_err(file_error)?.is_file() {
                continue;
            }
            let mut value = std::fs::read_to_string(&path).map_err(|source| ConfigError::File {
                path: path.clone(),
                source,
            })?;
            if value.ends_with('\n') {
                value.pop();
                if value.ends_with('\r') {
                    value.pop();
                }
            }
            let key: Vec<String> = name.split('.').map(str::to_owned).collect();
            if key.iter().any(String::is_empty) {
                return Err(ConfigError::Parse {
                    key: name,
                    origin: format!(" (from {})", path.display()),
                    message: "a secret file is named by a dotted key, e.g. `postgres.url`".into(),
                });
            }
            // Secrets are text: never reinterpreted as numbers or booleans.
            insert_path(&mut dict, &key, Value::from(value));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            dict,
        })
    }
}

impl Provider for SecretFiles {
    fn metadata(&self) -> Metadata {
        Metadata::named(format!("secret files in {}", self.dir.display()))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut map = BTreeMap::new();
        map.insert(Profile::Default, self.dict.clone());
        Ok(map)
    }
}

/// The `FLASHSALE_*__*` environment variables as a figment provider.
pub(super) struct EnvOverrides {
    dict: Dict,
}

impl EnvOverrides {
    pub(super) fn from_pairs(vars: &[(String, String)]) -> Self {
        let mut dict = Dict::new();
        for (name, value) in vars {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if !rest.contains("__") {
                continue;
            }
            let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            if path.iter().any(String::is_empty) {
                continue;
            }
            let value: Value = value.parse().unwrap_or_else(|_| Value::from(value.clone()));
            insert_path(&mut dict, &path, value);
        }
        Self { dict }
    }
}

fn insert_path(dict: &mut Dict, path: &[String], value: Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry(first.clone())
                .or_insert_with(|| Value::from(Dict::new()));
            if entry.as_dict().is_none() {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            }
        }
    }
}

impl Provider for EnvOverrides {
    fn metadata(&self) -> Metadata {
        Metadata::named(format!("`{ENV_PREFIX}` environment variable(s)"))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut map = BTreeMap::new();
        map.insert(Profile::Default, self.dict.clone());
        Ok(map)
    }
}
