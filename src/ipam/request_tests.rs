//! RequestPool's locking: the record's fsync happens without the table lock, a pool being
//! written is invisible but counts against overlaps, and a failed write leaves nothing.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use ipnet::IpNet;

use super::super::{Ipam, IpamConfig, IpamError, PoolRequest, DEFAULT_POOLS, LOCAL_ADDRESS_SPACE};
use crate::state::testing::StateOp;
use crate::state::StateDir;

const WAIT: Duration = Duration::from_secs(10);

fn open(root: &Path, state: StateDir) -> Arc<Ipam> {
    Ipam::open(IpamConfig {
        state,
        data_dir: root.join("data"),
        default_pools: DEFAULT_POOLS
            .split(',')
            .map(|d| d.parse().unwrap())
            .collect(),
        cni_conf_dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("cni-confs"),
    })
    .unwrap()
}

fn req(subnet: Option<&str>) -> PoolRequest {
    PoolRequest {
        address_space: LOCAL_ADDRESS_SPACE.into(),
        pool: subnet.map(|s| s.parse::<IpNet>().unwrap()),
        ..Default::default()
    }
}

fn ids(ipam: &Ipam) -> Vec<String> {
    ipam.pools().into_iter().map(|p| p.id).collect()
}

/// Runs `f` on another thread and fails (instead of hanging) if it waits on a held lock.
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(WAIT)
        .unwrap_or_else(|_| panic!("{what} waited for the pool record write"))
}

#[test]
fn the_table_lock_is_free_while_a_pool_record_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let (entered_tx, entered_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (entered_tx, go_rx) = (
        std::sync::Mutex::new(entered_tx),
        std::sync::Mutex::new(go_rx),
    );
    // Hold the write of 10.77.0.0/24's record until the test says go.
    let state = StateDir::open(tmp.path().join("state"))
        .unwrap()
        .with_hook(move |op, _, id| {
            if op == StateOp::Write && id == "10.77.0.0/24" {
                entered_tx.lock().unwrap().send(()).unwrap();
                go_rx
                    .lock()
                    .unwrap()
                    .recv_timeout(WAIT)
                    .map_err(std::io::Error::other)?;
            }
            Ok(())
        });
    let ipam = open(tmp.path(), state);
    ipam.request_pool(&req(Some("10.1.0.0/24"))).unwrap();
    let writer = {
        let ipam = ipam.clone();
        std::thread::spawn(move || ipam.request_pool(&req(Some("10.77.0.0/24"))))
    };
    entered_rx.recv_timeout(WAIT).unwrap();

    // The write is held: every table user still gets through.
    let probe = ipam.clone();
    let (held, pending, listed, overlap, other, released) = within("a look-up", move || {
        (
            probe.pool("10.1.0.0/24"),
            probe.pool("10.77.0.0/24"),
            ids(&probe),
            probe.request_pool(&req(Some("10.77.0.128/25"))),
            probe.request_pool(&req(Some("10.78.0.0/24"))),
            probe.release_pool("10.77.0.0/24"),
        )
    });
    assert!(held.is_some());
    // Half made: not visible, not releasable, but it does count against overlaps.
    assert!(pending.is_none());
    assert_eq!(listed, ["10.1.0.0/24"]);
    match overlap {
        Err(IpamError::Overlap { existing, .. }) => {
            assert_eq!(existing.to_string(), "10.77.0.0/24")
        }
        other => panic!("expected an overlap, got {other:?}"),
    }
    assert_eq!(other.unwrap().pool_id, "10.78.0.0/24");
    released.unwrap();

    go_tx.send(()).unwrap();
    let grant = writer.join().unwrap().unwrap();
    assert_eq!(grant.pool_id, "10.77.0.0/24");
    assert_eq!(ids(&ipam), ["10.1.0.0/24", "10.77.0.0/24", "10.78.0.0/24"]);
    // Durable: a restart has it.
    let again = open(
        tmp.path(),
        StateDir::open(tmp.path().join("state")).unwrap(),
    );
    assert_eq!(ids(&again), ids(&ipam));
}

#[test]
fn a_failed_pool_record_write_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let fail = Arc::new(AtomicBool::new(true));
    let f = fail.clone();
    let state = StateDir::open(tmp.path().join("state"))
        .unwrap()
        .with_hook(move |op, _, _| {
            if op == StateOp::Write && f.load(Ordering::SeqCst) {
                return Err(std::io::Error::other("disk full"));
            }
            Ok(())
        });
    let ipam = open(tmp.path(), state);
    let err = ipam
        .request_pool(&req(Some("10.5.0.0/24")))
        .unwrap_err()
        .to_string();
    assert!(err.contains("disk full"), "{err}");
    assert!(ids(&ipam).is_empty());
    let on_disk: Vec<_> = std::fs::read_dir(tmp.path().join("state/pools"))
        .map(|d| d.collect())
        .unwrap_or_default();
    assert!(on_disk.is_empty(), "{on_disk:?}");
    // The reservation is gone too: the same subnet can be asked for again.
    fail.store(false, Ordering::SeqCst);
    ipam.request_pool(&req(Some("10.5.0.0/24"))).unwrap();
    assert_eq!(ids(&ipam), ["10.5.0.0/24"]);
}

#[test]
fn concurrent_overlapping_requests_have_one_winner() {
    let tmp = tempfile::tempdir().unwrap();
    // Slow writes widen the window between reserving and publishing.
    let state = StateDir::open(tmp.path().join("state"))
        .unwrap()
        .with_hook(|op, _, _| {
            if op == StateOp::Write {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        });
    let ipam = open(tmp.path(), state);
    // Every two of these overlap.
    let subnets = [
        "10.80.0.0/16",
        "10.80.0.0/24",
        "10.80.0.0/24",
        "10.80.0.0/20",
        "10.80.0.0/17",
        "10.80.0.0/25",
    ];
    let barrier = Barrier::new(subnets.len());
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = subnets
            .iter()
            .map(|sub| {
                let (ipam, barrier) = (&ipam, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    ipam.request_pool(&req(Some(sub)))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    for r in &results {
        if let Err(e) = r {
            assert!(matches!(e, IpamError::Overlap { .. }), "{e}");
        }
    }
    assert_eq!(ids(&ipam), [winners[0].pool_id.clone()]);

    // Default pools asked for at once are all different.
    let n = 5;
    let barrier = Barrier::new(n);
    let mut got: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let (ipam, barrier) = (&ipam, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    ipam.request_pool(&req(None)).unwrap().pool_id
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    got.sort();
    got.dedup();
    assert_eq!(got.len(), n, "{got:?}");
}
