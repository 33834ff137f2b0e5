//! The EVENTS ring buffer as user space reads it: woken through tokio's AsyncFd, drained
//! completely on every wake-up, each record bounds-checked and copied out by value.

use std::{io, os::fd::AsRawFd as _, time::Duration};

use aya::maps::{MapData, RingBuf};
use detrace_common::Event;
use tokio::io::unix::AsyncFd;

/// How often the event reader looks at the ring buffer when it was not woken: the probes wake
/// it only once a sixteenth of the ring is filled (detrace-ebpf probes/packet.rs `emit`), so
/// this bounds how long a lone event can wait.
const EVENT_POLL: Duration = Duration::from_millis(25);

/// Decodes one ring buffer record, or None (counted in `malformed`) when its size is wrong.
fn decode(bytes: &[u8], malformed: &mut u64) -> Option<Event> {
    if bytes.len() != size_of::<Event>() {
        *malformed += 1;
        return None;
    }
    // SAFETY: exactly size_of::<Event>() readable bytes; Event is repr(C) with integer fields
    // only, so every bit pattern is a valid Event; read_unaligned makes no alignment assumption
    // about the ring buffer's memory.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
}

enum Ring {
    /// Not yet registered with tokio's reactor: that needs a runtime, and `attach` is sync.
    Idle(RingBuf<MapData>),
    Ready(AsyncFd<RingBuf<MapData>>),
    /// Only while switching from Idle to Ready (or after that failed).
    Gone,
}

/// Reads [`Event`]s from the EVENTS ring buffer.
pub struct EventReader {
    ring: Ring,
    malformed: u64,
}

impl EventReader {
    pub(super) fn new(ring: RingBuf<MapData>) -> Self {
        Self {
            ring: Ring::Idle(ring),
            malformed: 0,
        }
    }

    /// Records whose length was not `size_of::<Event>()` (skipped).
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    fn drain(ring: &mut RingBuf<MapData>, malformed: &mut u64, out: &mut Vec<Event>) -> usize {
        let mut n = 0;
        while let Some(item) = ring.next() {
            if let Some(ev) = decode(&item, malformed) {
                out.push(ev);
            }
            n += 1;
        }
        n
    }

    /// Appends what is in the ring buffer now, without waiting; returns the records read.
    pub fn try_read(&mut self, out: &mut Vec<Event>) -> usize {
        let malformed = &mut self.malformed;
        match &mut self.ring {
            Ring::Idle(r) => Self::drain(r, malformed, out),
            Ring::Ready(fd) => Self::drain(fd.get_mut(), malformed, out),
            Ring::Gone => 0,
        }
    }

    /// Waits until the ring buffer has records, then appends everything available to `out`.
    /// Must run inside a tokio runtime with its I/O and time drivers enabled.
    pub async fn read_batch(&mut self, out: &mut Vec<Event>) -> io::Result<()> {
        if let Ring::Idle(_) = self.ring {
            let Ring::Idle(r) = std::mem::replace(&mut self.ring, Ring::Gone) else {
                unreachable!("checked just above")
            };
            if tokio::runtime::Handle::try_current().is_err() {
                self.ring = Ring::Idle(r);
                return Err(io::Error::other(
                    "EventReader::read_batch needs a tokio runtime",
                ));
            }
            // SAFETY: the RingBuf owns its map's file descriptor, which stays open and the same
            // for as long as the RingBuf lives, and the AsyncFd owns the RingBuf.
            let fd = unsafe { AsyncFd::register(r) }
                .map_err(|e| io::Error::other(format!("registering the ring buffer: {e}")))?;
            self.ring = Ring::Ready(fd);
        }
        let Ring::Ready(fd) = &mut self.ring else {
            return Err(io::Error::other(
                "the event ring buffer could not be registered",
            ));
        };
        loop {
            if Self::drain(fd.get_mut(), &mut self.malformed, out) > 0 {
                return Ok(());
            }
            // The probes wake us only once a batch is waiting; below that, records are picked
            // up when the poll interval ends.
            let Ok(guard) = tokio::time::timeout(EVENT_POLL, fd.readable_mut()).await else {
                continue;
            };
            let mut guard = guard?;
            if Self::drain(guard.get_inner_mut(), &mut self.malformed, out) > 0 {
                return Ok(());
            }
            guard.clear_ready();
        }
    }

    /// The ring buffer's file descriptor (for callers with their own poll loop).
    pub fn raw_fd(&self) -> Option<i32> {
        match &self.ring {
            Ring::Idle(r) => Some(r.as_raw_fd()),
            Ring::Ready(fd) => Some(fd.as_raw_fd()),
            Ring::Gone => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_checks_the_size() {
        let mut malformed = 0;
        let ev = Event {
            kind: 3,
            reason: 0x30003,
            ..Event::default()
        };
        // SAFETY: Event is repr(C) plain data; viewing it as bytes is sound.
        let bytes =
            unsafe { std::slice::from_raw_parts((&raw const ev).cast::<u8>(), size_of::<Event>()) };
        assert_eq!(decode(bytes, &mut malformed), Some(ev));
        // One byte off the front: unaligned, still decoded by value.
        let mut shifted = vec![0u8; bytes.len() + 1];
        shifted[1..].copy_from_slice(bytes);
        assert_eq!(decode(&shifted[1..], &mut malformed), Some(ev));
        assert_eq!(decode(&bytes[..50], &mut malformed), None);
        assert_eq!(malformed, 1);
    }
}
