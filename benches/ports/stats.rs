//! The samples, how one is taken and what is printed of them: per-variant times, medians, the extra cost
//! of the ports and the ratio against Docker's, and cnibridge's own share from its log.

use std::collections::HashSet;
use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::{layout_text, Driver, PORTS};

pub(crate) struct Variant {
    pub(crate) label: &'static str,
    pub(crate) driver: Driver,
    pub(crate) ports: bool,
    pub(crate) times: Vec<Duration>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn p90(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[(v.len() * 9 / 10).min(v.len() - 1)]
}

/// Median of signed differences, in ms.
fn median_f(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Runs `cmd` to completion, timing it with a blocking wait (the support helpers poll every 50 ms,
/// far too coarse for this), and kills it after `timeout`.
pub(crate) fn run_timed(mut cmd: Command, timeout: Duration) -> Result<(Duration, Output), String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let child = cmd.spawn().map_err(|e| format!("cannot start: {e}"))?;
    let pid = Pid::from_raw(child.id() as i32);
    let (done, wait_done) = mpsc::channel::<()>();
    let watchdog = thread::spawn(move || {
        if let Err(RecvTimeoutError::Timeout) = wait_done.recv_timeout(timeout) {
            let _ = kill(pid, Signal::SIGKILL);
        }
    });
    let out = child.wait_with_output();
    let took = started.elapsed();
    let _ = done.send(());
    let _ = watchdog.join();
    let out = out.map_err(|e| format!("wait: {e}"))?;
    if took >= timeout {
        return Err(format!("did not finish within {timeout:?}"));
    }
    Ok((took, out))
}

/// cnibridge's own share, from its log: how long ProgramExternalConnectivity took when it
/// published the ports (one line per request: `… endpoint=<id> …: ok elapsed_us=N`).
pub(crate) fn plugin_side(log: &Path) {
    let text = fs::read_to_string(log).unwrap_or_default();
    let endpoint = |line: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("endpoint="))
            .map(|e| {
                e.trim_matches(|c| c == '"' || c == ':' || c == '}')
                    .to_string()
            })
    };
    let published: HashSet<String> = text
        .lines()
        .filter(|l| l.contains("ports published"))
        .filter_map(endpoint)
        .collect();
    let times: Vec<Duration> = text
        .lines()
        .filter(|l| l.contains("ProgramExternalConnectivity") && l.contains("elapsed_us="))
        .filter(|l| endpoint(l).is_some_and(|e| published.contains(&e)))
        .filter_map(|l| l.rsplit("elapsed_us=").next()?.trim().parse().ok())
        .map(Duration::from_micros)
        .collect();
    if !times.is_empty() {
        println!(
            "cnibridge's ProgramExternalConnectivity publishing {PORTS} ports (its log, n={}): median {:.1} ms, p90 {:.1} ms",
            times.len(),
            ms(median(&times)),
            ms(p90(&times))
        );
    }
}

pub(crate) fn report(variants: &[Variant]) {
    let rounds = variants.iter().map(|v| v.times.len()).min().unwrap_or(0);
    if rounds == 0 {
        println!("no complete round measured");
        return;
    }
    println!(
        "docker run -d, {rounds} rounds, {PORTS} published ports ({}):",
        layout_text()
    );
    for v in variants {
        let t = &v.times[..rounds];
        let (min, max) = (t.iter().min().unwrap(), t.iter().max().unwrap());
        println!(
            "  {:<26} median {:>7.1} ms   p90 {:>7.1} ms   min {:>7.1} ms   max {:>7.1} ms",
            v.label,
            ms(median(t)),
            ms(p90(t)),
            ms(*min),
            ms(*max)
        );
    }
    let extra = |driver: Driver| {
        let of = |ports: bool| {
            variants
                .iter()
                .find(|v| v.driver == driver && v.ports == ports)
                .map(|v| &v.times[..rounds])
                .expect("variant")
        };
        let (with, without) = (of(true), of(false));
        let plain = ms(median(with)) - ms(median(without));
        // The same round's two runs were close in time: their difference is less exposed to drift.
        let paired = median_f(
            with.iter()
                .zip(without)
                .map(|(a, b)| ms(*a) - ms(*b))
                .collect(),
        );
        (plain, paired)
    };
    let (cnb, cnb_paired) = extra(Driver::Cnibridge);
    let (dck, dck_paired) = extra(Driver::DockerBridge);
    println!("extra cost of {PORTS} ports (median with - median without; median of per-round differences):");
    println!("  cnibridge       {cnb:>7.1} ms   ({cnb_paired:.1} ms)");
    println!("  docker bridge   {dck:>7.1} ms   ({dck_paired:.1} ms)");
    if dck <= 0.0 {
        println!("ratio cnibridge/docker: undefined (Docker's extra cost is not positive); target not decidable");
        return;
    }
    let ratio = cnb / dck;
    println!(
        "ratio cnibridge/docker: {ratio:.2} (per-round: {:.2}); target <= 0.5: {}",
        cnb_paired / dck_paired,
        if ratio <= 0.5 { "met" } else { "NOT met" }
    );
}
