//! OVSDB JSON-RPC 1.0 over unix, tcp or ssl streams (RFC 7047 section 4): requests with ids,
//! replies, `update` notifications, and `echo` keepalives that must be answered.

use std::{
    collections::VecDeque,
    io::{BufReader, Write},
    net::TcpStream,
    os::unix::net::UnixStream,
    path::PathBuf,
    time::Duration,
};

use serde::Deserialize;
use serde_json::{Value, json, value::RawValue};

use super::{
    ssl::{self, SslConfig, SslError, SslFiles},
    stream::{Stream, lock},
};

/// Where a database server listens: `unix:PATH`, `tcp:HOST:PORT` or `ssl:HOST:PORT`
/// (ovsdb-server(1) syntax). An ssl remote carries the PKI files it was given, loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Remote {
    Unix(PathBuf),
    Tcp(String),
    Ssl(String, SslConfig),
}

impl Remote {
    /// Parses a comma-separated list (a clustered database lists every member).
    pub fn parse_list(s: &str) -> Result<Vec<Remote>, OvsdbError> {
        Self::parse_list_with(s, &SslFiles::default())
    }

    /// Like [`parse_list`](Self::parse_list), with the PKI files that ssl remotes need.
    pub fn parse_list_with(s: &str, ssl: &SslFiles) -> Result<Vec<Remote>, OvsdbError> {
        let list: Vec<Remote> = s
            .split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(|r| Remote::parse_with(r, ssl))
            .collect::<Result<_, _>>()?;
        if list.is_empty() {
            return Err(OvsdbError::BadRemote {
                remote: s.to_string(),
            });
        }
        Ok(list)
    }

    pub fn parse(s: &str) -> Result<Remote, OvsdbError> {
        Self::parse_with(s, &SslFiles::default())
    }

    pub fn parse_with(s: &str, ssl: &SslFiles) -> Result<Remote, OvsdbError> {
        if let Some(p) = s.strip_prefix("unix:") {
            Ok(Remote::Unix(PathBuf::from(p)))
        } else if let Some(hp) = s.strip_prefix("tcp:") {
            // tcp:[::1]:6641 -> "[::1]:6641", which std's resolver accepts as is.
            Ok(Remote::Tcp(hp.to_string()))
        } else if let Some(hp) = s.strip_prefix("ssl:") {
            if !hp.contains(':') {
                return Err(OvsdbError::BadRemote {
                    remote: s.to_string(),
                });
            }
            let config = ssl.load().map_err(|error| OvsdbError::Ssl {
                remote: s.to_string(),
                error,
            })?;
            Ok(Remote::Ssl(hp.to_string(), config))
        } else {
            Err(OvsdbError::BadRemote {
                remote: s.to_string(),
            })
        }
    }
}

impl std::fmt::Display for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Remote::Unix(p) => write!(f, "unix:{}", p.display()),
            Remote::Tcp(a) => write!(f, "tcp:{a}"),
            Remote::Ssl(a, _) => write!(f, "ssl:{a}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OvsdbError {
    #[error("bad OVSDB remote {remote:?}: expected unix:PATH, tcp:HOST:PORT or ssl:HOST:PORT")]
    BadRemote { remote: String },
    #[error("{remote}: {error}")]
    Ssl { remote: String, error: SslError },
    #[error("permission denied connecting to {remote}: run as root or as the owner of the socket")]
    PermissionDenied { remote: String },
    #[error("cannot connect to {remote} (is the database server running?)")]
    Connect {
        remote: String,
        #[source]
        source: std::io::Error,
    },
    #[error("I/O error with {remote}")]
    Io {
        remote: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{remote} closed the connection")]
    Closed { remote: String },
    #[error("malformed message from {remote}: {detail}")]
    Malformed { remote: String, detail: String },
    #[error("{remote} refused {method}: {error}")]
    Remote {
        remote: String,
        method: String,
        error: String,
    },
    #[error(
        "{remote} does not serve {wanted} (it serves: {found}); check the --nb-db/--sb-db options"
    )]
    WrongDatabase {
        remote: String,
        wanted: String,
        found: String,
    },
    #[error("{remote}: database {db} has no table {table}: not an OVN schema detrace knows")]
    WrongSchema {
        remote: String,
        db: String,
        table: String,
    },
}

impl OvsdbError {
    /// Errors that a retry cannot fix (the user pointed detrace at the wrong thing).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Self::BadRemote { .. }
                | Self::PermissionDenied { .. }
                | Self::WrongDatabase { .. }
                | Self::WrongSchema { .. }
        ) || matches!(self, Self::Ssl { error, .. } if error.is_fatal())
    }

    /// An I/O error, or the TLS failure inside it.
    fn io(remote: &str, source: std::io::Error) -> OvsdbError {
        match ssl::tls_error(&source) {
            Some(error) => OvsdbError::Ssl {
                remote: remote.to_string(),
                error,
            },
            None => OvsdbError::Io {
                remote: remote.to_string(),
                source,
            },
        }
    }
}

/// One JSON-RPC message. Payloads stay raw JSON text until someone needs them: a `monitor`
/// reply of a million rows is applied row by row from the text, never built as one tree.
#[derive(Debug, Deserialize)]
pub struct Message {
    #[serde(default)]
    pub id: Value,
    pub method: Option<String>,
    pub params: Option<Box<RawValue>>,
    pub result: Option<Box<RawValue>>,
    #[serde(default)]
    pub error: Value,
}

type Messages =
    serde_json::StreamDeserializer<'static, serde_json::de::IoRead<BufReader<Stream>>, Message>;

/// One JSON-RPC session with an OVSDB server.
pub struct Connection {
    remote: String,
    writer: Stream,
    messages: Messages,
    next_id: u64,
    /// Notifications (e.g. `update`) that arrived while waiting for a reply.
    pending: VecDeque<Message>,
}

/// A TLS session ends with close_notify, so the server sees a clean close rather than an
/// "unexpected eof" warning for every connection.
impl Drop for Connection {
    fn drop(&mut self) {
        if let Stream::Ssl(t, _) = &self.writer {
            ssl::close(&mut lock(t));
        }
    }
}

impl Connection {
    pub fn connect(remote: &Remote, timeout: Duration) -> Result<Self, OvsdbError> {
        let name = remote.to_string();
        let connect_err = |source: std::io::Error| match source.kind() {
            std::io::ErrorKind::PermissionDenied => OvsdbError::PermissionDenied {
                remote: name.clone(),
            },
            _ => OvsdbError::Connect {
                remote: name.clone(),
                source,
            },
        };
        let io = |source| OvsdbError::Io {
            remote: name.clone(),
            source,
        };
        let tcp = |a: &str| {
            use std::net::ToSocketAddrs;
            let addr = a
                .to_socket_addrs()
                .map_err(connect_err)?
                .next()
                .ok_or_else(|| OvsdbError::BadRemote {
                    remote: name.clone(),
                })?;
            let sock = TcpStream::connect_timeout(&addr, timeout).map_err(connect_err)?;
            // Bounds the TLS handshake too.
            sock.set_read_timeout(Some(timeout)).map_err(io)?;
            Ok::<_, OvsdbError>(sock)
        };
        let stream = match remote {
            Remote::Unix(p) => Stream::Unix(UnixStream::connect(p).map_err(connect_err)?),
            Remote::Tcp(a) => Stream::Tcp(tcp(a)?),
            Remote::Ssl(a, config) => {
                let sock = tcp(a)?;
                let host = a.rsplit_once(':').map_or(a.as_str(), |(h, _)| h);
                let timeouts = sock.try_clone().map_err(io)?;
                Stream::Ssl(
                    ssl::handshake(config, host, sock).map_err(|error| OvsdbError::Ssl {
                        remote: name.clone(),
                        error,
                    })?,
                    timeouts,
                )
            }
        };
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        let reader = stream.try_clone().map_err(io)?;
        Ok(Self {
            remote: name.clone(),
            writer: stream,
            messages: serde_json::Deserializer::from_reader(BufReader::new(reader)).into_iter(),
            next_id: 1,
            pending: VecDeque::new(),
        })
    }

    pub fn remote(&self) -> &str {
        &self.remote
    }

    /// Read timeout: the longest a `call` or `next_notification` blocks.
    pub fn set_timeout(&self, t: Option<Duration>) -> Result<(), OvsdbError> {
        // SO_RCVTIMEO belongs to the socket, shared by the reader's and the writer's handles.
        self.writer
            .set_read_timeout(t)
            .map_err(|source| OvsdbError::Io {
                remote: self.remote.clone(),
                source,
            })
    }

    fn send(&mut self, msg: &Value) -> Result<(), OvsdbError> {
        let bytes = serde_json::to_vec(msg).map_err(|e| OvsdbError::Malformed {
            remote: self.remote.clone(),
            detail: e.to_string(),
        })?;
        self.writer
            .write_all(&bytes)
            .map_err(|source| OvsdbError::io(&self.remote, source))
    }

    /// Reads one message, answering `echo` requests on the way (the server drops idle clients
    /// that do not answer them).
    fn read_message(&mut self) -> Result<Message, OvsdbError> {
        loop {
            let msg = match self.messages.next() {
                None => {
                    return Err(OvsdbError::Closed {
                        remote: self.remote.clone(),
                    });
                }
                Some(Err(e)) if e.is_io() => {
                    return Err(OvsdbError::io(&self.remote, e.into()));
                }
                Some(Err(e)) if e.is_eof() => {
                    return Err(OvsdbError::Closed {
                        remote: self.remote.clone(),
                    });
                }
                Some(Err(e)) => {
                    return Err(OvsdbError::Malformed {
                        remote: self.remote.clone(),
                        detail: e.to_string(),
                    });
                }
                Some(Ok(v)) => v,
            };
            if msg.method.as_deref() == Some("echo") && !msg.id.is_null() {
                let params: Value = msg
                    .params
                    .as_deref()
                    .and_then(|p| serde_json::from_str(p.get()).ok())
                    .unwrap_or(json!([]));
                let reply = json!({"id": msg.id, "result": params, "error": null});
                self.send(&reply)?;
                continue;
            }
            return Ok(msg);
        }
    }

    /// Sends a request and waits for its reply (raw JSON), queueing notifications that arrive
    /// meanwhile.
    pub fn call_raw(&mut self, method: &str, params: Value) -> Result<Box<RawValue>, OvsdbError> {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"method": method, "params": params, "id": id}))?;
        loop {
            let msg = self.read_message()?;
            if msg.method.is_some() {
                self.pending.push_back(msg);
                continue;
            }
            if msg.id.as_u64() != Some(id) {
                continue; // a late reply to something we gave up on
            }
            if !msg.error.is_null() {
                return Err(OvsdbError::Remote {
                    remote: self.remote.clone(),
                    method: method.to_string(),
                    error: msg.error.to_string(),
                });
            }
            return msg.result.ok_or_else(|| OvsdbError::Malformed {
                remote: self.remote.clone(),
                detail: format!("reply to {method} has no result"),
            });
        }
    }

    /// Like [`call_raw`](Self::call_raw), for small replies wanted as a JSON tree.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, OvsdbError> {
        let raw = self.call_raw(method, params)?;
        serde_json::from_str(raw.get()).map_err(|e| OvsdbError::Malformed {
            remote: self.remote.clone(),
            detail: format!("reply to {method}: {e}"),
        })
    }

    /// Next notification (`update`...), blocking up to the read timeout.
    pub fn next_notification(&mut self) -> Result<Message, OvsdbError> {
        if let Some(n) = self.pending.pop_front() {
            return Ok(n);
        }
        loop {
            let msg = self.read_message()?;
            if msg.method.is_some() {
                return Ok(msg);
            }
        }
    }

    pub fn list_dbs(&mut self) -> Result<Vec<String>, OvsdbError> {
        let v = self.call("list_dbs", json!([]))?;
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .ok_or_else(|| OvsdbError::Malformed {
                remote: self.remote.clone(),
                detail: "list_dbs result is not an array".into(),
            })
    }

    /// Table name -> column names, from `get_schema`.
    pub fn table_columns(&mut self, db: &str) -> Result<Vec<(String, Vec<String>)>, OvsdbError> {
        let schema = self.call("get_schema", json!([db]))?;
        schema_tables(&schema).ok_or_else(|| OvsdbError::Malformed {
            remote: self.remote.clone(),
            detail: format!("schema of {db} has no tables"),
        })
    }
}

/// Extracts table -> columns from a schema object.
pub fn schema_tables(schema: &Value) -> Option<Vec<(String, Vec<String>)>> {
    let tables = schema.get("tables")?.as_object()?;
    Some(
        tables
            .iter()
            .map(|(t, def)| {
                let cols = def
                    .get("columns")
                    .and_then(Value::as_object)
                    .map(|c| c.keys().cloned().collect())
                    .unwrap_or_default();
                (t.clone(), cols)
            })
            .collect(),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on the unexpected")]
mod tests {
    use super::*;

    #[test]
    fn remotes() {
        assert_eq!(
            Remote::parse_list("unix:/run/ovn/ovnsb_db.sock").unwrap(),
            vec![Remote::Unix("/run/ovn/ovnsb_db.sock".into())]
        );
        assert_eq!(
            Remote::parse_list("tcp:127.0.0.1:6642,tcp:[::1]:6642").unwrap(),
            vec![
                Remote::Tcp("127.0.0.1:6642".into()),
                Remote::Tcp("[::1]:6642".into())
            ]
        );
        assert!(matches!(
            Remote::parse("ssl:6642"),
            Err(OvsdbError::BadRemote { .. })
        ));
        assert!(matches!(
            Remote::parse("/tmp/x.sock"),
            Err(OvsdbError::BadRemote { .. })
        ));
        assert!(Remote::parse_list(" , ").is_err());
    }

    #[test]
    fn schema_of_real_sb() {
        let reply = crate::testutil::fixture_json("ovs-3.1/ovsdb/sb-schema.json");
        let tables = schema_tables(&reply["result"]).unwrap();
        let lf = tables.iter().find(|(t, _)| t == "Logical_Flow").unwrap();
        assert!(lf.1.iter().any(|c| c == "external_ids"));
        assert!(
            !lf.1.iter().any(|c| c == "flow_desc"),
            "23.03 has no flow_desc"
        );
    }
}
