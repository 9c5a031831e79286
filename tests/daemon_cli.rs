//! The daemon as a user runs it: socket handling, refusal of a second instance, a stale socket,
//! dockerd's connect-and-close readiness probe, and a clean SIGTERM. No root needed: nothing is
//! created in the kernel until a network is.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::daemon::{self, Daemon, Serve};

fn start(dir: &Path, socket: &Path) -> Child {
    Serve::under(dir, socket)
        .command(&daemon::bin())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cnibridge")
}

fn wait_serving(socket: &Path) {
    daemon::wait_answering(None, socket, Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}"));
}

fn post(socket: &Path, path: &str, body: &str) -> String {
    daemon::post(socket, path, body).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The socket file a SIGKILLed daemon leaves: bound, nobody listening. Bound without `listen`
/// on purpose: a listener dropped here would live on in a child another test forks at that
/// moment (until it execs), so connects would succeed and then be reset.
fn leave_stale_socket(path: &Path) {
    use nix::sys::socket::{bind, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("unix socket");
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &UnixAddr::new(path).expect("socket path"),
    )
    .expect("bind stale socket");
    assert!(path.exists());
}

fn dirs() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("cnbtcli.sock");
    (dir, socket)
}

#[test]
fn serves_root_only_and_stops_cleanly_on_sigterm() {
    let (dir, socket) = dirs();
    let mut d = Daemon {
        child: start(dir.path(), &socket),
    };
    wait_serving(&socket);
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket must be root-only");
    // dockerd's readiness probe: connect and close without a request.
    drop(UnixStream::connect(&socket).unwrap());
    let answer = post(&socket, "/Plugin.Activate", "");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains(r#"{"Implements":["NetworkDriver","IpamDriver"]}"#),
        "{answer}"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = d.child.wait().unwrap();
    assert!(status.success(), "SIGTERM must be a clean exit: {status}");
    assert!(!socket.exists(), "socket left after a clean stop");
}

#[test]
fn a_second_instance_on_a_live_socket_is_refused() {
    let (dir, socket) = dirs();
    let _first = Daemon {
        child: start(dir.path(), &socket),
    };
    wait_serving(&socket);
    let second = start(&dir.path().join("other"), &socket);
    let out = second.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another cnibridge is already serving on"),
        "{err}"
    );
    // Refused before it touched anything: not even its state dir was made.
    assert!(!dir.path().join("other").join("state").exists());
    // The first one still answers.
    assert!(post(&socket, "/IpamDriver.GetCapabilities", "").starts_with("HTTP/1.1 200"));
}

#[test]
fn a_stale_socket_is_replaced() {
    let (dir, socket) = dirs();
    leave_stale_socket(&socket);
    let _d = Daemon {
        child: start(dir.path(), &socket),
    };
    wait_serving(&socket);
    assert!(post(&socket, "/NetworkDriver.GetCapabilities", "").contains(r#""Scope":"local""#));
}

fn firewall_reload(socket: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cnibridge"))
        .arg("firewall-reload")
        .arg("--socket")
        .arg(socket)
        .output()
        .expect("run cnibridge firewall-reload")
}

#[test]
fn firewall_reload_command_asks_the_running_daemon() {
    let (dir, socket) = dirs();
    let _d = Daemon {
        child: start(dir.path(), &socket),
    };
    wait_serving(&socket);
    let out = firewall_reload(&socket);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("firewall rules re-applied"), "{stdout}");
    // The private method answers {} over plain HTTP too.
    let answer = post(&socket, "/Cnibridge.FirewallReload", "{}");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("{}"), "{answer}");
}

#[test]
fn firewall_reload_without_a_daemon_fails_clearly() {
    let (dir, socket) = dirs();
    // No socket at all, and a stale socket file nobody listens on.
    for stale in [false, true] {
        if stale {
            leave_stale_socket(&socket);
        }
        let out = firewall_reload(&socket);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("no cnibridge is serving on {}", socket.display())),
            "{err}"
        );
        assert!(err.contains("start it with cnibridge serve"), "{err}");
    }
    drop(dir);
}

#[test]
fn sighup_reloads_and_the_daemon_keeps_serving() {
    let (dir, socket) = dirs();
    let mut d = Daemon {
        child: start(dir.path(), &socket),
    };
    wait_serving(&socket);
    for _ in 0..2 {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(d.child.id() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            d.child.try_wait().unwrap().is_none(),
            "SIGHUP stopped the daemon"
        );
        let answer = post(&socket, "/Plugin.Activate", "");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
}

/// Under the usual soft limit of 1024 open files, 1,500 idle connections do not starve a new
/// request: the daemon raises its soft limit to the hard one at start.
#[test]
fn many_idle_connections_under_a_low_soft_limit_leave_it_answering() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    use std::os::unix::process::CommandExt;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    // This test's own 1,500 client ends need room too.
    assert!(
        hard >= 4096,
        "hard open-files limit {hard} is too low for this test"
    );
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    let (dir, socket) = dirs();
    let mut cmd = Serve::under(dir.path(), &socket).command(&daemon::bin());
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            setrlimit(Resource::RLIMIT_NOFILE, 1024, hard).map_err(std::io::Error::from)
        });
    }
    let d = Daemon {
        child: cmd.spawn().expect("start cnibridge"),
    };
    wait_serving(&socket);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", d.child.id())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_string();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        fields[3], fields[4],
        "soft limit not raised to the hard one: {line}"
    );
    let idle: Vec<UnixStream> = (0..1500)
        .map(|i| UnixStream::connect(&socket).unwrap_or_else(|e| panic!("connection {i}: {e}")))
        .collect();
    let answer = post(&socket, "/Plugin.Activate", "");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(idle);
    drop(d);
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
}
