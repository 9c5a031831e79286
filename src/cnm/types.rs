//! Wire types of the libnetwork remote NetworkDriver and IpamDriver APIs (cnm-protocol.md §2–3).
//!
//! Requests are lenient: every field may be absent or `null` (Go nil maps and slices), unknown
//! fields are ignored. Responses use Docker's exact key spelling.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// `null` and absent both become the type's default.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// `/Plugin.Activate` answer.
#[derive(Debug, Serialize)]
pub struct ActivateResponse {
    #[serde(rename = "Implements")]
    pub implements: Vec<&'static str>,
}

/// `/NetworkDriver.GetCapabilities` answer.
#[derive(Debug, Serialize)]
pub struct CapabilitiesResponse {
    #[serde(rename = "Scope")]
    pub scope: &'static str,
    #[serde(rename = "ConnectivityScope")]
    pub connectivity_scope: &'static str,
    #[serde(rename = "GwAllocChecker")]
    pub gw_alloc_checker: bool,
}

/// Pool data of one address family in CreateNetwork.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct IpamData {
    #[serde(rename = "AddressSpace", default, deserialize_with = "null_default")]
    pub address_space: String,
    #[serde(rename = "Pool", default, deserialize_with = "null_default")]
    pub pool: String,
    #[serde(rename = "Gateway", default, deserialize_with = "null_default")]
    pub gateway: String,
    #[serde(rename = "AuxAddresses", default, deserialize_with = "null_default")]
    pub aux_addresses: BTreeMap<String, String>,
}

/// `/NetworkDriver.CreateNetwork` request.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CreateNetworkRequest {
    #[serde(rename = "NetworkID", default, deserialize_with = "null_default")]
    pub network_id: String,
    #[serde(rename = "Options", default, deserialize_with = "null_default")]
    pub options: Map<String, Value>,
    #[serde(rename = "IPv4Data", default, deserialize_with = "null_default")]
    pub ipv4_data: Vec<IpamData>,
    #[serde(rename = "IPv6Data", default, deserialize_with = "null_default")]
    pub ipv6_data: Vec<IpamData>,
}

/// Requests that only name a network (DeleteNetwork, FreeNetwork).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NetworkRequest {
    #[serde(rename = "NetworkID", default, deserialize_with = "null_default")]
    pub network_id: String,
}

/// Requests that name an endpoint (Leave, DeleteEndpoint, EndpointOperInfo, Revoke…).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct EndpointRequest {
    #[serde(rename = "NetworkID", default, deserialize_with = "null_default")]
    pub network_id: String,
    #[serde(rename = "EndpointID", default, deserialize_with = "null_default")]
    pub endpoint_id: String,
    #[serde(rename = "Options", default, deserialize_with = "null_default")]
    pub options: Map<String, Value>,
}

/// The `Interface` of CreateEndpoint, request and answer.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct EndpointInterface {
    #[serde(
        rename = "Address",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub address: String,
    #[serde(
        rename = "AddressIPv6",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub address_ipv6: String,
    #[serde(
        rename = "MacAddress",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub mac_address: String,
}

/// `/NetworkDriver.CreateEndpoint` request.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CreateEndpointRequest {
    #[serde(rename = "NetworkID", default, deserialize_with = "null_default")]
    pub network_id: String,
    #[serde(rename = "EndpointID", default, deserialize_with = "null_default")]
    pub endpoint_id: String,
    #[serde(rename = "Interface", default, deserialize_with = "null_default")]
    pub interface: EndpointInterface,
    #[serde(rename = "Options", default, deserialize_with = "null_default")]
    pub options: Map<String, Value>,
}

/// `/NetworkDriver.CreateEndpoint` answer: only fields Docker left empty may be filled.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CreateEndpointResponse {
    #[serde(rename = "Interface", skip_serializing_if = "Option::is_none")]
    pub interface: Option<EndpointInterface>,
}

/// `/NetworkDriver.Join` request.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct JoinRequest {
    #[serde(rename = "NetworkID", default, deserialize_with = "null_default")]
    pub network_id: String,
    #[serde(rename = "EndpointID", default, deserialize_with = "null_default")]
    pub endpoint_id: String,
    #[serde(rename = "SandboxKey", default, deserialize_with = "null_default")]
    pub sandbox_key: String,
    #[serde(rename = "Options", default, deserialize_with = "null_default")]
    pub options: Map<String, Value>,
}

/// Join's `InterfaceName`.
#[derive(Debug, Clone, Serialize)]
pub struct InterfaceName {
    #[serde(rename = "SrcName")]
    pub src_name: String,
    #[serde(rename = "DstPrefix")]
    pub dst_prefix: String,
}

/// One Join static route; `RouteType` 0 = via `NextHop`, 1 = connected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StaticRoute {
    #[serde(rename = "Destination")]
    pub destination: String,
    #[serde(rename = "RouteType")]
    pub route_type: u8,
    #[serde(rename = "NextHop", skip_serializing_if = "String::is_empty")]
    pub next_hop: String,
}

/// `/NetworkDriver.Join` answer.
#[derive(Debug, Clone, Serialize)]
pub struct JoinResponse {
    #[serde(rename = "InterfaceName")]
    pub interface_name: InterfaceName,
    #[serde(rename = "Gateway", skip_serializing_if = "String::is_empty")]
    pub gateway: String,
    #[serde(rename = "GatewayIPv6", skip_serializing_if = "String::is_empty")]
    pub gateway_ipv6: String,
    #[serde(rename = "StaticRoutes")]
    pub static_routes: Vec<StaticRoute>,
    #[serde(rename = "DisableGatewayService")]
    pub disable_gateway_service: bool,
}

/// `/NetworkDriver.GwAllocCheck` answer.
#[derive(Debug, Clone, Serialize)]
pub struct GwAllocCheckResponse {
    #[serde(rename = "SkipIPv4")]
    pub skip_ipv4: bool,
    #[serde(rename = "SkipIPv6")]
    pub skip_ipv6: bool,
}

/// `/IpamDriver.GetCapabilities` answer.
#[derive(Debug, Serialize)]
pub struct IpamCapabilitiesResponse {
    #[serde(rename = "RequiresMACAddress")]
    pub requires_mac_address: bool,
    #[serde(rename = "RequiresRequestReplay")]
    pub requires_request_replay: bool,
}

/// `/IpamDriver.GetDefaultAddressSpaces` answer.
#[derive(Debug, Serialize)]
pub struct AddressSpacesResponse {
    #[serde(rename = "LocalDefaultAddressSpace")]
    pub local: &'static str,
    #[serde(rename = "GlobalDefaultAddressSpace")]
    pub global: &'static str,
}

/// `/IpamDriver.RequestPool` request.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RequestPoolRequest {
    #[serde(rename = "AddressSpace", default, deserialize_with = "null_default")]
    pub address_space: String,
    #[serde(rename = "Pool", default, deserialize_with = "null_default")]
    pub pool: String,
    #[serde(rename = "SubPool", default, deserialize_with = "null_default")]
    pub sub_pool: String,
    #[serde(rename = "Options", default, deserialize_with = "null_default")]
    pub options: BTreeMap<String, String>,
    #[serde(rename = "V6", default, deserialize_with = "null_default")]
    pub v6: bool,
}

/// `/IpamDriver.RequestPool` answer.
#[derive(Debug, Clone, Serialize)]
pub struct RequestPoolResponse {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    #[serde(rename = "Pool")]
    pub pool: String,
    #[serde(rename = "Data")]
    pub data: BTreeMap<String, String>,
}

/// `/IpamDriver.ReleasePool` request.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ReleasePoolRequest {
    #[serde(rename = "PoolID", default, deserialize_with = "null_default")]
    pub pool_id: String,
}

/// `/IpamDriver.RequestAddress` and `ReleaseAddress` request.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AddressRequest {
    #[serde(rename = "PoolID", default, deserialize_with = "null_default")]
    pub pool_id: String,
    #[serde(rename = "Address", default, deserialize_with = "null_default")]
    pub address: String,
    #[serde(rename = "Options", default, deserialize_with = "null_default")]
    pub options: BTreeMap<String, String>,
}

/// `/IpamDriver.RequestAddress` answer.
#[derive(Debug, Clone, Serialize)]
pub struct RequestAddressResponse {
    #[serde(rename = "Address")]
    pub address: String,
    #[serde(rename = "Data")]
    pub data: BTreeMap<String, String>,
}

/// The value of `RequestAddressType` that marks the gateway request.
pub const REQUEST_ADDRESS_TYPE: &str = "RequestAddressType";
/// See [`REQUEST_ADDRESS_TYPE`].
pub const GATEWAY_ADDRESS_TYPE: &str = "com.docker.network.gateway";
