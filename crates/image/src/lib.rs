//! OCI and Docker images as sbxrun root images (crate docs: see below).
#![forbid(unsafe_code)]

pub mod config;
pub mod error;
pub mod ext4;
pub mod layers;
pub mod reference;
pub mod store;

pub use config::ImageConfig;
pub use error::{ErrorKind, ImageError};
pub use reference::{parse_source, ImageSource, RegistryRef};
