//! The operator's side: the command-line clients of the daemon's private methods. The methods
//! themselves are served beside the plugin API, in `cnm::router`, on the same root-only socket.

pub mod client;

pub use client::{firewall_reload, ControlError};
