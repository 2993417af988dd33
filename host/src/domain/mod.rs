//! The shared vocabulary, below everything else: templates, machines and requests in
//! provider terms, the lifecycle rules that derive HostFactory's statuses, and the provider
//! port. It imports nothing from the crate, so every layer can use it without a circle.

pub mod lifecycle;
pub mod model;
pub mod provider;
