//! The Earth Engine client against real servers on loopback.

mod python;
mod wire;
