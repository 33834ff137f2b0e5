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
    loop {
        let remote = &remotes[next % remotes.len()];
        next += 1;
        match session(s, remote, required, io_timeout) {
            Ok(never) => match never {},
            Err(e) => {
                let fatal = e.is_fatal();
                let was_ready = s.status.lock().map(|st| st.ready).unwrap_or(false);
                tracing::warn!("{db}: {e}{}", if fatal { "" } else { "; reconnecting" });
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
