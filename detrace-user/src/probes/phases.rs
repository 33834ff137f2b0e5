//! Where the attach time goes: the sequential phases of [`super::loader::Probes::attach`]
//! (their sum is the attach time) and, beside them, the parts that run in parallel threads
//! inside a phase (each thread's own time: BTF parses, each program's load, which is the
//! kernel verifying it, and attach).

use std::time::{Duration, Instant};

pub(super) struct Phases {
    last: Instant,
    pub done: Vec<(&'static str, Duration)>,
    pub parallel: Vec<(String, Duration)>,
}

impl Phases {
    pub fn new(start: Instant) -> Self {
        Self {
            last: start,
            done: Vec::new(),
            parallel: Vec::new(),
        }
    }

    /// Ends phase `name` now.
    pub fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.done.push((name, now - self.last));
        self.last = now;
    }

    /// One thread's part of the current phase.
    pub fn part(&mut self, name: impl Into<String>, took: Duration) {
        self.parallel.push((name.into(), took));
    }
}

/// Runs `f` and says how long it took.
pub(super) fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}
