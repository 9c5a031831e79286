//! A whole conflist run by the real CNI plugins on a plain namespace, as libcni runs it: ADD calls each
//! plugin in order, handing it the previous one's result (`prevResult`) and the runtime's
//! `runtimeConfig` entries its `capabilities` ask for; DEL calls them in reverse with the cached result.
//! What a CNI runtime sharing a cnibridge network through the exported conflist does.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Map, Value};

use super::cni::CNI_BIN;
use super::process::{run_timeout, stderr_text, stdout_text, wait_timeout};

const CNI_TIMEOUT: Duration = Duration::from_secs(60);

/// A named namespace attached by a conflist; DEL and the namespace's removal happen on drop.
pub struct CniChain {
    ns: String,
    list: Value,
    runtime_config: Value,
    /// The last ADD's result, which DEL hands back to every plugin.
    result: Option<Value>,
    made: bool,
}

impl CniChain {
    /// Creates the namespace; `runtime_config` is what a runtime would pass (e.g. `portMappings`).
    pub fn create(ns: &str, list: &Value, runtime_config: Value) -> Result<CniChain, String> {
        let out = run_timeout(Command::new("ip").args(["netns", "add", ns]), CNI_TIMEOUT)?;
        if !out.status.success() {
            return Err(format!("ip netns add {ns}: {}", stderr_text(&out)));
        }
        let _ = run_timeout(
            Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]),
            CNI_TIMEOUT,
        );
        Ok(CniChain {
            ns: ns.to_string(),
            list: list.clone(),
            runtime_config,
            result: None,
            made: true,
        })
    }

    pub fn name(&self) -> &str {
        &self.ns
    }

    fn plugins(&self) -> Vec<Value> {
        self.list["plugins"].as_array().cloned().unwrap_or_default()
    }

    /// The object one plugin reads on stdin.
    fn conf_for(&self, plugin: &Value, prev: Option<&Value>) -> Value {
        let mut conf = plugin.clone();
        conf["cniVersion"] = self.list["cniVersion"].clone();
        conf["name"] = self.list["name"].clone();
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        let mut rc = Map::new();
        if let Some(caps) = plugin["capabilities"].as_object() {
            for (cap, on) in caps {
                if on == &Value::Bool(true) {
                    if let Some(v) = self.runtime_config.get(cap) {
                        rc.insert(cap.clone(), v.clone());
                    }
                }
            }
        }
        if !rc.is_empty() {
            conf["runtimeConfig"] = Value::Object(rc);
        }
        conf
    }

    /// CNI ADD of the whole chain; returns the final result.
    pub fn add(&mut self) -> Result<Value, String> {
        let mut prev: Option<Value> = None;
        for plugin in self.plugins() {
            let conf = self.conf_for(&plugin, prev.as_ref());
            let out = self.exec(&plugin, "ADD", &conf)?;
            let result: Value = serde_json::from_str(&out)
                .map_err(|e| format!("ADD result of {}: {e}: {out}", plugin["type"]))?;
            prev = Some(result.clone());
            // Cached as it grows: a half-done ADD still needs its DEL.
            self.result = Some(result);
        }
        self.result
            .clone()
            .ok_or_else(|| "empty plugin list".into())
    }

    /// CNI DEL of the whole chain, last plugin first.
    pub fn del(&mut self) -> Result<(), String> {
        let prev = self.result.clone();
        let mut errors = Vec::new();
        for plugin in self.plugins().iter().rev() {
            let conf = self.conf_for(plugin, prev.as_ref());
            if let Err(e) = self.exec(plugin, "DEL", &conf) {
                errors.push(e);
            }
        }
        self.result = None;
        match errors.is_empty() {
            true => Ok(()),
            false => Err(errors.join("; ")),
        }
    }

    /// A program of the host run inside the namespace.
    pub fn exec_in(&self, cmd: &[&str]) -> Result<String, String> {
        let out = run_timeout(
            Command::new("ip")
                .args(["netns", "exec", &self.ns])
                .args(cmd),
            CNI_TIMEOUT,
        )?;
        match out.status.success() {
            true => Ok(stdout_text(&out)),
            false => Err(format!(
                "{} in {}: {} {}",
                cmd.join(" "),
                self.ns,
                stdout_text(&out),
                stderr_text(&out)
            )),
        }
    }

    fn exec(&self, plugin: &Value, command: &str, conf: &Value) -> Result<String, String> {
        let kind = plugin["type"].as_str().unwrap_or("?");
        let mut child = Command::new(format!("{CNI_BIN}/{kind}"))
            .env("CNI_COMMAND", command)
            .env("CNI_NETNS", format!("/run/netns/{}", self.ns))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_CONTAINERID", &self.ns)
            .env("CNI_PATH", CNI_BIN)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("run the {kind} plugin: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(conf.to_string().as_bytes())
                .map_err(|e| e.to_string())?;
        }
        if wait_timeout(&mut child, CNI_TIMEOUT).is_none() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("CNI {command} {kind} did not finish"));
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        match out.status.success() {
            true => Ok(stdout_text(&out)),
            false => Err(format!(
                "CNI {command} {kind} for {}: {}: {} {}",
                self.ns,
                out.status,
                stdout_text(&out),
                stderr_text(&out)
            )),
        }
    }
}

impl Drop for CniChain {
    fn drop(&mut self) {
        // Never panic here: this also runs while a failed scenario unwinds.
        if self.result.is_some() {
            if let Err(e) = self.del() {
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
