//! Selecting a config from a conf dir: libcni's order, name before base name, no traversal,
//! broken neighbours harmless.

use std::fs;
use std::path::Path;

use tempfile::TempDir;

use super::{conf, list};
use crate::cni::dir::{conf_files, find, load_all};

/// A single-plugin config named `name` on subnet 10.1.`third`.0/24.
fn named(name: &str, third: u8) -> String {
    conf("", &format!(r#""subnet":"10.1.{third}.0/24""#))
        .replace(r#""name":"t""#, &format!(r#""name":"{name}""#))
}

fn named_list(name: &str, third: u8) -> String {
    list("", &format!(r#""subnet":"10.1.{third}.0/24""#))
        .replace(r#""name":"t""#, &format!(r#""name":"{name}""#))
}

fn put(dir: &Path, file: &str, text: &str) {
    fs::write(dir.join(file), text).unwrap();
}

/// Which file and which subnet `find` picks.
fn pick(dir: &Path, name: &str) -> (String, String) {
    let (path, c) = find(dir, name).unwrap_or_else(|e| panic!("{name}: {e}"));
    let file = path.file_name().unwrap().to_string_lossy().into_owned();
    (file, c.ipam.range_sets[0][0].subnet.to_string())
}

#[test]
fn files_come_in_libcni_order() {
    let d = TempDir::new().unwrap();
    for f in [
        "b.conflist",
        "a.conflist",
        "c.json",
        "a.conf",
        "b.conf",
        "x.txt",
        "y.conf.bak",
        ".z",
    ] {
        put(d.path(), f, "{}");
    }
    fs::create_dir(d.path().join("dir.conf")).unwrap();
    let names: Vec<String> = conf_files(d.path())
        .unwrap()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["a.conflist", "b.conflist", "a.conf", "b.conf", "c.json"]
    );
    assert!(conf_files(&d.path().join("missing")).unwrap().is_empty());
}

#[test]
fn network_name_first_in_libcni_order_then_base_name() {
    let d = TempDir::new().unwrap();
    let p = d.path();
    // Same network name in four files: the conflists win over .conf/.json, sorted by name.
    put(p, "00-first.conf", &named("net", 1));
    put(p, "zz.conflist", &named_list("net", 2));
    put(p, "yy.conflist", &named_list("net", 3));
    put(p, "10.json", &named("net", 4));
    assert_eq!(pick(p, "net"), ("yy.conflist".into(), "10.1.3.0/24".into()));
    // A network name beats a base name, wherever the files sort.
    put(p, "other.conf", &named("elsewhere", 5));
    put(p, "zzz.conf", &named("other", 6));
    assert_eq!(pick(p, "other"), ("zzz.conf".into(), "10.1.6.0/24".into()));
    // A base name selects when no network has that name; .conflist before .conf.
    assert_eq!(
        pick(p, "00-first"),
        ("00-first.conf".into(), "10.1.1.0/24".into())
    );
    put(p, "base.conf", &named("b1", 7));
    put(p, "base.conflist", &named_list("b2", 8));
    assert_eq!(
        pick(p, "base"),
        ("base.conflist".into(), "10.1.8.0/24".into())
    );
}

#[test]
fn selectors_never_leave_the_dir() {
    let root = TempDir::new().unwrap();
    let confs = root.path().join("net.d");
    fs::create_dir(&confs).unwrap();
    put(&confs, "good.conf", &named("good", 1));
    // A perfectly valid config one level up must stay unreachable.
    put(root.path(), "evil.conf", &named("evil", 2));
    fs::create_dir(confs.join("sub")).unwrap();
    put(&confs.join("sub"), "inner.conf", &named("inner", 3));
    for bad in [
        "../evil",
        "..",
        ".",
        "sub/inner",
        "/etc/passwd",
        "",
        ".hidden",
        "-x",
        "a b",
    ] {
        let err = find(&confs, bad).unwrap_err().to_string();
        assert_eq!(
            err,
            format!("cni.conf {bad:?} is not a valid CNI network name; use letters, digits, '_', '.' and '-', starting with a letter or digit")
        );
    }
    for unreachable in ["evil", "inner", "sub"] {
        let err = find(&confs, unreachable).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("no CNI config named {unreachable:?}")),
            "{err}"
        );
    }
}

#[test]
fn broken_neighbours_do_not_stop_selection() {
    let d = TempDir::new().unwrap();
    let p = d.path();
    put(p, "aa-broken.conflist", "{");
    put(
        p,
        "ab-bad.conflist",
        &named_list("bad", 1).replace("10.1.1.0/24", "10.1.1.9/24"),
    );
    put(p, "ac-array.conf", "[]");
    put(
        p,
        "ad-chained.conflist",
        &named_list("chained", 2).replace("}]}", r#"},{"type":"dnsname"}]}"#),
    );
    put(p, "good.conf", &named("good", 3));
    assert_eq!(pick(p, "good"), ("good.conf".into(), "10.1.3.0/24".into()));
    // Selecting a broken one reports its own error, by network name or by base name.
    let err = |name: &str| find(p, name).unwrap_err().to_string();
    assert_eq!(
        err("bad"),
        r#"ab-bad.conflist: plugins[0].ipam.subnet "10.1.1.9/24" has host bits set; did you mean 10.1.1.0/24?"#
    );
    assert_eq!(
        err("aa-broken"),
        "aa-broken.conflist: is not valid JSON: EOF while parsing an object at line 1 column 1"
    );
    assert_eq!(
        err("ac-array"),
        "ac-array.conf: the top level must be an object, got []"
    );
    assert_eq!(
        err("chained"),
        r#"ad-chained.conflist: plugins[1].type "dnsname" is not implemented by cnibridge, which chains only portmap, firewall, tuning, bandwidth and loopback after the bridge; remove the plugin from the list"#
    );
    // load_all keeps every file's own result, in order.
    let all = load_all(p).unwrap();
    let ok: Vec<bool> = all.iter().map(|f| f.conf.is_ok()).collect();
    assert_eq!(ok, [false, false, false, false, true]);
}

#[test]
fn a_missing_config_lists_what_is_there() {
    let d = TempDir::new().unwrap();
    let p = d.path();
    let err = find(p, "nope").unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "no CNI config named \"nope\" in {}; it holds no readable .conflist, .conf or .json file",
            p.display()
        )
    );
    put(p, "x.conflist", &named_list("xnet", 1));
    put(p, "a.conf", &named("anet", 2));
    put(p, "broken.json", "{");
    let err = find(p, "nope").unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "no CNI config named \"nope\" in {}; available: xnet (x.conflist), anet (a.conf)",
            p.display()
        )
    );
    let missing = p.join("absent");
    assert_eq!(
        find(&missing, "nope").unwrap_err().to_string(),
        format!(
            "no CNI config named \"nope\": the conf dir {} does not exist; check --cni-conf-dir",
            missing.display()
        )
    );
}
