//! Fixtures shared by the crate's unit tests; compiled only for tests.

use kube::core::ObjectMeta;

use crate::api::{SignalingCluster, SignalingClusterSpec};

/// A `SignalingCluster` named `demo` in namespace `x`, as the API server would
/// return it (with a uid, so owner references can be built).
pub(crate) fn demo_cluster(spec: SignalingClusterSpec) -> SignalingCluster {
    let mut sc = SignalingCluster::new("demo", spec);
    sc.metadata = ObjectMeta {
        name: Some("demo".into()),
        namespace: Some("x".into()),
        uid: Some("uid-1".into()),
        ..ObjectMeta::default()
    };
    sc
}
