//! Transports: where messages come from and effects go. Each owns the
//! clock, threads and sockets the engine does not.

pub mod console;
pub mod http;
pub mod matrix;
pub mod notify;
pub mod web;
