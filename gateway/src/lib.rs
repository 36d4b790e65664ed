//! Switchyard: a routing gateway for ML inference.

pub mod testkit;
