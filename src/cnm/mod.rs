//! The Docker side: wire types, their conversion to and from the driver's types, the HTTP
//! router, error mapping, the unix socket. No kernel calls here: handlers decode, convert,
//! call the driver or the IPAM, and encode.

pub mod convert;
mod error_bodies;
pub mod router;
pub mod server;
pub mod types;

pub use router::router;
