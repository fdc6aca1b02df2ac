//! End-to-end tests: every remote is a real server on loopback.

mod backends;
mod bad_input;
mod cli;
mod daemon;
mod doctor;
mod download;
mod earthengine;
mod emulator;
mod export;
mod handoff;
mod ingest;
mod layers;
mod logs;
mod metrics;
mod queue;
mod security;
mod shared_bucket;
mod single_machine;
mod snapshot;
mod soak;
mod store;
mod submit;
mod support;
mod tracking;
