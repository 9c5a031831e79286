//! One POST route per protocol method. Success is HTTP 200 with a JSON body (at least `{}`,
//! since an empty 200 body makes Docker's decoder fail); failure is HTTP 500 with
//! `{"Err": "…"}`; an unknown path is 404 and any verb but POST 405, also with `{"Err"}` so
//! whatever asked learns what went wrong.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tracing::Instrument;

use super::convert;
use super::types::*;
use crate::dataplane::Dataplane;
use crate::driver::{short, Driver, DriverError};
use crate::firewall::Firewall;
use crate::ipam::{IpamError, PoolRequest, GLOBAL_ADDRESS_SPACE, LOCAL_ADDRESS_SPACE};

/// Requests larger than this are refused; the largest real one is a few KiB.
pub const MAX_BODY: usize = 1 << 20;

/// The path of cnibridge's private method that re-applies every firewall rule.
pub const FIREWALL_RELOAD_PATH: &str = "/Cnibridge.FirewallReload";
const FIREWALL_RELOAD: &str = "Cnibridge.FirewallReload";

/// The content type go-plugins-helpers answer with (Docker ignores it).
const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.1+json";

type App<D, F> = Arc<Driver<D, F>>;

/// What a handler returns: a JSON value or an error to print.
type Outcome = Result<Value, String>;

fn ok<T: Serialize>(v: T) -> Outcome {
    serde_json::to_value(v).map_err(|e| format!("internal error encoding the answer: {e}"))
}

fn reply(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        body.to_string(),
    )
        .into_response()
}

/// Requests handled at once; beyond it a request is refused at once with an `{"Err"}` rather
/// than queued, so a flood cannot pile up descriptors and memory behind a slow kernel. dockerd
/// sends one request per container operation; this is far above what it sends together.
pub const MAX_IN_FLIGHT: usize = 256;

struct Served<D: Dataplane, F: Firewall> {
    driver: App<D, F>,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
}

impl<D: Dataplane, F: Firewall> Clone for Served<D, F> {
    fn clone(&self) -> Self {
        Served {
            driver: self.driver.clone(),
            in_flight: self.in_flight.clone(),
            max_in_flight: self.max_in_flight,
        }
    }
}

/// The router serving every NetworkDriver and IpamDriver method.
pub fn router<D: Dataplane, F: Firewall>(driver: App<D, F>) -> Router {
    router_with(driver, MAX_IN_FLIGHT)
}

/// [`router`] with another in-flight bound (tests).
pub fn router_with<D: Dataplane, F: Firewall>(driver: App<D, F>, max_in_flight: usize) -> Router {
    let served = Served {
        driver,
        in_flight: Arc::new(Semaphore::new(max_in_flight)),
        max_in_flight,
    };
    Router::new().fallback(dispatch::<D, F>).with_state(served)
}

async fn dispatch<D: Dataplane, F: Firewall>(
    State(served): State<Served<D, F>>,
    verb: Method,
    uri: Uri,
    body: Body,
) -> Response {
    let method = uri.path().trim_start_matches('/').to_string();
    // The plugin protocol is POST only; a GET with a body must not create a network.
    if verb != Method::POST {
        let mut r = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"Err": format!("{method}: the plugin protocol is POST only, not {verb}")}),
        );
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
        return r;
    }
    // Held by the handling task, so a request whose client hung up still counts until it ends.
    let Ok(permit) = served.in_flight.clone().try_acquire_owned() else {
        tracing::warn!(method = %method, "refused: too many requests in flight");
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"Err": format!("{method}: cnibridge is already handling {} requests; try again when they are answered", served.max_in_flight)}),
        );
    };
    let app = served.driver;
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => {
            let too_long =
                std::iter::successors(Some(&e as &(dyn std::error::Error + 'static)), |e| {
                    e.source()
                })
                .any(|e| e.to_string().contains("length limit exceeded"));
            let why = match too_long {
                true => format!("request body larger than {MAX_BODY} bytes refused"),
                false => format!("the request body could not be read: {e}"),
            };
            return reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"Err": format!("{method}: {why}")}),
            );
        }
    };
    // Ids for the span come from the raw JSON, so even a request that fails to decode is logged
    // with what it was about.
    let raw: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let id = |k: &str| {
        raw.get(k)
            .and_then(Value::as_str)
            .map(|s| short(s).to_string())
            .unwrap_or_default()
    };
    let span = tracing::info_span!("request", method = %method, network = %id("NetworkID"), endpoint = %id("EndpointID"), pool = %id("PoolID"));
    async move {
        let start = Instant::now();
        // On a task of its own: hyper drops this future when dockerd hangs up (it times out and
        // sends the request again), and an operation stopped half-way would skip its undos.
        // The spawned handling runs to its end whoever still waits for it.
        let work = {
            let method = method.clone();
            tokio::spawn(
                async move {
                    let _permit = permit;
                    handle(&app, &method, &bytes).await
                }
                .instrument(tracing::Span::current()),
            )
        };
        let result = match work.await {
            Ok(r) => r,
            Err(e) => Some(Err(format!(
                "internal error: {method} handling failed: {e}"
            ))),
        };
        let elapsed_us = start.elapsed().as_micros() as u64;
        match result {
            Some(Ok(v)) => {
                tracing::info!(elapsed_us, "ok");
                reply(StatusCode::OK, v)
            }
            Some(Err(e)) => {
                tracing::warn!(elapsed_us, error = %e, "failed");
                reply(StatusCode::INTERNAL_SERVER_ERROR, json!({ "Err": e }))
            }
            None => {
                tracing::warn!("unknown method");
                reply(
                    StatusCode::NOT_FOUND,
                    json!({"Err": format!("cnibridge does not implement {method}")}),
                )
            }
        }
    }
    .instrument(span)
    .await
}

/// Decode a body; empty means `{}` (Activate and the capability calls send nothing).
fn decode<T: DeserializeOwned + Default>(method: &str, bytes: &Bytes) -> Result<T, String> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| format!("invalid {method} request: {e}"))
}

fn err(e: DriverError) -> String {
    e.to_string()
}

fn ipam_err(e: IpamError) -> String {
    e.to_string()
}

fn parse_ip(what: &str, s: &str) -> Result<Option<IpAddr>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    // Docker sends plain IPs; tolerate a prefix length.
    let plain = s.split('/').next().unwrap_or(s);
    plain
        .parse()
        .map(Some)
        .map_err(|_| format!("{what} {s:?} is not an IP address"))
}

async fn ipam_call<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, IpamError> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("internal error: {e}"))?
        .map_err(ipam_err)
}

async fn handle<D: Dataplane, F: Firewall>(
    app: &App<D, F>,
    method: &str,
    b: &Bytes,
) -> Option<Outcome> {
    let out = match method {
        "Plugin.Activate" => {
            app.note_activation().await;
            ok(ActivateResponse {
                implements: vec!["NetworkDriver", "IpamDriver"],
            })
        }
        "NetworkDriver.GetCapabilities" => ok(CapabilitiesResponse {
            scope: "local",
            connectivity_scope: "local",
            gw_alloc_checker: false,
        }),
        "NetworkDriver.GwAllocCheck" => ok(GwAllocCheckResponse {
            skip_ipv4: false,
            skip_ipv6: false,
        }),
        "NetworkDriver.CreateNetwork" => match decode::<CreateNetworkRequest>(method, b) {
            Ok(req) => app
                .create_network(&convert::network_spec(&req))
                .await
                .map(|_| json!({}))
                .map_err(err),
            Err(e) => Err(e),
        },
        "NetworkDriver.DeleteNetwork" => match decode::<NetworkRequest>(method, b) {
            Ok(req) => app
                .delete_network(&req.network_id)
                .await
                .map(|_| json!({}))
                .map_err(err),
            Err(e) => Err(e),
        },
        "NetworkDriver.CreateEndpoint" => match decode::<CreateEndpointRequest>(method, b) {
            Ok(req) => app
                .create_endpoint(&convert::endpoint_spec(&req))
                .await
                .map_err(err)
                .and_then(|a| ok(convert::endpoint_response(a))),
            Err(e) => Err(e),
        },
        "NetworkDriver.Join" => match decode::<JoinRequest>(method, b) {
            Ok(req) => app
                .join_sandbox(
                    &req.network_id,
                    &req.endpoint_id,
                    &req.sandbox_key,
                    &req.options,
                )
                .await
                .map_err(err)
                .and_then(|a| ok(convert::join_response(a))),
            Err(e) => Err(e),
        },
        "NetworkDriver.Leave" => match decode::<EndpointRequest>(method, b) {
            Ok(req) => app
                .leave(&req.network_id, &req.endpoint_id)
                .await
                .map(|_| json!({}))
                .map_err(err),
            Err(e) => Err(e),
        },
        "NetworkDriver.DeleteEndpoint" => match decode::<EndpointRequest>(method, b) {
            Ok(req) => app
                .delete_endpoint(&req.network_id, &req.endpoint_id)
                .await
                .map(|_| json!({}))
                .map_err(err),
            Err(e) => Err(e),
        },
        "NetworkDriver.EndpointOperInfo" => {
            decode::<EndpointRequest>(method, b).map(|_| json!({"Value": {}}))
        }
        "NetworkDriver.ProgramExternalConnectivity" => match decode::<EndpointRequest>(method, b) {
            Ok(req) => app
                .program_external_connectivity(&req.network_id, &req.endpoint_id, &req.options)
                .await
                .map(|_| json!({}))
                .map_err(err),
            Err(e) => Err(e),
        },
        "NetworkDriver.RevokeExternalConnectivity" => match decode::<EndpointRequest>(method, b) {
            Ok(req) => app
                .revoke_external_connectivity(&req.network_id, &req.endpoint_id)
                .await
                .map(|_| json!({}))
                .map_err(err),
            Err(e) => Err(e),
        },
        // Swarm-only calls; a local-scope driver never needs them but answers cleanly.
        "NetworkDriver.AllocateNetwork" => {
            decode::<Value>(method, b).map(|_| json!({"Options": {}}))
        }
        "NetworkDriver.FreeNetwork"
        | "NetworkDriver.DiscoverNew"
        | "NetworkDriver.DiscoverDelete" => decode::<Value>(method, b).map(|_| json!({})),
        // cnibridge's own method (`cnibridge firewall-reload`); the socket is root-only.
        FIREWALL_RELOAD => app.reload_firewall().await.map(|_| json!({})).map_err(err),
        "IpamDriver.GetCapabilities" => ok(IpamCapabilitiesResponse {
            requires_mac_address: false,
            requires_request_replay: false,
        }),
        "IpamDriver.GetDefaultAddressSpaces" => ok(AddressSpacesResponse {
            local: LOCAL_ADDRESS_SPACE,
            global: GLOBAL_ADDRESS_SPACE,
        }),
        "IpamDriver.RequestPool" => request_pool(app, method, b).await,
        "IpamDriver.ReleasePool" => match decode::<ReleasePoolRequest>(method, b) {
            Ok(req) => {
                let ipam = app.ipam().clone();
                ipam_call(move || ipam.release_pool(&req.pool_id))
                    .await
                    .map(|_| json!({}))
            }
            Err(e) => Err(e),
        },
        "IpamDriver.RequestAddress" => request_address(app, method, b).await,
        "IpamDriver.ReleaseAddress" => match decode::<AddressRequest>(method, b) {
            Ok(req) => match parse_ip("Address", &req.address) {
                Ok(Some(addr)) => {
                    let ipam = app.ipam().clone();
                    ipam_call(move || ipam.release_address(&req.pool_id, addr))
                        .await
                        .map(|_| json!({}))
                }
                Ok(None) => Err("ReleaseAddress needs an Address".to_string()),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        },
        _ => return None,
    };
    Some(out)
}

async fn request_pool<D: Dataplane, F: Firewall>(
    app: &App<D, F>,
    method: &str,
    b: &Bytes,
) -> Outcome {
    let req: RequestPoolRequest = decode(method, b)?;
    let cidr = |what: &str, s: &str| -> Result<Option<ipnet::IpNet>, String> {
        if s.is_empty() {
            Ok(None)
        } else {
            s.parse()
                .map(Some)
                .map_err(|_| format!("{what} {s:?} is not a subnet in CIDR notation"))
        }
    };
    let pr = PoolRequest {
        address_space: req.address_space.clone(),
        pool: cidr("subnet", &req.pool)?,
        sub_pool: cidr("ip-range", &req.sub_pool)?,
        options: req.options.clone(),
        v6: req.v6,
    };
    let ipam = app.ipam().clone();
    let grant = ipam_call(move || ipam.request_pool(&pr)).await?;
    ok(RequestPoolResponse {
        pool_id: grant.pool_id,
        pool: grant.pool.to_string(),
        data: grant.data,
    })
}

async fn request_address<D: Dataplane, F: Firewall>(
    app: &App<D, F>,
    method: &str,
    b: &Bytes,
) -> Outcome {
    let req: AddressRequest = decode(method, b)?;
    let address = parse_ip("Address", &req.address)?;
    let gateway =
        req.options.get(REQUEST_ADDRESS_TYPE).map(String::as_str) == Some(GATEWAY_ADDRESS_TYPE);
    let ipam = app.ipam().clone();
    let pool_id = req.pool_id.clone();
    let got = ipam_call(move || ipam.request_address(&pool_id, address, gateway)).await?;
    ok(RequestAddressResponse {
        address: got.to_string(),
        data: Default::default(),
    })
}

#[cfg(test)]
#[path = "router_tests.rs"]
mod tests;
