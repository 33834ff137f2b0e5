//! A lone `ovsdb-server` for the OVN Northbound schema listening for ssl on loopback, with a PKI
//! made by `ovs-pki` in a temporary directory. Needs no root: it is for testing the ssl client.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::sh;

/// Skips (None, saying why) when a tool is missing; fails instead under DETRACE_REQUIRE_HOST_LAB.
pub fn ssl_tools_available() -> Option<()> {
    let missing: Vec<&str> = [
        "ovsdb-server",
        "ovsdb-tool",
        "ovs-pki",
        "ovn-nbctl",
        "openssl",
    ]
    .into_iter()
    .filter(|b| crate::which(b).is_none())
    .collect();
    if missing.is_empty() {
        return Some(());
    }
    let msg = format!(
        "ssl test needs: {} (`cargo xtask deps`)",
        missing.join(", ")
    );
    if std::env::var("DETRACE_REQUIRE_HOST_LAB").is_ok_and(|v| v == "1") {
        panic!("{msg}");
    }
    eprintln!("SKIP: {msg}");
    None
}

/// A certificate authority made by `ovs-pki init`, able to sign certificates.
pub struct Ca {
    dir: PathBuf,
    log: PathBuf,
}

/// A private key and its certificate (PEM files).
pub struct KeyPair {
    pub private_key: PathBuf,
    pub certificate: PathBuf,
}

impl Ca {
    pub fn init(dir: &Path) -> anyhow::Result<Ca> {
        let ca = Ca {
            dir: dir.join("pki"),
            log: dir.join("pki.log"),
        };
        std::fs::create_dir_all(dir)?;
        sh(ca.ovs_pki(dir).arg("init"))?;
        Ok(ca)
    }

    fn ovs_pki(&self, cwd: &Path) -> Command {
        let mut c = Command::new("ovs-pki");
        c.current_dir(cwd)
            .arg(format!("--dir={}", self.dir.display()))
            .arg(format!("--log={}", self.log.display()))
            .arg("--batch");
        c
    }

    /// The CA certificate, for `--ca-cert`.
    pub fn cert(&self) -> PathBuf {
        self.dir.join("switchca/cacert.pem")
    }

    /// `ovs-pki req+sign NAME switch` in `dir`: NAME-privkey.pem and NAME-cert.pem.
    pub fn sign(&self, dir: &Path, name: &str) -> anyhow::Result<KeyPair> {
        sh(self.ovs_pki(dir).args(["req+sign", name, "switch"]))?;
        Ok(KeyPair {
            private_key: dir.join(format!("{name}-privkey.pem")),
            certificate: dir.join(format!("{name}-cert.pem")),
        })
    }
}

/// An `ovsdb-server` serving an empty OVN_Northbound on `pssl:0:127.0.0.1` (the kernel picks
/// the port) and on a unix socket for `ovn-nbctl`. Killed (by its PID) on drop.
pub struct SslNb {
    child: Child,
    pub port: u16,
    pub unix: PathBuf,
}

impl SslNb {
    pub fn start(dir: &Path, server: &KeyPair, ca: &Path) -> anyhow::Result<SslNb> {
        let db = dir.join("nb.db");
        sh(Command::new("ovsdb-tool")
            .arg("create")
            .arg(&db)
            .arg("/usr/share/ovn/ovn-nb.ovsschema"))?;
        let log = dir.join("ovsdb-server.log");
        let unix = dir.join("nb.sock");
        let child = Command::new("ovsdb-server")
            .arg(&db)
            .arg("--remote=pssl:0:127.0.0.1")
            .arg(format!("--remote=punix:{}", unix.display()))
            .arg(format!("--private-key={}", server.private_key.display()))
            .arg(format!("--certificate={}", server.certificate.display()))
            .arg(format!("--ca-cert={}", ca.display()))
            .arg(format!("--unixctl={}", dir.join("nb.ctl").display()))
            .arg(format!("--log-file={}", log.display()))
            .arg("--no-chdir")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start ovsdb-server")?;
        let mut nb = SslNb {
            child,
            port: 0,
            unix,
        };
        nb.port = listening_port(&log)?;
        Ok(nb)
    }

    pub fn remote(&self) -> String {
        format!("ssl:127.0.0.1:{}", self.port)
    }

    /// Runs ovn-nbctl against the unix socket.
    pub fn nbctl(&self, args: &[&str]) -> anyhow::Result<String> {
        sh(Command::new("ovn-nbctl")
            .arg(format!("--db=unix:{}", self.unix.display()))
            .args(args))
    }
}

/// The port ovsdb-server logs for its `0:127.0.0.1` listener (socket_util's "listening on
/// port N"), as OVS's own tests read it (PARSE_LISTENING_PORT).
fn listening_port(log: &Path) -> anyhow::Result<u16> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(port) = text
            .lines()
            .filter_map(|l| l.split_once("0:127.0.0.1: listening on port "))
            .find_map(|(_, p)| p.trim().parse().ok())
        {
            return Ok(port);
        }
        thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "ovsdb-server did not say which port it listens on ({})",
        log.display()
    )
}

impl Drop for SslNb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
