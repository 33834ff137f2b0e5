//! OVSDB over ssl against a real `ovsdb-server` with certificates made by `ovs-pki`: the replica
//! connects, monitors and receives rows and updates; a wrong CA, a client certificate the server
//! does not trust, and missing options each fail saying which remote and why.

use std::{path::Path, process::Command, time::Duration};

use detrace::{
    ovn::schema::{NB_DB, NB_REQUIRED, NB_TABLES},
    ovsdb::{Connection, OvsdbError, Remote, Replica, SslFiles, ssl::SslError},
};
use detrace_tests::{
    detrace_bin,
    pki::{Ca, KeyPair, SslNb, ssl_tools_available},
};

const TIMEOUT: Duration = Duration::from_secs(10);

/// A temporary directory, removed on drop (unless DETRACE_KEEP_LAB is set).
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("dt-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("DETRACE_KEEP_LAB").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn files(client: &KeyPair, ca: &Path) -> SslFiles {
    SslFiles {
        private_key: Some(client.private_key.clone()),
        certificate: Some(client.certificate.clone()),
        ca_cert: Some(ca.to_path_buf()),
    }
}

fn logical_switches(r: &Replica) -> Vec<String> {
    let mut names: Vec<String> = r
        .rows("Logical_Switch")
        .filter_map(|(_, row)| row.str("name").map(str::to_string))
        .collect();
    names.sort();
    names
}

#[test]
fn nb_over_ssl() {
    if ssl_tools_available().is_none() {
        return;
    }
    let tmp = TempDir::new("ssl");
    let dir = &tmp.0;
    let ca = Ca::init(&dir.join("ca")).expect("ovs-pki init");
    let server = ca.sign(dir, "server").expect("server cert");
    let client = ca.sign(dir, "client").expect("client cert");
    // Another CA, and a client certificate it signed: neither side trusts it.
    let other = Ca::init(&dir.join("other")).expect("ovs-pki init (other CA)");
    let stranger = other
        .sign(&dir.join("other"), "stranger")
        .expect("stranger cert");

    let nb = SslNb::start(dir, &server, &ca.cert()).expect("ovsdb-server");
    nb.nbctl(&["ls-add", "sw0"]).expect("ls-add sw0");

    // Connect and monitor: the rows arrive, and so do later changes.
    let remote = Remote::parse_with(&nb.remote(), &files(&client, &ca.cert())).expect("remote");
    assert_eq!(remote.to_string(), nb.remote());
    let mut conn = Connection::connect(&remote, TIMEOUT).expect("connect over ssl");
    let mut replica = Replica::new(NB_DB, NB_TABLES);
    replica
        .start_monitor(&mut conn, NB_REQUIRED)
        .expect("monitor over ssl");
    assert_eq!(logical_switches(&replica), ["sw0"]);
    nb.nbctl(&["ls-add", "sw1"]).expect("ls-add sw1");
    while logical_switches(&replica).len() < 2 {
        let msg = conn.next_notification().expect("update over ssl");
        replica.apply_notification(&msg);
    }
    assert_eq!(logical_switches(&replica), ["sw0", "sw1"]);
    drop(conn);

    // Renewed files are read again at the next connection: here our certificate is replaced
    // by one the server does not trust, then put back.
    let (key, cert) = (
        dir.join("renewed-privkey.pem"),
        dir.join("renewed-cert.pem"),
    );
    let put = |pair: &KeyPair| {
        std::fs::copy(&pair.private_key, &key).expect("copy key");
        std::fs::copy(&pair.certificate, &cert).expect("copy cert");
    };
    put(&client);
    let renewed = KeyPair {
        private_key: key.clone(),
        certificate: cert.clone(),
    };
    let rotating = Remote::parse_with(&nb.remote(), &files(&renewed, &ca.cert())).expect("remote");
    let list_dbs = |r: &Remote| Connection::connect(r, TIMEOUT).and_then(|mut c| c.list_dbs());
    assert!(list_dbs(&rotating).is_ok());
    std::thread::sleep(Duration::from_millis(20)); // a later modification time
    put(&stranger);
    assert!(
        list_dbs(&rotating).is_err(),
        "the replaced certificate was not read again"
    );
    std::thread::sleep(Duration::from_millis(20));
    put(&client);
    assert!(
        list_dbs(&rotating).is_ok(),
        "the restored certificate was not read again"
    );
    // Every session above ended with close_notify: the server saw clean closes.
    let log = std::fs::read_to_string(dir.join("ovsdb-server.log")).expect("server log");
    assert!(!log.contains("unexpected eof"), "{log}");

    // The server's certificate is not signed by the CA we were given.
    let wrong_ca =
        Remote::parse_with(&nb.remote(), &files(&client, &other.cert())).expect("remote");
    let err = Connection::connect(&wrong_ca, TIMEOUT)
        .err()
        .expect("a server signed by another CA must be refused");
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            OvsdbError::Ssl {
                error: SslError::Handshake { .. },
                ..
            }
        ),
        "{msg}"
    );
    assert!(msg.contains(&nb.remote()), "names the remote: {msg}");
    assert!(msg.contains("not signed by --ca-cert"), "says why: {msg}");

    // The server does not trust our certificate (with TLS 1.3 it says so after the client's
    // side of the handshake, on the first read).
    let untrusted =
        Remote::parse_with(&nb.remote(), &files(&stranger, &ca.cert())).expect("remote");
    match Connection::connect(&untrusted, TIMEOUT).and_then(|mut c| c.list_dbs()) {
        Ok(dbs) => panic!("a client certificate from another CA was accepted: {dbs:?}"),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                matches!(
                    e,
                    OvsdbError::Ssl {
                        error: SslError::Handshake { .. },
                        ..
                    }
                ),
                "{msg}"
            );
            assert!(msg.contains(&nb.remote()), "names the remote: {msg}");
            assert!(
                msg.contains("the server refused our --certificate"),
                "says why: {msg}"
            );
        }
    }
}

/// The binary, before it needs any daemon: an ssl remote without the PKI options, or with a
/// file it cannot read, fails at once and says what to give.
#[test]
fn ssl_options_checked_first() {
    if !detrace_bin().is_file() {
        let msg = format!(
            "no detrace binary at {}: `cargo build`",
            detrace_bin().display()
        );
        assert!(std::env::var("DETRACE_REQUIRE_HOST_LAB").is_err(), "{msg}");
        eprintln!("SKIP: {msg}");
        return;
    }
    let run = |args: &[&str]| {
        let out = Command::new(detrace_bin())
            .args(["explain", "--all", "--ovs-rundir", "/nonexistent"])
            .args(args)
            .env_remove("OVN_SB_DB")
            .env_remove("OVN_NB_DB")
            .output()
            .expect("run detrace");
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&["--nb-db", "ssl:127.0.0.1:6641", "--sb-db", "unix:/x.sock"]);
    assert!(
        err.contains("ssl:127.0.0.1:6641: needs --private-key, --certificate, --ca-cert"),
        "{err}"
    );
    let err = run(&[
        "--nb-db",
        "ssl:127.0.0.1:6641",
        "-p",
        "/nonexistent/key.pem",
        "-c",
        "/nonexistent/cert.pem",
        "-C",
        "/nonexistent/ca.pem",
    ]);
    assert!(
        err.contains("--certificate /nonexistent/cert.pem: No such file"),
        "{err}"
    );
}
