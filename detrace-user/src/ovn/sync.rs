//! Keeps the SB and NB replicas current: one thread per database connects, monitors, applies
//! updates as they arrive, and reconnects (with backoff) when the connection is lost.

use std::{
    sync::{Arc, Condvar, Mutex, RwLock},
    thread,
    time::{Duration, Instant},
};

use super::schema::{NB_DB, NB_REQUIRED, NB_TABLES, SB_DB, SB_REQUIRED, SB_TABLES};
use crate::ovsdb::{Connection, OvsdbError, Remote, Replica};

/// The state of one database's replication, for the user and for `wait_ready`.
#[derive(Clone, Debug, Default)]
pub struct SyncStatus {
    pub ready: bool,
    pub connected_to: Option<String>,
    pub failures: u32,
    pub reconnects: u32,
    pub last_error: Option<String>,
    pub fatal: bool,
}

struct Shared {
    replica: RwLock<Replica>,
    status: Mutex<SyncStatus>,
    changed: Condvar,
}

/// Both replicas, each kept by its own thread.
#[derive(Clone)]
pub struct OvnReplicas {
    sb: Arc<Shared>,
    nb: Arc<Shared>,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{db}: {error}")]
    Failed { db: &'static str, error: String },
    #[error("{db}: no complete copy of the database after {waited:?} (last error: {last})")]
    Timeout {
        db: &'static str,
        waited: Duration,
        last: String,
    },
}

impl OvnReplicas {
    /// Starts replicating from `sb` and `nb` (each a list of remotes tried in turn).
    pub fn start(sb: Vec<Remote>, nb: Vec<Remote>, io_timeout: Duration) -> Self {
        let sb_shared = spawn(
            SB_DB,
            Replica::new(SB_DB, SB_TABLES),
            SB_REQUIRED,
            sb,
            io_timeout,
        );
        let nb_shared = spawn(
            NB_DB,
            Replica::new(NB_DB, NB_TABLES),
            NB_REQUIRED,
            nb,
            io_timeout,
        );
        Self {
            sb: sb_shared,
            nb: nb_shared,
        }
    }

    /// Builds replicas from already loaded contents (tests, benchmarks, replay).
    pub fn from_replicas(sb: Replica, nb: Replica) -> Self {
        let mk = |r| {
            Arc::new(Shared {
                replica: RwLock::new(r),
                status: Mutex::new(SyncStatus {
                    ready: true,
                    ..Default::default()
                }),
                changed: Condvar::new(),
            })
        };
        Self {
            sb: mk(sb),
            nb: mk(nb),
        }
    }

    /// Waits until both replicas hold a full copy. Fails fast on errors a retry cannot fix and
    /// after two failed attempts (an unreachable database), so a one-shot command says why.
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), SyncError> {
        for (db, s) in [(SB_DB, &self.sb), (NB_DB, &self.nb)] {
            wait_one(db, s, timeout)?;
        }
        Ok(())
    }

    pub fn sb(&self) -> std::sync::RwLockReadGuard<'_, Replica> {
        self.sb
            .replica
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn nb(&self) -> std::sync::RwLockReadGuard<'_, Replica> {
        self.nb
            .replica
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn status(&self) -> (SyncStatus, SyncStatus) {
        let get = |s: &Shared| {
            s.status
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        };
        (get(&self.sb), get(&self.nb))
    }
}

fn wait_one(db: &'static str, s: &Shared, timeout: Duration) -> Result<(), SyncError> {
    let deadline = Instant::now() + timeout;
    let mut st = s
        .status
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        if st.ready {
            return Ok(());
        }
        if st.fatal || st.failures >= 2 {
            return Err(SyncError::Failed {
                db,
                error: st.last_error.clone().unwrap_or_default(),
            });
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(SyncError::Timeout {
                db,
                waited: timeout,
                last: st.last_error.clone().unwrap_or_else(|| "none".into()),
            });
        }
        st = s
            .changed
            .wait_timeout(st, deadline - now)
            .map(|(g, _)| g)
            .unwrap_or_else(|e| e.into_inner().0);
    }
}

fn spawn(
    db: &'static str,
    replica: Replica,
    required: &'static [&'static str],
    remotes: Vec<Remote>,
    io_timeout: Duration,
) -> Arc<Shared> {
    let shared = Arc::new(Shared {
        replica: RwLock::new(replica),
        status: Mutex::new(SyncStatus::default()),
        changed: Condvar::new(),
    });
    let s = shared.clone();
    let spawned = thread::Builder::new()
        .name(format!("ovsdb-{db}"))
        .spawn(move || run(db, &s, required, &remotes, io_timeout));
    if let Err(e) = spawned {
        let mut st = shared
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        st.fatal = true;
        st.last_error = Some(format!("cannot start the {db} thread: {e}"));
    }
    shared
}

fn set_status(s: &Shared, f: impl FnOnce(&mut SyncStatus)) {
    let mut st = s
        .status
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    f(&mut st);
    s.changed.notify_all();
}

/// Connect, monitor, follow updates; on loss, back off and start over.
fn run(db: &'static str, s: &Shared, required: &[&str], remotes: &[Remote], io_timeout: Duration) {
    let mut backoff = Duration::from_millis(250);
    let mut next = 0usize;
    // When the connection to a ready replica was lost: said once, and again on recovery.
    let mut lost_at: Option<Instant> = None;
    loop {
        let remote = &remotes[next % remotes.len()];
        next += 1;
        let on_ready = |remote: &Remote| {
            if let Some(t) = lost_at {
                eprintln!(
                    "detrace: {db}: reconnected to {remote} after {:.1}s; replica reloaded",
                    t.elapsed().as_secs_f64()
                );
            }
        };
        match session(s, remote, required, io_timeout, on_ready) {
            Ok(never) => match never {},
            Err(e) => {
                let fatal = e.is_fatal();
                let was_ready = s.status.lock().map(|st| st.ready).unwrap_or(false);
                if was_ready {
                    // A live command keeps going on the last copy: say so once, not at every
                    // attempt.
                    eprintln!(
                        "detrace: {db}: connection lost ({e}); explaining from the last copy \
                         while reconnecting"
                    );
                    lost_at = Some(Instant::now());
                } else if lost_at.is_some() && !fatal {
                    // Still down after a loss already said: once is enough.
                    tracing::debug!("{db}: {e}; reconnecting");
                } else {
                    tracing::warn!("{db}: {e}{}", if fatal { "" } else { "; reconnecting" });
                }
                set_status(s, |st| {
                    st.ready = false;
                    st.connected_to = None;
                    st.failures += 1;
                    if was_ready {
                        st.reconnects += 1;
                    }
                    st.last_error = Some(e.to_string());
                    st.fatal = fatal;
                });
                if fatal {
                    return;
                }
                if was_ready {
                    backoff = Duration::from_millis(250);
                }
                thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn session(
    s: &Shared,
    remote: &Remote,
    required: &[&str],
    io_timeout: Duration,
    on_ready: impl FnOnce(&Remote),
) -> Result<std::convert::Infallible, OvsdbError> {
    let mut conn = Connection::connect(remote, io_timeout)?;
    {
        let mut r = s
            .replica
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        r.start_monitor(&mut conn, required)?;
    }
    set_status(s, |st| {
        st.ready = true;
        st.connected_to = Some(remote.to_string());
        st.last_error = None;
        st.failures = 0;
    });
    on_ready(remote);
    // Updates arrive whenever the database changes; the server's echo keeps idle sessions alive,
    // so reading without a timeout is safe and a dead server shows up as EOF or an error.
    conn.set_timeout(None)?;
    loop {
        let msg = conn.next_notification()?;
        let mut r = s
            .replica
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        r.apply_notification(&msg);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on the unexpected")]
mod tests {
    use std::{io::Write as _, os::unix::net::UnixListener, path::PathBuf};

    use serde_json::{Value, json};

    use super::*;

    use crate::testutil::fixture_json as fixture;

    /// Serves one OVSDB session per `contents` entry, answering list_dbs, get_schema and monitor
    /// (with that entry as the initial contents), then drops the connection: the client must
    /// reconnect and replace its replica.
    fn fake_server(path: PathBuf, db: &'static str, schema: Value, contents: Vec<Value>) {
        let l = UnixListener::bind(&path).unwrap();
        thread::spawn(move || {
            for initial in contents {
                let (mut s, _) = l.accept().unwrap();
                let rd = s.try_clone().unwrap();
                for msg in serde_json::Deserializer::from_reader(rd).into_iter::<Value>() {
                    let Ok(msg) = msg else { break };
                    let result = match msg["method"].as_str() {
                        Some("list_dbs") => json!([db]),
                        Some("get_schema") => schema.clone(),
                        Some("monitor") => initial.clone(),
                        _ => continue,
                    };
                    s.write_all(
                        json!({"id": msg["id"], "result": result, "error": null})
                            .to_string()
                            .as_bytes(),
                    )
                    .unwrap();
                    if msg["method"] == "monitor" {
                        // Let the client see this state, then lose the connection.
                        thread::sleep(Duration::from_millis(300));
                        break;
                    }
                }
            }
        });
    }

    #[test]
    fn reconnects_and_reloads_after_losing_the_server() {
        let dir = std::env::temp_dir().join(format!("detrace-sync-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (sb_path, nb_path) = (dir.join("sb.sock"), dir.join("nb.sock"));
        let sb_schema = fixture("ovs-3.1/ovsdb/sb-schema.json")["result"].clone();
        let nb_schema = fixture("ovs-3.1/ovsdb/nb-schema.json")["result"].clone();
        let sb_full = fixture("ovs-3.1/ovsdb/sb-monitor-initial.json")["result"].clone();
        let mut sb_less = sb_full.clone();
        sb_less.as_object_mut().unwrap().remove("Logical_Flow");
        let nb_full = fixture("ovs-3.1/ovsdb/nb-monitor-initial.json")["result"].clone();
        fake_server(sb_path.clone(), SB_DB, sb_schema, vec![sb_full, sb_less]);
        fake_server(
            nb_path.clone(),
            NB_DB,
            nb_schema,
            vec![nb_full.clone(), nb_full],
        );

        let r = OvnReplicas::start(
            vec![Remote::Unix(sb_path)],
            vec![Remote::Unix(nb_path)],
            Duration::from_secs(5),
        );
        r.wait_ready(Duration::from_secs(5)).unwrap();
        assert!(r.sb().lflows.len() > 100);
        // The first session ends; the second one has no logical flows.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !r.sb().lflows.is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            r.sb().lflows.len(),
            0,
            "replica reloaded from the new session"
        );
        assert!(r.sb().rows("Port_Binding").count() > 0);
        let (sb_status, _) = r.status();
        assert!(sb_status.reconnects >= 1, "{sb_status:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn wrong_database_fails_fast_with_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("detrace-sync-wrong-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let nb_path = dir.join("nb.sock");
        let nb_schema = fixture("ovs-3.1/ovsdb/nb-schema.json")["result"].clone();
        fake_server(
            nb_path.clone(),
            NB_DB,
            nb_schema,
            vec![json!({}), json!({})],
        );
        // The NB socket given as SB (swapped options).
        let r = OvnReplicas::start(
            vec![Remote::Unix(nb_path.clone())],
            vec![Remote::Unix(dir.join("none.sock"))],
            Duration::from_secs(5),
        );
        let t = Instant::now();
        let err = r
            .wait_ready(Duration::from_secs(10))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not serve OVN_Southbound"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(3));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
