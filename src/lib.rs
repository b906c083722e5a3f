//! Chronicle's API process: configuration, telemetry, the HTTP API, command
//! execution and the wiring of relay and projections into one binary.
#![forbid(unsafe_code)]

pub mod accounts;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod commands;
pub mod config;
pub mod consistency;
pub mod dead_letters;
pub mod event_repository;
pub mod file_blobs;
pub mod http;
pub mod llm;
pub mod mcp;
pub mod secrets;
pub mod startup;
pub mod state;
pub mod telemetry;

pub use config::Settings;
pub use startup::{Application, Components};
