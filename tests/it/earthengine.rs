//! The Earth Engine client against real servers on loopback.

mod calls;
mod python;
mod wire;
