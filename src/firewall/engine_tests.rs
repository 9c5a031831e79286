//! The engine over a recording backend: what each verb asks the backend to write.

use std::sync::Mutex;

use super::*;
use crate::firewall::{PortMapping, Proto};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Write {
    All(Vec<String>, Vec<String>),
    AddNetwork(Option<String>, String),
    DelNetwork(String, Vec<String>),
    Ports(Option<String>, Option<String>),
}

#[derive(Default)]
struct Recording {
    writes: Mutex<Vec<Write>>,
    /// Fail the next incremental write.
    fail_next: Mutex<bool>,
}

impl Recording {
    fn record(&self, w: Write) -> Result<(), FirewallError> {
        let incremental = !matches!(w, Write::All(..));
        self.writes.lock().unwrap().push(w);
        let mut fail = self.fail_next.lock().unwrap();
        if incremental && *fail {
            *fail = false;
            return Err(FirewallError::Backend {
                tool: "recording".into(),
                reason: "our chain is gone".into(),
            });
        }
        Ok(())
    }
}

impl Backend for Recording {
    const SHARED_PORT_CHAINS: bool = true;

    async fn write_all(&self, set: &Intent, _stale: &Stale) -> Result<(), FirewallError> {
        self.record(Write::All(
            set.networks.keys().cloned().collect(),
            set.ports.values().map(|p| p.endpoint_id.clone()).collect(),
        ))
    }

    async fn add_network(
        &self,
        old: Option<&NetworkRules>,
        new: &NetworkRules,
    ) -> Result<(), FirewallError> {
        self.record(Write::AddNetwork(
            old.map(|o| o.network_id.clone()),
            new.network_id.clone(),
        ))
    }

    async fn del_network(
        &self,
        rules: &NetworkRules,
        ports: &[EndpointPorts],
        _remaining: &[EndpointPorts],
    ) -> Result<(), FirewallError> {
        self.record(Write::DelNetwork(
            rules.network_id.clone(),
            ports.iter().map(|p| p.endpoint_id.clone()).collect(),
        ))
    }

    async fn update_ports(
        &self,
        _all: &[EndpointPorts],
        old: Option<&EndpointPorts>,
        new: Option<&EndpointPorts>,
    ) -> Result<(), FirewallError> {
        self.record(Write::Ports(
            old.map(|p| p.endpoint_id.clone()),
            new.map(|p| p.endpoint_id.clone()),
        ))
    }
}

fn net(i: usize) -> NetworkRules {
    NetworkRules {
        subnets: vec![format!("10.{i}.0.0/24").parse().unwrap()],
        ..NetworkRules::new(format!("n{i:03}"), format!("br{i}"))
    }
}

fn ports(i: usize, endpoint: &str) -> EndpointPorts {
    EndpointPorts {
        network_id: format!("n{i:03}"),
        endpoint_id: endpoint.into(),
        bridge: format!("br{i}"),
        container_ipv4: Some(format!("10.{i}.0.2/24").parse().unwrap()),
        container_ipv6: None,
        mappings: vec![PortMapping::single(Proto::Tcp, None, 8080, 80)],
        options: Default::default(),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn writes(e: &Engine<Recording>) -> Vec<Write> {
    std::mem::take(&mut *e.backend().writes.lock().unwrap())
}

fn ids(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn the_base_is_written_once_then_each_network_alone() {
    let e = Engine::with_backend(Recording::default());
    let rt = rt();
    rt.block_on(e.add_network(&net(0))).unwrap();
    rt.block_on(e.add_network(&net(1))).unwrap();
    rt.block_on(e.add_network(&net(2))).unwrap();
    assert_eq!(
        writes(&e),
        vec![
            Write::All(ids(&["n000"]), vec![]),
            Write::AddNetwork(None, "n001".into()),
            Write::AddNetwork(None, "n002".into()),
        ]
    );
    assert_eq!(rt.block_on(e.networks()).len(), 3);
}

#[test]
fn one_network_added_to_many_installed_renders_only_that_network() {
    let e = Engine::with_backend(Recording::default());
    let rt = rt();
    let many: Vec<NetworkRules> = (0..50).map(net).collect();
    rt.block_on(e.reconcile(&many, &[])).unwrap();
    assert!(matches!(&writes(&e)[..], [Write::All(n, _)] if n.len() == 50));
    rt.block_on(e.add_network(&net(50))).unwrap();
    assert_eq!(writes(&e), vec![Write::AddNetwork(None, "n050".into())]);
    // A re-sent CreateNetwork rewrites that network's part again (which repairs it).
    rt.block_on(e.add_network(&net(7))).unwrap();
    assert_eq!(
        writes(&e),
        vec![Write::AddNetwork(Some("n007".into()), "n007".into())]
    );
}

#[test]
fn deleting_a_network_renders_only_it_and_its_leftover_ports() {
    let e = Engine::with_backend(Recording::default());
    let rt = rt();
    rt.block_on(e.reconcile(&[net(0), net(1), net(2)], &[ports(1, "e1")]))
        .unwrap();
    writes(&e);
    rt.block_on(e.del_network(&net(1))).unwrap();
    assert_eq!(
        writes(&e),
        vec![Write::DelNetwork("n001".into(), ids(&["e1"]))]
    );
    assert!(rt.block_on(e.ports()).is_empty());
    // Unknown: nothing written.
    rt.block_on(e.del_network(&net(1))).unwrap();
    assert!(writes(&e).is_empty());
    // The last network goes with a full rewrite (nothing of ours is left), and the next one
    // writes the base again.
    rt.block_on(e.del_network(&net(0))).unwrap();
    rt.block_on(e.del_network(&net(2))).unwrap();
    rt.block_on(e.add_network(&net(3))).unwrap();
    assert_eq!(
        writes(&e),
        vec![
            Write::DelNetwork("n000".into(), vec![]),
            Write::All(vec![], vec![]),
            Write::All(ids(&["n003"]), vec![]),
        ]
    );
}

#[test]
fn a_failed_change_falls_back_to_the_full_set() {
    let e = Engine::with_backend(Recording::default());
    let rt = rt();
    rt.block_on(e.reconcile(&[net(0), net(1)], &[])).unwrap();
    writes(&e);
    *e.backend().fail_next.lock().unwrap() = true;
    rt.block_on(e.add_network(&net(2))).unwrap();
    assert_eq!(
        writes(&e),
        vec![
            Write::AddNetwork(None, "n002".into()),
            Write::All(ids(&["n000", "n001", "n002"]), vec![]),
        ]
    );
    *e.backend().fail_next.lock().unwrap() = true;
    rt.block_on(e.add_ports(&ports(0, "e1"))).unwrap();
    *e.backend().fail_next.lock().unwrap() = true;
    rt.block_on(e.del_network(&net(2))).unwrap();
    assert_eq!(
        writes(&e),
        vec![
            Write::Ports(None, Some("e1".into())),
            Write::All(ids(&["n000", "n001", "n002"]), ids(&["e1"])),
            Write::DelNetwork("n002".into(), vec![]),
            Write::All(ids(&["n000", "n001"]), ids(&["e1"])),
        ]
    );
    // Back to incremental changes after the repair.
    rt.block_on(e.del_ports("n000", "e1")).unwrap();
    assert_eq!(writes(&e), vec![Write::Ports(Some("e1".into()), None)]);
}

#[test]
fn a_failed_full_rewrite_changes_nothing_known() {
    struct Refusing;
    impl Backend for Refusing {
        const SHARED_PORT_CHAINS: bool = false;
        async fn write_all(&self, _: &Intent, _: &Stale) -> Result<(), FirewallError> {
            Err(FirewallError::Backend {
                tool: "refusing".into(),
                reason: "no".into(),
            })
        }
        async fn add_network(
            &self,
            _: Option<&NetworkRules>,
            _: &NetworkRules,
        ) -> Result<(), FirewallError> {
            unreachable!("no base yet")
        }
        async fn del_network(
            &self,
            _: &NetworkRules,
            _: &[EndpointPorts],
            _: &[EndpointPorts],
        ) -> Result<(), FirewallError> {
            unreachable!("nothing installed")
        }
        async fn update_ports(
            &self,
            _: &[EndpointPorts],
            _: Option<&EndpointPorts>,
            _: Option<&EndpointPorts>,
        ) -> Result<(), FirewallError> {
            unreachable!("nothing installed")
        }
    }
    let e = Engine::with_backend(Refusing);
    let rt = rt();
    assert!(rt.block_on(e.add_network(&net(0))).is_err());
    assert!(rt.block_on(e.networks()).is_empty());
    let err = rt.block_on(e.add_ports(&ports(0, "e1"))).unwrap_err();
    assert!(matches!(err, FirewallError::UnknownNetwork(_)), "{err}");
}

#[test]
fn changes_of_different_networks_run_at_once() {
    // Two networks' changes overlap in time: neither waits for the other's tool run.
    struct Slow(
        std::sync::atomic::AtomicUsize,
        std::sync::atomic::AtomicUsize,
    );
    impl Backend for Slow {
        const SHARED_PORT_CHAINS: bool = false;
        async fn write_all(&self, _: &Intent, _: &Stale) -> Result<(), FirewallError> {
            Ok(())
        }
        async fn add_network(
            &self,
            _: Option<&NetworkRules>,
            _: &NetworkRules,
        ) -> Result<(), FirewallError> {
            use std::sync::atomic::Ordering::SeqCst;
            let now = self.0.fetch_add(1, SeqCst) + 1;
            self.1.fetch_max(now, SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            self.0.fetch_sub(1, SeqCst);
            Ok(())
        }
        async fn del_network(
            &self,
            _: &NetworkRules,
            _: &[EndpointPorts],
            _: &[EndpointPorts],
        ) -> Result<(), FirewallError> {
            Ok(())
        }
        async fn update_ports(
            &self,
            _: &[EndpointPorts],
            _: Option<&EndpointPorts>,
            _: Option<&EndpointPorts>,
        ) -> Result<(), FirewallError> {
            Ok(())
        }
    }
    let e = Engine::with_backend(Slow(Default::default(), Default::default()));
    let rt = rt();
    rt.block_on(async {
        e.reconcile(&[net(0)], &[]).await.unwrap();
        let nets: Vec<NetworkRules> = (1..9).map(net).collect();
        futures::future::join_all(nets.iter().map(|n| e.add_network(n))).await;
    });
    assert_eq!(rt.block_on(e.networks()).len(), 9);
    assert!(e.backend().1.load(std::sync::atomic::Ordering::SeqCst) > 1);
}

#[test]
fn the_lock_of_a_deleted_network_is_forgotten() {
    let e = Engine::with_backend(Recording::default());
    let rt = rt();
    rt.block_on(e.add_network(&net(0))).unwrap();
    rt.block_on(e.add_network(&net(1))).unwrap();
    rt.block_on(e.del_network(&net(1))).unwrap();
    let map = e.networks.lock().unwrap();
    assert!(map.contains_key("n000") && !map.contains_key("n001"));
}
