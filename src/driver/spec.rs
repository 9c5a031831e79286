//! What the driver's operations take and give, in the driver's own terms, so any front end
//! (Docker's remote API in `cnm`, the operator's CLI, a CNI front end) reaches the lifecycle
//! without speaking Docker's wire format. `cnm` converts its wire types to and from these.
//!
//! Addresses arrive as the front end got them and are checked by the driver, so every front
//! end gets the same checks and the same messages, in the same order as the other checks.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

/// Docker's generic options (`-o` flags, port bindings, exposed ports): JSON values by key,
/// as libnetwork passes them; `options` and `ports` give them meaning.
pub type GenericOptions = serde_json::Map<String, serde_json::Value>;

/// One address family's pool data of a network: the pool, its gateway and aux addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpamFamily {
    /// The address space the pool came from (ours when cnibridge's IPAM granted it).
    pub address_space: String,
    /// The pool, CIDR.
    pub pool: String,
    /// The gateway with prefix length; empty when none.
    pub gateway: String,
    /// Reserved addresses with prefix length, by name.
    pub aux_addresses: BTreeMap<String, String>,
}

/// A network to create.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NetworkSpec {
    pub network_id: String,
    pub options: GenericOptions,
    /// IPv4 pool data; the driver takes at most one per family.
    pub ipv4: Vec<IpamFamily>,
    pub ipv6: Vec<IpamFamily>,
}

/// An endpoint to create; empty address or MAC fields mean "not given".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointSpec {
    pub network_id: String,
    pub endpoint_id: String,
    /// IPv4 address with prefix length.
    pub address: String,
    /// IPv6 address with prefix length.
    pub address_ipv6: String,
    pub mac_address: String,
    /// CreateEndpoint's `Options`: Docker's port options and the endpoint's driver-opts
    /// (`cni.bandwidth.*`).
    pub options: GenericOptions,
}

/// What CreateEndpoint reports back: only what the caller left empty may be filled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointAnswer {
    /// The MAC the driver chose, when the caller gave none.
    pub mac_address: Option<String>,
}

/// A route the container gets besides its default route, via a next hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticRoute {
    pub destination: IpNet,
    pub next_hop: IpAddr,
}

/// What Join answers: the interface to move into the sandbox and how to route it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinAnswer {
    /// The container end of the veth pair, in the host namespace.
    pub src_name: String,
    /// The name prefix the interface gets inside the container.
    pub dst_prefix: String,
    /// The IPv4 default route's gateway; none = no default route.
    pub gateway: Option<IpAddr>,
    pub gateway_ipv6: Option<IpAddr>,
    pub static_routes: Vec<StaticRoute>,
    /// Whether the caller must not attach its own way out (Docker's `docker_gwbridge`).
    pub disable_gateway_service: bool,
}
