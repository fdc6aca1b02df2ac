//! The Earth Engine client against real servers on loopback.

mod auth;
mod calls;
mod stub;
mod python;
mod wire;
