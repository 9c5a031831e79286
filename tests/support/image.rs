//! The test image: a static busybox imported with `docker import`, because no registry is reachable.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::dockerd::Dockerd;
use super::process::{run_timeout, stderr_text};

pub const IMAGE: &str = "cnbt-busybox:latest";
/// What `/www/index.html` in the image contains; scenarios fetch it over HTTP.
pub const INDEX_HTML: &str = "cnibridge e2e: hello from the container\n";

/// Busybox applets the scenarios call; each becomes a symlink in /bin.
const APPLETS: &[&str] = &[
    "sh", "ping", "ping6", "ip", "httpd", "wget", "sleep", "cat", "echo", "ls", "hostname", "nc",
    "ifconfig", "route", "true", "ps",
];

/// Where the busybox-static package puts its binary (usrmerge or not).
const BUSYBOX_CANDIDATES: &[&str] = &["/bin/busybox", "/usr/bin/busybox"];

/// The first busybox on this host that can run in an empty rootfs (no dynamic loader there).
pub fn static_busybox() -> Result<PathBuf, String> {
    let mut seen = Vec::new();
    for candidate in BUSYBOX_CANDIDATES.iter().map(Path::new) {
        if !candidate.exists() {
            continue;
        }
        match is_static_elf(candidate) {
            Ok(true) => return Ok(candidate.to_path_buf()),
            Ok(false) => seen.push(format!("{} is dynamically linked", candidate.display())),
            Err(e) => seen.push(e),
        }
    }
    seen.push("install busybox-static".to_string());
    Err(format!("no static busybox: {}", seen.join("; ")))
}

/// True if the ELF file has no PT_INTERP program header (i.e. needs no dynamic loader).
fn is_static_elf(path: &Path) -> Result<bool, String> {
    let bytes = fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let bad = || format!("{} is not a little-endian ELF file", path.display());
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[5] != 1 {
        return Err(bad());
    }
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u32_at = |o: usize| {
        bytes
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize)
    };
    // ELF64 and ELF32 keep the program header table fields at different offsets.
    let (phoff, phentsize, phnum) = match bytes[4] {
        2 => (u64_at(0x20), u16_at(0x36), u16_at(0x38)),
        1 => (u32_at(0x1c), u16_at(0x2a), u16_at(0x2c)),
        _ => return Err(bad()),
    };
    let (phoff, phentsize, phnum) = (
        phoff.ok_or_else(bad)?,
        phentsize.ok_or_else(bad)?,
        phnum.ok_or_else(bad)?,
    );
    const PT_INTERP: usize = 3;
    for i in 0..phnum {
        if u32_at(phoff + i * phentsize).ok_or_else(bad)? == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Imports the busybox image into `dockerd` unless it is there already; returns the image name.
pub fn import_busybox(dockerd: &Dockerd) -> String {
    if dockerd
        .docker(&["image", "inspect", IMAGE])
        .status
        .success()
    {
        return IMAGE.to_string();
    }
    let busybox = static_busybox().unwrap_or_else(|e| panic!("{e}"));
    let work = dockerd.dir().join("image");
    let root = work.join("rootfs");
    build_rootfs(&root, &busybox).unwrap_or_else(|e| panic!("building the busybox rootfs: {e}"));
    let tarball = work.join("rootfs.tar");
    let out = run_timeout(
        Command::new("tar")
            .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
            .arg(&root)
            .arg("-cf")
            .arg(&tarball)
            .arg("."),
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "tar failed: {}", stderr_text(&out));
    let tar_arg = tarball.display().to_string();
    let out = dockerd.docker(&[
        "import",
        "--change",
        r#"CMD ["/bin/sh"]"#,
        "--change",
        "ENV PATH=/bin",
        &tar_arg,
        IMAGE,
    ]);
    assert!(
        out.status.success(),
        "docker import failed: {}",
        stderr_text(&out)
    );
    let _ = fs::remove_dir_all(&work);
    IMAGE.to_string()
}

fn build_rootfs(root: &Path, busybox: &Path) -> std::io::Result<()> {
    let _ = fs::remove_dir_all(root);
    for dir in ["bin", "www", "etc", "proc", "sys", "dev", "tmp", "root"] {
        fs::create_dir_all(root.join(dir))?;
    }
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    fs::copy(busybox, root.join("bin/busybox"))?;
    fs::set_permissions(root.join("bin/busybox"), fs::Permissions::from_mode(0o755))?;
    for applet in APPLETS {
        symlink("busybox", root.join("bin").join(applet))?;
    }
    fs::write(root.join("www/index.html"), INDEX_HTML)?;
    // Docker bind-mounts its own hosts/resolv.conf/hostname over these; they only need to exist.
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    fs::write(root.join("etc/group"), "root:x:0:\n")?;
    Ok(())
}
