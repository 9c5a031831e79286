//! cnibridge: a Docker CNM network + IPAM plugin that gives containers the networking of the CNI
//! `bridge` and `host-local` plugins (Linux bridge, veth pair, host-local address store).
//!
//! Seams: `cnm` knows HTTP and JSON, `driver` knows the lifecycle, `ipam`, `dataplane`, `firewall`
//! and `state` each know one resource. The driver reaches the kernel only through the `Dataplane`
//! and `Firewall` traits. `serve` wires one running daemon, `control` is the operator's client of
//! its private methods, and `unix_client` the HTTP client both it and `dockerd` talk through.
//!
//! Imports flow one way: `serve` → `cnm` → `driver` → `cni`, `ipam`, `dataplane`, `firewall`,
//! `state` → the leaves `names` and `range`, which import nothing of the crate
//! (`tests/module_graph.rs` checks it). The driver takes and returns its own types; `cnm`
//! converts the wire to them.

pub mod cni;
pub mod cnm;
pub mod control;
pub mod dataplane;
pub mod dockerd;
pub mod driver;
pub mod firewall;
pub mod ipam;
pub mod names;
pub mod range;
pub mod serve;
pub mod state;
pub mod unix_client;
