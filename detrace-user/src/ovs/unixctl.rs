//! The unixctl protocol ovs-appctl speaks (lib/unixctl.c, lib/jsonrpc.c): JSON-RPC 1.0 objects
//! back to back on a unix socket, no framing, string params, one request in flight.

use std::{
    io::{BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::{Value, json};

/// Default run directory of OVS packages (lib/dirs.c); `OVS_RUNDIR` overrides it.
pub const DEFAULT_OVS_RUNDIR: &str = crate::paths::OVS_RUNDIR;

#[derive(Debug, thiserror::Error)]
pub enum UnixctlError {
    #[error("cannot read pidfile {path}: is {target} running? (looked in the OVS run directory)")]
    NoPidfile {
        target: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pidfile {path} does not hold a process id")]
    BadPidfile { path: PathBuf },
    #[error("permission denied on {path}: run detrace as root (or as the user running OVS)")]
    PermissionDenied { path: PathBuf },
    #[error("cannot connect to {path} (stale pidfile? is the daemon still running?)")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} closed the connection")]
    Closed { path: PathBuf },
    #[error("malformed reply from {path}: {detail}")]
    Malformed { path: PathBuf, detail: String },
    /// The daemon went away and has not come back yet.
    #[error("{target} is down (for {secs:.1}s); waiting for it to come back")]
    Down { target: String, secs: f64 },
    /// The daemon answered with an error: the command ran and refused.
    #[error("{method}: {message}")]
    Remote { method: String, message: String },
}

/// The seam between logic and a running ovs-vswitchd: anything that answers appctl commands.
pub trait Appctl {
    fn call(&mut self, method: &str, params: &[&str]) -> Result<String, UnixctlError>;

    /// Changes whenever the peer may be a different daemon than before (it restarted and was
    /// reconnected to): what was learnt about it (its commands, datapaths, ports) is stale.
    fn generation(&self) -> u64 {
        0
    }
}

/// Finds `<rundir>/<target>.<pid>.ctl` from `<rundir>/<target>.pid`, as ovs-appctl does.
pub fn socket_path(rundir: &Path, target: &str) -> Result<PathBuf, UnixctlError> {
    let pidfile = rundir.join(format!("{target}.pid"));
    let text = std::fs::read_to_string(&pidfile).map_err(|source| {
        if source.kind() == std::io::ErrorKind::PermissionDenied {
            UnixctlError::PermissionDenied {
                path: pidfile.clone(),
            }
        } else {
            UnixctlError::NoPidfile {
                target: target.to_string(),
                path: pidfile.clone(),
                source,
            }
        }
    })?;
    let pid: u32 = text
        .trim()
        .parse()
        .map_err(|_| UnixctlError::BadPidfile { path: pidfile })?;
    Ok(rundir.join(format!("{target}.{pid}.ctl")))
}

type Replies =
    serde_json::StreamDeserializer<'static, serde_json::de::IoRead<BufReader<UnixStream>>, Value>;

/// A connection to one daemon's unixctl server.
pub struct UnixctlClient {
    path: PathBuf,
    writer: UnixStream,
    replies: Replies,
    next_id: u64,
}

impl UnixctlClient {
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, UnixctlError> {
        let stream = UnixStream::connect(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::PermissionDenied => UnixctlError::PermissionDenied {
                path: path.to_path_buf(),
            },
            _ => UnixctlError::Connect {
                path: path.to_path_buf(),
                source,
            },
        })?;
        let io = |source| UnixctlError::Io {
            path: path.to_path_buf(),
            source,
        };
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        stream.set_write_timeout(Some(timeout)).map_err(io)?;
        let reader = stream.try_clone().map_err(io)?;
        Ok(Self {
            path: path.to_path_buf(),
            writer: stream,
            replies: serde_json::Deserializer::from_reader(BufReader::new(reader)).into_iter(),
            next_id: 0,
        })
    }

    /// Connects to `target` (e.g. "ovs-vswitchd") found through its pidfile in `rundir`.
    pub fn connect_target(
        rundir: &Path,
        target: &str,
        timeout: Duration,
    ) -> Result<Self, UnixctlError> {
        Self::connect(&socket_path(rundir, target)?, timeout)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Appctl for UnixctlClient {
    fn call(&mut self, method: &str, params: &[&str]) -> Result<String, UnixctlError> {
        let id = self.next_id;
        self.next_id += 1;
        let req = json!({"method": method, "params": params, "id": id});
        let io = |source| UnixctlError::Io {
            path: self.path.clone(),
            source,
        };
        let bytes = serde_json::to_vec(&req).map_err(|e| UnixctlError::Malformed {
            path: self.path.clone(),
            detail: e.to_string(),
        })?;
        self.writer.write_all(&bytes).map_err(io)?;
        loop {
            let reply = match self.replies.next() {
                None => {
                    return Err(UnixctlError::Closed {
                        path: self.path.clone(),
                    });
                }
                Some(Err(e)) if e.is_io() => {
                    return Err(UnixctlError::Io {
                        path: self.path.clone(),
                        source: e.into(),
                    });
                }
                Some(Err(e)) => {
                    return Err(UnixctlError::Malformed {
                        path: self.path.clone(),
                        detail: e.to_string(),
                    });
                }
                Some(Ok(v)) => v,
            };
            // The server sends nothing but replies; anything for another id is stale.
            if reply.get("id").and_then(Value::as_u64) != Some(id) {
                continue;
            }
            return decode_reply(method, &self.path, &reply);
        }
    }
}

/// A daemon's unixctl server found through its pidfile, followed across restarts: a restarted
/// ovs-vswitchd has a new pid, hence a new `<target>.<pid>.ctl`. A call that finds the
/// connection gone looks the socket up again, reconnects and is sent once more. While the
/// daemon is down, calls fail at once (one reconnect attempt per [`Self::RETRY`]). The loss
/// and the recovery are each said once on stderr.
pub struct DaemonCtl {
    rundir: PathBuf,
    target: String,
    timeout: Duration,
    conn: Option<UnixctlClient>,
    generation: u64,
    down_since: Option<std::time::Instant>,
    last_attempt: Option<std::time::Instant>,
    /// Reconnections after a loss.
    pub reconnects: u64,
}

impl DaemonCtl {
    /// Least time between two reconnect attempts while the daemon is down.
    pub const RETRY: Duration = Duration::from_millis(500);

    /// Connects now: a daemon that is not there at start is an error the user must see.
    pub fn connect(rundir: &Path, target: &str, timeout: Duration) -> Result<Self, UnixctlError> {
        let conn = UnixctlClient::connect_target(rundir, target, timeout)?;
        Ok(Self {
            rundir: rundir.to_path_buf(),
            target: target.to_string(),
            timeout,
            conn: Some(conn),
            generation: 0,
            down_since: None,
            last_attempt: None,
            reconnects: 0,
        })
    }

    fn reconnect(&mut self) -> Result<(), UnixctlError> {
        let now = std::time::Instant::now();
        if let Some(t) = self.last_attempt
            && now.duration_since(t) < Self::RETRY
        {
            return Err(UnixctlError::Down {
                target: self.target.clone(),
                secs: self
                    .down_since
                    .map_or(0.0, |d| now.duration_since(d).as_secs_f64()),
            });
        }
        self.last_attempt = Some(now);
        let conn = UnixctlClient::connect_target(&self.rundir, &self.target, self.timeout)?;
        if let Some(d) = self.down_since.take() {
            // The loss is noticed at the first request after it: time from then, not from the
            // restart itself.
            eprintln!(
                "detrace: {}: reconnected to {} ({:.1}s after the loss was noticed)",
                self.target,
                conn.path().display(),
                d.elapsed().as_secs_f64()
            );
            self.reconnects += 1;
        }
        self.generation += 1;
        self.conn = Some(conn);
        Ok(())
    }

    fn lost(&mut self, e: &UnixctlError) {
        self.conn = None;
        if self.down_since.is_none() {
            eprintln!(
                "detrace: {}: connection lost ({e}); reconnecting (flows are explained again once \
                 it is back)",
                self.target
            );
            self.down_since = Some(std::time::Instant::now());
            self.last_attempt = None;
        }
    }
}

impl Appctl for DaemonCtl {
    fn call(&mut self, method: &str, params: &[&str]) -> Result<String, UnixctlError> {
        let mut sent_on_fresh = false;
        loop {
            if self.conn.is_none() {
                self.reconnect()?;
                sent_on_fresh = true;
            }
            let Some(conn) = self.conn.as_mut() else {
                unreachable!("connected just above")
            };
            match conn.call(method, params) {
                Err(
                    e @ (UnixctlError::Closed { .. }
                    | UnixctlError::Io { .. }
                    | UnixctlError::Connect { .. }),
                ) => {
                    self.lost(&e);
                    // Sent once on the old connection, once more on a new one; no more.
                    if sent_on_fresh {
                        return Err(e);
                    }
                }
                other => return other,
            }
        }
    }

    fn generation(&self) -> u64 {
        self.generation
    }
}

/// Public only for the fuzz target (`fuzz/fuzz_targets/unixctl_reply.rs`).
#[doc(hidden)]
pub fn decode_reply(method: &str, path: &Path, reply: &Value) -> Result<String, UnixctlError> {
    match (reply.get("result"), reply.get("error")) {
        (_, Some(err)) if !err.is_null() => Err(UnixctlError::Remote {
            method: method.to_string(),
            message: err
                .as_str()
                .map_or_else(|| err.to_string(), str::to_string)
                .trim_end()
                .to_string(),
        }),
        (Some(Value::String(s)), _) => Ok(s.clone()),
        (Some(Value::Null), _) | (None, _) => Ok(String::new()),
        (Some(other), _) => Err(UnixctlError::Malformed {
            path: path.to_path_buf(),
            detail: format!("result is not a string: {other}"),
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on the unexpected")]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    /// A one-connection server that answers with canned bytes, the way ovs-vswitchd frames them.
    fn serve(replies: Vec<&'static str>) -> (tempdir::Dir, PathBuf) {
        let dir = tempdir::Dir::new();
        let path = dir.0.join("t.ctl");
        let l = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut rd =
                serde_json::Deserializer::from_reader(s.try_clone().unwrap()).into_iter::<Value>();
            for r in replies {
                if rd.next().is_none() {
                    return;
                }
                s.write_all(r.as_bytes()).unwrap();
            }
        });
        (dir, path)
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                let p = std::env::temp_dir().join(format!(
                    "detrace-test-{}-{:?}",
                    std::process::id(),
                    std::thread::current().id()
                ));
                std::fs::create_dir_all(&p).unwrap();
                Self(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn result_error_and_garbage() {
        let (_d, path) = serve(vec![
            r#"{"id":0,"result":"hello\n","error":null}"#,
            r#"{"id":1,"error":"\"ofproto/detrace\" is not a valid command (use list-commands to see a list of valid commands)\n","result":null}"#,
            r#"{"id":2,"result":{"x":1},"error":null}"#,
            "}}}",
        ]);
        let mut c = UnixctlClient::connect(&path, Duration::from_secs(5)).unwrap();
        assert_eq!(c.call("version", &[]).unwrap(), "hello\n");
        match c.call("ofproto/detrace", &["ufid:x"]) {
            Err(UnixctlError::Remote { message, .. }) => {
                assert!(message.contains("not a valid command"))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            c.call("x", &[]),
            Err(UnixctlError::Malformed { .. })
        ));
        assert!(matches!(
            c.call("y", &[]),
            Err(UnixctlError::Malformed { .. })
        ));
    }

    /// A daemon `t` with this pid in `dir`: pidfile and `t.<pid>.ctl`, answering `replies`
    /// (each with its request's id) on one connection, then closing it.
    fn daemon(dir: &Path, pid: u32, replies: Vec<&'static str>) -> std::thread::JoinHandle<()> {
        let l = UnixListener::bind(dir.join(format!("t.{pid}.ctl"))).unwrap();
        std::fs::write(dir.join("t.pid"), format!("{pid}\n")).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let rd =
                serde_json::Deserializer::from_reader(s.try_clone().unwrap()).into_iter::<Value>();
            // Replies first: once they are all sent, no further request is waited for.
            for (r, req) in replies.into_iter().zip(rd) {
                let id = req.unwrap()["id"].clone();
                let reply = json!({"id": id, "result": r, "error": null});
                s.write_all(reply.to_string().as_bytes()).unwrap();
            }
        })
    }

    /// ovs-vswitchd restarted: a new pid, a new socket. The call that finds the old connection
    /// closed is sent again on the new one; while the daemon is down, calls fail at once.
    #[test]
    fn daemon_ctl_follows_a_restart() {
        let dir = tempdir::Dir::new();
        let first = daemon(&dir.0, 111, vec!["one\n"]);
        let mut c = DaemonCtl::connect(&dir.0, "t", Duration::from_secs(5)).unwrap();
        assert_eq!(c.call("a", &[]).unwrap(), "one\n");
        assert_eq!(c.generation(), 0);
        first.join().unwrap();
        // Down: the old socket is closed and the pidfile names a pid with no socket.
        std::fs::remove_file(dir.0.join("t.111.ctl")).unwrap();
        let t = std::time::Instant::now();
        let e = c.call("b", &[]).unwrap_err();
        assert!(
            matches!(
                e,
                UnixctlError::Connect { .. } | UnixctlError::Closed { .. }
            ),
            "{e:?}"
        );
        let e = c.call("b", &[]).unwrap_err();
        assert!(matches!(e, UnixctlError::Down { .. }), "{e:?}");
        assert!(e.to_string().contains("is down"), "{e}");
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "fails fast while down"
        );
        // Back with a new pid.
        let second = daemon(&dir.0, 222, vec!["two\n", "three\n"]);
        std::thread::sleep(DaemonCtl::RETRY);
        assert_eq!(c.call("b", &[]).unwrap(), "two\n");
        assert_eq!(c.generation(), 1, "a new daemon: a new generation");
        assert_eq!(c.reconnects, 1);
        assert_eq!(c.call("c", &[]).unwrap(), "three\n");
        drop(c);
        second.join().unwrap();
    }

    #[test]
    fn missing_pidfile_is_explained() {
        let err = socket_path(Path::new("/nonexistent-rundir"), "ovs-vswitchd").unwrap_err();
        assert!(err.to_string().contains("is ovs-vswitchd running"), "{err}");
    }
}
