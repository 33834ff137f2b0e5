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
pub const DEFAULT_OVS_RUNDIR: &str = "/var/run/openvswitch";

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
    /// The daemon answered with an error: the command ran and refused.
    #[error("{method}: {message}")]
    Remote { method: String, message: String },
}

/// The seam between logic and a running ovs-vswitchd: anything that answers appctl commands.
pub trait Appctl {
    fn call(&mut self, method: &str, params: &[&str]) -> Result<String, UnixctlError>;
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

fn decode_reply(method: &str, path: &Path, reply: &Value) -> Result<String, UnixctlError> {
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

    #[test]
    fn missing_pidfile_is_explained() {
        let err = socket_path(Path::new("/nonexistent-rundir"), "ovs-vswitchd").unwrap_err();
        assert!(err.to_string().contains("is ovs-vswitchd running"), "{err}");
    }
}
