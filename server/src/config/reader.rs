//! Typed access to the winning value of a setting constant, recording every
//! problem instead of stopping at the first, so a load reports them all.

use super::settings::{Meta, Optional, Parse, Setting};
use super::sources::{Raw, Sources};
use super::{ConfigError, Files, Secret};

/// What a secret setting (inline or `_file`) came to.
pub enum SecretSetting {
    /// Neither setting is set.
    Unset,
    /// Set, but unusable; the error is already recorded.
    Failed,
    /// The secret and the setting that supplied it.
    Set(Secret, Meta),
}

pub struct Reader<'a> {
    sources: &'a Sources<'a>,
    pub files: &'a dyn Files,
    pub errors: Vec<ConfigError>,
}

/// A raw value in the shape its setting expects.
enum Input {
    Text(String),
    List(Vec<String>),
}

impl<'a> Reader<'a> {
    pub fn new(sources: &'a Sources<'a>, files: &'a dyn Files, errors: Vec<ConfigError>) -> Self {
        Reader {
            sources,
            files,
            errors,
        }
    }

    /// Records a problem with `setting`.
    pub fn err(&mut self, setting: &Meta, message: impl Into<String>) {
        self.errors.push(ConfigError::new(setting, message));
    }

    /// The setting's value, or its default when unset or invalid (the
    /// problem is recorded; later checks then see a sane value).
    pub fn get<T: Clone>(&mut self, s: &Setting<T>) -> T {
        if let Some(v) = self
            .input(&s.meta)
            .and_then(|i| self.parse(&s.meta, &s.parse, i))
        {
            return v;
        }
        let default = if s.meta.list {
            Input::List(super::values::split_list(s.default))
        } else {
            Input::Text(s.default.to_owned())
        };
        match typed(&s.parse, default) {
            Ok(v) => v,
            // The table is a compile-time constant and a unit test parses
            // every default; this cannot be reached from any input.
            Err(e) => panic!("built-in default of {} does not parse: {e}", s.meta.key),
        }
    }

    /// Whether some source sets `st` (an empty single value counts as unset, as in [`Reader::get`]).
    pub fn is_set(&self, st: &Meta) -> bool {
        match self.sources.get(st) {
            None => false,
            Some(Raw::Scalar(v)) => !v.trim().is_empty(),
            Some(Raw::List(_)) => true,
        }
    }

    /// The setting's value; `None` when unset or invalid (recorded).
    pub fn opt<T: Clone>(&mut self, s: &Optional<T>) -> Option<T> {
        let input = self.input(&s.meta)?;
        self.parse(&s.meta, &s.parse, input)
    }

    /// A secret given inline or through a file; both at once is an error.
    pub fn secret(&mut self, inline: &Optional<Secret>, file: &Optional<String>) -> Option<Secret> {
        match self.sourced_secret(inline, file) {
            SecretSetting::Set(secret, _) => Some(secret),
            SecretSetting::Unset | SecretSetting::Failed => None,
        }
    }

    /// Like [`Reader::secret`], also saying which setting supplied the value,
    /// or that an error about it has already been reported.
    pub fn sourced_secret(
        &mut self,
        inline: &Optional<Secret>,
        file: &Optional<String>,
    ) -> SecretSetting {
        match (self.opt(inline), self.opt(file)) {
            (Some(v), Some(_)) => {
                self.err(
                    &file.meta,
                    format!(
                        "set either {} or {}, not both",
                        inline.meta.key, file.meta.key
                    ),
                );
                // Keep going with one of them so this is the only error reported.
                SecretSetting::Set(v, inline.meta)
            }
            (Some(v), None) => SecretSetting::Set(v, inline.meta),
            (None, Some(path)) => match self.files.read(&path) {
                Ok(content) => {
                    let v = content.trim();
                    if v.is_empty() {
                        self.err(&file.meta, format!("file {path} is empty"));
                        SecretSetting::Failed
                    } else {
                        SecretSetting::Set(Secret::new(v), file.meta)
                    }
                }
                Err(e) => {
                    self.err(&file.meta, format!("cannot read {path}: {e}"));
                    SecretSetting::Failed
                }
            },
            (None, None) => SecretSetting::Unset,
        }
    }

    /// The winning raw value in the setting's shape; `None` when unset.
    fn input(&mut self, st: &Meta) -> Option<Input> {
        match self.sources.get(st)? {
            Raw::List(v) if st.list => Some(Input::List(v)),
            Raw::Scalar(v) if st.list => Some(Input::List(super::values::split_list(&v))),
            Raw::Scalar(v) => {
                let v = v.trim();
                // An empty single value counts as unset.
                (!v.is_empty()).then(|| Input::Text(v.to_owned()))
            }
            Raw::List(_) => {
                self.err(st, "expected a single value, got a list");
                None
            }
        }
    }

    fn parse<T: Clone>(&mut self, st: &Meta, parse: &Parse<T>, input: Input) -> Option<T> {
        match typed(parse, input) {
            Ok(v) => Some(v),
            Err(e) => {
                self.err(st, e);
                None
            }
        }
    }
}

fn typed<T: Clone>(parse: &Parse<T>, input: Input) -> Result<T, String> {
    match (parse, input) {
        (Parse::Text(f), Input::Text(v)) => f(&v),
        (Parse::List(f), Input::List(v)) => f(v),
        (Parse::OneOf(words), Input::Text(v)) => words
            .iter()
            .find(|(w, _)| w.eq_ignore_ascii_case(&v))
            .map(|(_, t)| t.clone())
            .ok_or_else(|| {
                let names: Vec<&str> = words.iter().map(|(w, _)| *w).collect();
                format!("expected one of {}, got {v:?}", names.join(", "))
            }),
        // `input` follows `Meta::list`, which follows the parser's kind.
        (Parse::List(f), Input::Text(v)) => f(super::values::split_list(&v)),
        (Parse::Text(_) | Parse::OneOf(_), Input::List(_)) => {
            Err("expected a single value, got a list".to_owned())
        }
    }
}
