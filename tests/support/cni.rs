//! The real CNI `bridge` plugin (which runs `host-local` itself) attaching a plain network namespace, as a
//! CNI runtime would: the other world the e2e scenarios share networks with, and the reference they compare
//! against.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::process::{run_timeout, stderr_text, stdout_text, wait_timeout};

/// Where `containernetworking-plugins` installs the plugins.
pub const CNI_BIN: &str = "/usr/lib/cni";
/// The bridge plugin takes iptables' lock for masquerade rules; twenty at once queue for it.
const CNI_TIMEOUT: Duration = Duration::from_secs(60);

/// The configuration libcni hands the first plugin of a `.conflist` (or a `.conf` as it is): the list's
/// `cniVersion` and `name` injected into the plugin object.
pub fn first_plugin(top: &Value) -> Value {
    match top.get("plugins") {
        Some(list) => {
            let mut p = list[0].clone();
            p["cniVersion"] = top["cniVersion"].clone();
            p["name"] = top["name"].clone();
            p
        }
        None => top.clone(),
    }
}

/// A named namespace (`/run/netns/<name>`), attached with `conf` by ADD; on drop it is detached (DEL) and
/// removed, also while a failed scenario unwinds.
pub struct CniNetns {
    ns: String,
    conf: String,
    made: bool,
    added: bool,
}

impl CniNetns {
    /// Creates the namespace (not attached yet). Its name doubles as the CNI container id, so host-local's
    /// files say whose address they hold.
    pub fn create(ns: &str, conf: &Value) -> Result<CniNetns, String> {
        let mut n = CniNetns {
            ns: ns.to_string(),
            conf: conf.to_string(),
            made: false,
            added: false,
        };
        let out = run_timeout(Command::new("ip").args(["netns", "add", ns]), CNI_TIMEOUT)?;
        if !out.status.success() {
            return Err(format!("ip netns add {ns}: {}", stderr_text(&out)));
        }
        n.made = true;
        Ok(n)
    }

    pub fn name(&self) -> &str {
        &self.ns
    }

    /// CNI ADD; returns the plugin's result.
    pub fn add(&mut self) -> Result<Value, String> {
        // Set first: a half-done ADD still needs its DEL.
        self.added = true;
        let out = self.exec("ADD")?;
        serde_json::from_str(&out).map_err(|e| format!("CNI ADD result of {}: {e}: {out}", self.ns))
    }

    /// CNI DEL (idempotent, as the spec requires of the plugin).
    pub fn del(&mut self) -> Result<(), String> {
        self.exec("DEL")?;
        self.added = false;
        Ok(())
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<String, String> {
        self.run(&["ip"], args)
    }

    /// A program of the host (e.g. `busybox ping`) run inside the namespace.
    pub fn exec_in(&self, cmd: &[&str]) -> Result<String, String> {
        self.run(&["ip", "netns", "exec", &self.ns], cmd)
    }

    fn run(&self, prefix: &[&str], args: &[&str]) -> Result<String, String> {
        let mut all: Vec<&str> = prefix.to_vec();
        if prefix == ["ip"] {
            all.extend(["-n", self.ns.as_str()]);
        }
        all.extend_from_slice(args);
        let out = run_timeout(Command::new(all[0]).args(&all[1..]), CNI_TIMEOUT)?;
        if out.status.success() {
            Ok(stdout_text(&out))
        } else {
            Err(format!(
                "{} failed: {} {}",
                all.join(" "),
                stdout_text(&out),
                stderr_text(&out)
            ))
        }
    }

    fn exec(&self, command: &str) -> Result<String, String> {
        let mut child = Command::new(format!("{CNI_BIN}/bridge"))
            .env("CNI_COMMAND", command)
            .env("CNI_NETNS", format!("/run/netns/{}", self.ns))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_CONTAINERID", &self.ns)
            .env("CNI_PATH", CNI_BIN)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("run the bridge plugin: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(self.conf.as_bytes())
                .map_err(|e| e.to_string())?;
        }
        // The plugin's output is a few hundred bytes, far below a pipe's buffer, so reading it after exit is
        // safe.
        if wait_timeout(&mut child, CNI_TIMEOUT).is_none() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "CNI {command} for {} did not finish within {CNI_TIMEOUT:?}",
                self.ns
            ));
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(stdout_text(&out))
        } else {
            Err(format!(
                "CNI {command} for {}: {}: {} {}",
                self.ns,
                out.status,
                stdout_text(&out),
                stderr_text(&out)
            ))
        }
    }
}

/// The IPv4 address (without prefix) a CNI result gave `eth0`.
pub fn result_ipv4(result: &Value) -> Option<std::net::Ipv4Addr> {
    result["ips"]
        .as_array()?
        .iter()
        .filter_map(|ip| ip["address"].as_str())
        .filter_map(|a| a.split('/').next()?.parse().ok())
        .next()
}

impl Drop for CniNetns {
    fn drop(&mut self) {
        // Never panic here: this also runs while a failed scenario unwinds.
        if self.added {
            if let Err(e) = self.exec("DEL") {
                eprintln!("warning: {e}");
            }
        }
        if self.made {
            let _ = run_timeout(
                Command::new("ip").args(["netns", "del", &self.ns]),
                CNI_TIMEOUT,
            );
        }
    }
}
