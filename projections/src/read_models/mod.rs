//! The read models, one module each.

pub mod tasks;
pub mod users;
