//! The Earth Engine client against real servers on loopback.

mod auth;
mod calls;
mod python;
mod stub;
mod wire;
