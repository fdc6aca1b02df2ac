//! End-to-end tests: every remote is a real server on loopback.

mod cli;
mod daemon;
mod earthengine;
mod emulator;
mod queue;
mod store;
