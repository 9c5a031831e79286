//! Wire ↔ driver: Docker's requests become the driver's specs, the driver's answers become
//! Docker's responses. Field for field; the driver checks the values.

use super::types::{
    CreateEndpointRequest, CreateEndpointResponse, CreateNetworkRequest, EndpointInterface,
    InterfaceName, IpamData, JoinResponse, StaticRoute,
};
use crate::driver::{self, EndpointAnswer, EndpointSpec, IpamFamily, JoinAnswer, NetworkSpec};

/// StaticRoute type "via a next hop" in libnetwork (`types.NEXTHOP`).
const ROUTE_NEXTHOP: u8 = 0;

fn family(d: &IpamData) -> IpamFamily {
    IpamFamily {
        address_space: d.address_space.clone(),
        pool: d.pool.clone(),
        gateway: d.gateway.clone(),
        aux_addresses: d.aux_addresses.clone(),
    }
}

/// CreateNetwork's request as the driver's network.
pub fn network_spec(req: &CreateNetworkRequest) -> NetworkSpec {
    NetworkSpec {
        network_id: req.network_id.clone(),
        options: req.options.clone(),
        ipv4: req.ipv4_data.iter().map(family).collect(),
        ipv6: req.ipv6_data.iter().map(family).collect(),
    }
}

/// CreateEndpoint's request as the driver's endpoint.
pub fn endpoint_spec(req: &CreateEndpointRequest) -> EndpointSpec {
    EndpointSpec {
        network_id: req.network_id.clone(),
        endpoint_id: req.endpoint_id.clone(),
        address: req.interface.address.clone(),
        address_ipv6: req.interface.address_ipv6.clone(),
        mac_address: req.interface.mac_address.clone(),
        options: req.options.clone(),
    }
}

/// CreateEndpoint's answer: an `Interface` only when the driver chose something.
pub fn endpoint_response(a: EndpointAnswer) -> CreateEndpointResponse {
    CreateEndpointResponse {
        interface: a.mac_address.map(|mac_address| EndpointInterface {
            mac_address,
            ..Default::default()
        }),
    }
}

fn route(r: driver::StaticRoute) -> StaticRoute {
    StaticRoute {
        destination: r.destination.to_string(),
        route_type: ROUTE_NEXTHOP,
        next_hop: r.next_hop.to_string(),
    }
}

/// Join's answer; no gateway is an empty string on the wire.
pub fn join_response(a: JoinAnswer) -> JoinResponse {
    let text = |g: Option<std::net::IpAddr>| g.map(|g| g.to_string()).unwrap_or_default();
    JoinResponse {
        interface_name: InterfaceName {
            src_name: a.src_name,
            dst_prefix: a.dst_prefix,
        },
        gateway: text(a.gateway),
        gateway_ipv6: text(a.gateway_ipv6),
        static_routes: a.static_routes.into_iter().map(route).collect(),
        disable_gateway_service: a.disable_gateway_service,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_answer_on_the_wire() {
        let wire = join_response(JoinAnswer {
            src_name: "ccb1".into(),
            dst_prefix: "eth".into(),
            gateway: Some("10.15.20.1".parse().unwrap()),
            gateway_ipv6: None,
            static_routes: vec![driver::StaticRoute {
                destination: "10.250.0.0/16".parse().unwrap(),
                next_hop: "10.15.20.1".parse().unwrap(),
            }],
            disable_gateway_service: true,
        });
        assert_eq!(
            serde_json::to_value(&wire).unwrap(),
            serde_json::json!({
                "InterfaceName": {"SrcName": "ccb1", "DstPrefix": "eth"},
                "Gateway": "10.15.20.1",
                "StaticRoutes": [{"Destination": "10.250.0.0/16", "RouteType": 0, "NextHop": "10.15.20.1"}],
                "DisableGatewayService": true,
            })
        );
    }

    #[test]
    fn endpoint_answer_fills_only_what_the_driver_chose() {
        let none = endpoint_response(EndpointAnswer { mac_address: None });
        assert_eq!(serde_json::to_value(&none).unwrap(), serde_json::json!({}));
        let mac = endpoint_response(EndpointAnswer {
            mac_address: Some("02:42:ac:11:00:02".into()),
        });
        assert_eq!(
            serde_json::to_value(&mac).unwrap(),
            serde_json::json!({"Interface": {"MacAddress": "02:42:ac:11:00:02"}})
        );
    }

    #[test]
    fn requests_map_field_for_field() {
        let req: CreateEndpointRequest = serde_json::from_value(serde_json::json!({
            "NetworkID": "n", "EndpointID": "e",
            "Interface": {"Address": "10.0.0.2/24", "AddressIPv6": "fd00::2/64", "MacAddress": "02:00:00:00:00:01"}
        }))
        .unwrap();
        assert_eq!(
            endpoint_spec(&req),
            EndpointSpec {
                network_id: "n".into(),
                endpoint_id: "e".into(),
                address: "10.0.0.2/24".into(),
                address_ipv6: "fd00::2/64".into(),
                mac_address: "02:00:00:00:00:01".into(),
                options: Default::default(),
            }
        );
        let req: CreateNetworkRequest = serde_json::from_value(serde_json::json!({
            "NetworkID": "n", "Options": {"k": 1},
            "IPv4Data": [{"AddressSpace": "CniLocal", "Pool": "10.0.0.0/24", "Gateway": "10.0.0.1/24", "AuxAddresses": {"a": "10.0.0.5/24"}}],
            "IPv6Data": null
        }))
        .unwrap();
        let spec = network_spec(&req);
        assert_eq!(spec.options["k"], 1);
        assert!(spec.ipv6.is_empty());
        assert_eq!(
            spec.ipv4,
            [IpamFamily {
                address_space: "CniLocal".into(),
                pool: "10.0.0.0/24".into(),
                gateway: "10.0.0.1/24".into(),
                aux_addresses: [("a".to_string(), "10.0.0.5/24".to_string())].into(),
            }]
        );
    }
}
