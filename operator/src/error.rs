//! What can make a reconcile fail, the bounded label each failure is counted under, and the
//! note of the Warning event that starts a backoff. User errors are not here: they become
//! `ConfigValid=False` (see `resolve::ConfigError`).

use crate::config;
use crate::resources::BuildError;

/// What can make a reconcile fail (user errors are not here: they become `ConfigValid=False`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{verb} {kind} {name}: {source}")]
    Kube {
        verb: &'static str,
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("serializing {kind} {name}: {source}")]
    Serialize {
        kind: &'static str,
        name: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("building children: {0}")]
    Build(#[from] BuildError),
    #[error(transparent)]
    Render(#[from] config::RenderError),
    #[error("the random number generator failed: {0}")]
    Random(String),
    #[error("SignalingCluster has no namespace")]
    NoNamespace,
    /// A child's name is taken by an object this cluster does not own (a user's, or a
    /// previous cluster's awaiting garbage collection): never taken over.
    #[error("{kind} {name} already exists and is not owned by this SignalingCluster")]
    NotOwned { kind: &'static str, name: String },
}

impl Error {
    /// A bounded label for the failure metric (never a name or a message).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube { source, .. } => match source {
                kube::Error::Api(s) if s.code == 409 => "conflict",
                kube::Error::Api(s) if s.code == 403 => "forbidden",
                kube::Error::Api(s) if s.code == 404 => "not_found",
                kube::Error::Api(s) if s.code == 422 => "invalid",
                kube::Error::Api(s) if s.code >= 500 => "server_error",
                kube::Error::Api(_) => "api_error",
                _ => "transport",
            },
            Self::Serialize { .. } => "serialize",
            Self::Build(_) => "build",
            Self::Render(_) => "render",
            Self::Random(_) => "random",
            Self::NoNamespace => "no_namespace",
            Self::NotOwned { .. } => "not_owned",
        }
    }

    /// The note of the Warning event when a transient failure starts the backoff: the
    /// bounded label and the object, never an API server's message (the logs have it).
    pub fn event_note(&self) -> String {
        let object = match self {
            Self::Kube {
                verb, kind, name, ..
            } => format!(" ({verb} {kind} {name})"),
            Self::Serialize { kind, name, .. } => format!(" (serializing {kind} {name})"),
            _ => String::new(),
        };
        format!(
            "reconcile failed: {}{object}; retrying with backoff (the operator's log has the details)",
            self.metric_label()
        )
    }
}

pub(crate) fn kube_err(
    verb: &'static str,
    kind: &'static str,
    name: &str,
) -> impl FnOnce(kube::Error) -> Error {
    let name = name.to_owned();
    move |source| Error::Kube {
        verb,
        kind,
        name,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An API server's refusal with `code` of a `verb` on `kind` x.
    fn api_error(verb: &'static str, kind: &'static str, code: u16) -> Error {
        Error::Kube {
            verb,
            kind,
            name: "x".into(),
            source: kube::Error::Api(
                kube::core::Status::failure("m", "r")
                    .with_code(code)
                    .boxed(),
            ),
        }
    }

    #[test]
    fn every_metric_label_is_registered_up_front() {
        let api = |code| api_error("get", "Secret", code);
        let json_error = serde_json::from_str::<u32>("x").unwrap_err();
        let yaml_error = serde_yaml::from_str::<u32>("x").unwrap_err();
        let errors = vec![
            api(409),
            api(403),
            api(404),
            api(422),
            api(500),
            api(400),
            Error::Kube {
                verb: "get",
                kind: "Secret",
                name: "x".into(),
                source: kube::Error::LinesCodecMaxLineLengthExceeded,
            },
            Error::Serialize {
                kind: "Secret",
                name: "x".into(),
                source: json_error,
            },
            Error::Build(BuildError::MissingMetadata("uid")),
            Error::Render(config::RenderError::from(yaml_error)),
            Error::Random("x".into()),
            Error::NoNamespace,
            Error::NotOwned {
                kind: "Deployment",
                name: "x".into(),
            },
        ];
        let labels: std::collections::BTreeSet<&str> =
            errors.iter().map(Error::metric_label).collect();
        assert_eq!(labels.len(), errors.len(), "two errors share a label");
        for label in labels {
            assert!(
                crate::metrics::FAILURE_LABELS.contains(&label),
                "{label} is not pre-registered"
            );
        }
    }

    #[test]
    fn error_labels_are_bounded() {
        let e = Error::NoNamespace;
        assert_eq!(e.metric_label(), "no_namespace");
        let api = |code| api_error("apply", "Deployment", code);
        assert_eq!(api(409).metric_label(), "conflict");
        assert_eq!(api(403).metric_label(), "forbidden");
        assert_eq!(api(503).metric_label(), "server_error");
        assert_eq!(api(400).metric_label(), "api_error");
    }
}
