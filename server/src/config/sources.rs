//! Where raw setting values come from: the environment ([`Env`]), the YAML
//! file (read through [`Files`]) and the flags the command line gave
//! (parsed in [`super::cli`]), and which one wins: flag, then environment,
//! then file. Nothing here knows a setting's type.

use std::collections::{BTreeMap, HashMap};

use super::settings::{self, Meta};
use super::values::split_list;
use super::{ConfigError, CONFIG_ENV, CONFIG_FLAG};

/// Where environment variables come from.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Where files named by settings (config file, secret files) are read from.
pub trait Files {
    fn read(&self, path: &str) -> std::io::Result<String>;
}

/// The real file system.
pub struct RealFiles;

impl Files for RealFiles {
    fn read(&self, path: &str) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }
}

impl Files for HashMap<String, String> {
    fn read(&self, path: &str) -> std::io::Result<String> {
        self.get(path).cloned().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory")
        })
    }
}

/// A raw value before typing: a scalar, or a list (YAML sequence or comma-separated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Raw {
    Scalar(String),
    List(Vec<String>),
}

/// The three sources of one load.
pub struct Sources<'a> {
    /// Flag values by YAML key.
    pub flags: HashMap<&'static str, String>,
    pub env: &'a dyn Env,
    /// File values by dotted YAML key.
    pub file: BTreeMap<String, Raw>,
}

impl Sources<'_> {
    /// The winning raw value of a setting: flag, then env, then file.
    pub fn get(&self, st: &Meta) -> Option<Raw> {
        let from_text = |v: String| {
            if st.list {
                Raw::List(split_list(&v))
            } else {
                Raw::Scalar(v)
            }
        };
        if let Some(v) = self.flags.get(st.key) {
            return Some(from_text(v.clone()));
        }
        if let Some(v) = self.env.var(st.env) {
            return Some(from_text(v));
        }
        self.file.get(st.key).cloned()
    }
}

fn file_label(path: &str) -> String {
    format!("config file {path} ({CONFIG_ENV} / {CONFIG_FLAG})")
}

/// Reads and flattens the config file at `path`; problems go to `errors`.
pub fn read_file(
    path: &str,
    files: &dyn super::Files,
    errors: &mut Vec<ConfigError>,
) -> BTreeMap<String, Raw> {
    let text = match files.read(path) {
        Ok(text) => text,
        Err(e) => {
            errors.push(ConfigError {
                setting: file_label(path),
                message: format!("cannot read: {e}"),
            });
            return BTreeMap::new();
        }
    };
    match serde_yaml::from_str::<serde_yaml::Value>(&text) {
        Ok(doc) => flatten_yaml(&doc, path, errors),
        Err(e) => {
            errors.push(ConfigError {
                setting: file_label(path),
                message: format!("invalid YAML: {}", one_line(&e.to_string())),
            });
            BTreeMap::new()
        }
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Flattens a YAML mapping into dotted keys; unknown keys and wrong shapes are errors.
fn flatten_yaml(
    doc: &serde_yaml::Value,
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> BTreeMap<String, Raw> {
    let mut out = BTreeMap::new();
    match doc {
        serde_yaml::Value::Mapping(map) => walk("", map, path, &mut out, errors),
        serde_yaml::Value::Null => {}
        _ => errors.push(ConfigError {
            setting: file_label(path),
            message: "must be a YAML mapping".into(),
        }),
    }
    out
}

fn walk(
    prefix: &str,
    map: &serde_yaml::Mapping,
    path: &str,
    out: &mut BTreeMap<String, Raw>,
    errors: &mut Vec<ConfigError>,
) {
    for (k, v) in map {
        let Some(k) = k.as_str() else {
            errors.push(ConfigError {
                setting: format!("config file {path}"),
                message: "keys must be strings".into(),
            });
            continue;
        };
        let key = if prefix.is_empty() {
            k.to_owned()
        } else {
            format!("{prefix}.{k}")
        };
        match (v, settings::lookup(&key)) {
            (serde_yaml::Value::Mapping(inner), None) if settings::is_section(&key) => {
                walk(&key, inner, path, out, errors)
            }
            (_, None) => errors.push(ConfigError {
                setting: format!("{key} (config file {path})"),
                message: "unknown setting".into(),
            }),
            (serde_yaml::Value::Null, Some(_)) => {}
            (v, Some(st)) if st.structured => match v {
                // A scalar is already the document's text (e.g. a JSON string).
                serde_yaml::Value::String(t) => {
                    out.insert(key, Raw::Scalar(t.clone()));
                }
                v => match serde_yaml::to_string(v) {
                    Ok(t) => {
                        out.insert(key, Raw::Scalar(t));
                    }
                    Err(_) => errors.push(ConfigError::new(st, "cannot be read back as YAML")),
                },
            },
            (serde_yaml::Value::Sequence(items), Some(st)) if st.list => {
                let mut list = Vec::new();
                for item in items {
                    match scalar_text(item) {
                        Some(t) => list.push(t),
                        None => errors.push(ConfigError::new(st, "list items must be strings")),
                    }
                }
                out.insert(key, Raw::List(list));
            }
            (v, Some(st)) => match scalar_text(v) {
                Some(t) if st.list => {
                    out.insert(key, Raw::List(split_list(&t)));
                }
                Some(t) => {
                    out.insert(key, Raw::Scalar(t));
                }
                None => errors.push(ConfigError::new(
                    st,
                    if st.list {
                        "expected a list of strings"
                    } else {
                        "expected a single value"
                    },
                )),
            },
        }
    }
}

fn scalar_text(v: &serde_yaml::Value) -> Option<String> {
    match v {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}
