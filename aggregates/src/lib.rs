//! Chronicle's aggregates: commands, events and errors, and the pure domain
//! logic that turns one into the other. No I/O here beyond `Services` traits.
#![forbid(unsafe_code)]

pub mod task;
pub mod user;
pub mod validation;
