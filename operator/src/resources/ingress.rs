//! The optional `<name>-server` Ingress (networking.k8s.io/v1) routing a host to the servers,
//! with WebSocket-friendly proxy timeouts.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};

use super::{BuildError, Component, Owner};
use crate::api::SignalingCluster;
use crate::names;

/// Annotations the operator adds unless the spec sets the same keys: ingress-nginx closes
/// proxied connections idle for 60 s by default, which would cut quiet WebSockets (pings run
/// every 20 s, but a long read timeout also covers slow clients). Other controllers ignore them.
pub const WEBSOCKET_TIMEOUT_ANNOTATIONS: [(&str, &str); 2] = [
    ("nginx.ingress.kubernetes.io/proxy-read-timeout", "3600"),
    ("nginx.ingress.kubernetes.io/proxy-send-timeout", "3600"),
];

/// The Ingress for `sc`, or `None` when `ingress.enabled` is false (or no host is set, which
/// the CRD's CEL rule refuses anyway).
pub fn desired_ingress(sc: &SignalingCluster) -> Result<Option<Ingress>, BuildError> {
    let spec = &sc.spec.ingress;
    let Some(host) = spec.host.as_ref().filter(|_| spec.enabled) else {
        return Ok(None);
    };
    let owner = Owner::of(sc)?;
    let mut annotations: BTreeMap<String, String> = WEBSOCKET_TIMEOUT_ANNOTATIONS
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    annotations.extend(spec.annotations.clone());
    let mut metadata = owner.meta(names::server(&owner.name), Component::Server);
    metadata.annotations = Some(annotations);
    Ok(Some(Ingress {
        metadata,
        spec: Some(IngressSpec {
            ingress_class_name: spec.class_name.clone(),
            rules: Some(vec![IngressRule {
                host: Some(host.clone()),
                http: Some(HTTPIngressRuleValue {
                    // `/` rather than `/webrtc`: the demo page and its script are served too.
                    paths: vec![HTTPIngressPath {
                        path: Some("/".to_owned()),
                        path_type: "Prefix".to_owned(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: names::server(&owner.name),
                                port: Some(ServiceBackendPort {
                                    name: Some("http".to_owned()),
                                    ..ServiceBackendPort::default()
                                }),
                            }),
                            ..IngressBackend::default()
                        },
                    }],
                }),
            }]),
            tls: spec.tls_secret_name.as_ref().map(|secret| {
                vec![IngressTLS {
                    hosts: Some(vec![host.clone()]),
                    secret_name: Some(secret.clone()),
                }]
            }),
            ..IngressSpec::default()
        }),
        ..Ingress::default()
    }))
}
