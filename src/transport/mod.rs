//! Transports: where messages come from and effects go. Each owns the
//! clock, threads and sockets the engine does not.

pub mod console;
pub mod http;
pub mod matrix;
pub mod notify;
pub mod web;

/// A response body of the HTTP listener's (its pages, its metrics, its
/// audit stream).
pub type Body = http_body_util::combinators::BoxBody<hyper::body::Bytes, std::convert::Infallible>;
