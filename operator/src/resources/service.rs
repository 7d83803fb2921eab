//! The `<name>-server` Service in front of the server pods, and the endpoint clients use.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{selector_labels, BuildError, Component, Owner};
use crate::api::SignalingCluster;
use crate::names;

/// The server Service for `sc`.
pub fn desired_service(sc: &SignalingCluster) -> Result<Service, BuildError> {
    let owner = Owner::of(sc)?;
    let spec = &sc.spec.service;
    let mut metadata = owner.meta(names::server(&owner.name), Component::Server);
    if !spec.annotations.is_empty() {
        metadata.annotations = Some(spec.annotations.clone());
    }
    Ok(Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(spec.type_.as_str().to_owned()),
            selector: Some(selector_labels(&owner.name, Component::Server)),
            ports: Some(vec![ServicePort {
                name: Some("http".to_owned()),
                protocol: Some("TCP".to_owned()),
                port: spec.port,
                target_port: Some(IntOrString::String("http".to_owned())),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

/// Base URL clients use: `https://<host>` (or `http://` without TLS) with an Ingress, else the
/// in-cluster Service URL. WebSockets live under `/webrtc/ws/{room}` of it.
pub fn endpoint(sc: &SignalingCluster) -> Result<String, BuildError> {
    let owner = Owner::of(sc)?;
    let ingress = &sc.spec.ingress;
    if let (true, Some(host)) = (ingress.enabled, ingress.host.as_deref()) {
        let scheme = if ingress.tls_secret_name.is_some() {
            "https"
        } else {
            "http"
        };
        return Ok(format!("{scheme}://{host}"));
    }
    let port = sc.spec.service.port;
    let host = format!("{}.{}.svc", names::server(&owner.name), owner.namespace);
    Ok(if port == 80 {
        format!("http://{host}")
    } else {
        format!("http://{host}:{port}")
    })
}
