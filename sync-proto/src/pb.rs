//! Generated protobuf types, in the incumbent's packages and field numbers.
//!
//! Resource specs carry pbjson serde impls (the universal JSON/YAML mapping);
//! the KDS envelope and service use `envoy-types` for Envoy's messages.

#![allow(clippy::all, missing_docs, unreachable_pub)]

pub mod kuma {
    pub mod mesh {
        pub mod v1alpha1 {
            include!(concat!(env!("OUT_DIR"), "/resources/kuma.mesh.v1alpha1.rs"));
            include!(concat!(env!("OUT_DIR"), "/resources/kuma.mesh.v1alpha1.serde.rs"));
        }
    }
    pub mod system {
        pub mod v1alpha1 {
            include!(concat!(env!("OUT_DIR"), "/resources/kuma.system.v1alpha1.rs"));
            include!(concat!(env!("OUT_DIR"), "/resources/kuma.system.v1alpha1.serde.rs"));
        }
    }
}

/// `kuma.mesh.v1alpha1.KumaResource` and the `KDSSyncService` client and server.
pub mod kds {
    include!(concat!(env!("OUT_DIR"), "/kds/kuma.mesh.v1alpha1.rs"));
}

pub use kuma::mesh::v1alpha1 as mesh;
pub use kuma::system::v1alpha1 as system;
