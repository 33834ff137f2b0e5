//! Kernel timestamps to wall-clock time, and the datapath's port names: what turns the
//! kernel's numbers into what people read.

/// Datapath port numbers -> names.
pub type Ports = std::collections::BTreeMap<u32, String>;

/// Wall-clock time of a kernel timestamp (CLOCK_MONOTONIC ns).
#[derive(Clone, Copy)]
pub struct Clock {
    /// realtime - monotonic, in ns.
    offset_ns: i128,
}

fn clock_ns(id: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec; clock_gettime only writes it.
    unsafe { libc::clock_gettime(id, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl Clock {
    pub fn new() -> Self {
        Self {
            offset_ns: clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC),
        }
    }
    /// Recorded traces keep the offset of the machine that recorded them.
    pub fn with_offset(offset_ns: i128) -> Self {
        Self { offset_ns }
    }
    pub fn offset_ns(&self) -> i128 {
        self.offset_ns
    }
    pub fn monotonic_now_ns() -> u64 {
        clock_ns(libc::CLOCK_MONOTONIC) as u64
    }
    /// HH:MM:SS.micros (UTC).
    pub fn format(&self, ktime_ns: u64) -> String {
        let t = i128::from(ktime_ns) + self.offset_ns;
        let secs = (t / 1_000_000_000) as i64;
        let micros = ((t % 1_000_000_000) / 1000) as i64;
        let day = secs.rem_euclid(86_400);
        format!(
            "{:02}:{:02}:{:02}.{micros:06}",
            day / 3600,
            day % 3600 / 60,
            day % 60
        )
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}
