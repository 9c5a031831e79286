//! cnibridge's IPAM and the real host-local plugin allocating in one directory at once.
//! Needs /usr/lib/cni/host-local (containernetworking-plugins); skipped without it, except
//! under CI=true, where a missing plugin is a failure.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;

use cnibridge::ipam::*;
use cnibridge::state::StateDir;

const HOST_LOCAL: &str = "/usr/lib/cni/host-local";

fn host_local_present() -> bool {
    support::require(
        &format!(
            "{HOST_LOCAL}, which the interop test runs (Debian package containernetworking-plugins)"
        ),
        Path::new(HOST_LOCAL).exists(),
    )
}

struct Fixture {
    /// Removed with the fixture.
    _tmp: tempfile::TempDir,
    ipam: Arc<Ipam>,
    pool: String,
    /// `<dataDir>/<cni name>`, shared by both writers.
    dir: PathBuf,
    conf: String,
}

impl Fixture {
    fn new(subnet: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let ipam = Ipam::open(IpamConfig {
            state: StateDir::open(tmp.path().join("state")).unwrap(),
            data_dir: data.clone(),
            default_pools: vec![DEFAULT_POOLS.split(',').next().unwrap().parse().unwrap()],
            cni_conf_dir: "/nonexistent/cni-conf".into(),
        })
        .unwrap();
        let grant = ipam
            .request_pool(&PoolRequest {
                address_space: LOCAL_ADDRESS_SPACE.into(),
                pool: Some(subnet.parse().unwrap()),
                ..Default::default()
            })
            .unwrap();
        let rec = ipam.pool(&grant.pool_id).unwrap();
        let dir = data.join(&rec.cni_name);
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": rec.cni_name,
            "type": "bridge",
            "ipam": {
                "type": "host-local",
                "dataDir": data,
                "ranges": [[{"subnet": subnet}]],
            },
        })
        .to_string();
        Fixture {
            _tmp: tmp,
            ipam,
            pool: grant.pool_id,
            dir,
            conf,
        }
    }

    fn dir(&self) -> PathBuf {
        self.dir.clone()
    }

    fn spawn(&self, command: &str, id: &str, ifname: &str) -> Child {
        let mut child = Command::new(HOST_LOCAL)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            // host-local never opens the netns; skel only wants it set.
            .env("CNI_NETNS", "/proc/self/ns/net")
            .env("CNI_IFNAME", ifname)
            .env("CNI_PATH", "/usr/lib/cni")
            .env_remove("CNI_ARGS")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(self.conf.as_bytes()).unwrap();
        drop(stdin);
        child
    }

    fn ok(out: Output, what: &str) -> Output {
        assert!(
            out.status.success(),
            "host-local {what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// host-local ADD; the address it handed out.
    fn add(&self, id: &str) -> IpAddr {
        let out = Self::ok(
            self.spawn("ADD", id, "eth0").wait_with_output().unwrap(),
            "ADD",
        );
        address_of(&out)
    }

    fn del(&self, id: &str, ifname: &str) {
        Self::ok(
            self.spawn("DEL", id, ifname).wait_with_output().unwrap(),
            "DEL",
        );
    }

    fn ours(&self) -> IpAddr {
        self.ipam
            .request_address(&self.pool, None, false)
            .unwrap()
            .addr()
    }

    fn content(&self, ip: IpAddr) -> Option<String> {
        fs::read_to_string(self.dir().join(ip.to_string())).ok()
    }

    /// Names of the address files (everything but `lock` and the cursors).
    fn address_files(&self) -> BTreeSet<String> {
        fs::read_dir(self.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n != "lock" && !n.starts_with("last_reserved_ip."))
            .collect()
    }
}

fn address_of(out: &Output) -> IpAddr {
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cidr = v["ips"][0]["address"].as_str().unwrap();
    cidr.split('/').next().unwrap().parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn interleaved_allocations_share_the_cursor() {
    if !host_local_present() {
        return;
    }
    let f = Fixture::new("10.123.1.0/24");
    f.ipam.request_address(&f.pool, None, true).unwrap();
    let mut got = Vec::new();
    for i in 0..5 {
        got.push(f.add(&format!("hl{i}")));
        got.push(f.ours());
    }
    // One cursor, one gateway: both writers continue where the other stopped.
    let want: Vec<IpAddr> = (2..12).map(|n| ip(&format!("10.123.1.{n}"))).collect();
    assert_eq!(got, want);
    assert_eq!(f.content(ip("10.123.1.2")).unwrap(), "hl0\r\neth0");
    assert!(f
        .content(ip("10.123.1.3"))
        .unwrap()
        .starts_with("cnibridge-pending-"));
    assert_eq!(
        fs::read_to_string(f.dir().join("last_reserved_ip.0")).unwrap(),
        "10.123.1.11"
    );
}

#[test]
fn parallel_allocations_never_collide() {
    if !host_local_present() {
        return;
    }
    let f = Fixture::new("10.123.2.0/24");
    let children: Vec<Child> = (0..20)
        .map(|i| f.spawn("ADD", &format!("par{i}"), "eth0"))
        .collect();
    let mut all: Vec<IpAddr> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..20).map(|_| s.spawn(|| f.ours())).collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for c in children {
        all.push(address_of(&Fixture::ok(
            c.wait_with_output().unwrap(),
            "ADD",
        )));
    }
    let distinct: BTreeSet<IpAddr> = all.iter().copied().collect();
    assert_eq!(distinct.len(), 40, "{all:?}");
    assert_eq!(f.address_files().len(), 40);
    let expected: BTreeSet<String> = distinct.iter().map(|a| a.to_string()).collect();
    assert_eq!(f.address_files(), expected);
}

#[test]
fn each_side_releases_only_its_own() {
    if !host_local_present() {
        return;
    }
    let f = Fixture::new("10.123.3.0/24");
    let a = f.add("ctrA");
    let b = f.add("ctrB");
    let x = f.ours();
    let y = f.ours();
    // host-local DEL of one container frees only its file.
    f.del("ctrA", "eth0");
    assert_eq!(f.content(a), None);
    assert!(f.content(b).is_some() && f.content(x).is_some() && f.content(y).is_some());
    // Our release frees only ours.
    f.ipam.release_address(&f.pool, x).unwrap();
    assert_eq!(f.content(x), None);
    assert_eq!(f.content(b).unwrap(), "ctrB\r\neth0");
    // Releasing an address host-local holds does nothing.
    f.ipam.release_address(&f.pool, b).unwrap();
    assert_eq!(f.content(b).unwrap(), "ctrB\r\neth0");
    // Our relabelled file is exactly what host-local writes: its DEL finds it by id + ifname.
    let owner = Owner::endpoint("ep1", &cnibridge::names::host_veth("ep1"));
    f.ipam.set_owner(&f.pool, y, &owner).unwrap();
    let z = f.ours();
    f.del("ep1", owner.ifname());
    assert_eq!(f.content(y), None);
    f.ipam.release_address(&f.pool, y).unwrap();
    // Releasing the pool removes the rest of ours and leaves host-local's.
    f.ipam.release_pool(&f.pool).unwrap();
    assert_eq!(f.content(z), None);
    assert_eq!(f.address_files(), BTreeSet::from([b.to_string()]));
    f.del("ctrB", "eth0");
    assert!(f.address_files().is_empty());
}
