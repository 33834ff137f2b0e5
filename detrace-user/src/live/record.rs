//! The recording format (`detrace record`, read back by `detrace replay`): JSON lines, a
//! header, explanations before the first packet that needs them, packets, the kernel's
//! per-flow counters and a summary at the end. Reading one back is replay's source.

use std::io::BufRead;

use detrace_common::FlowStats;
use serde::{Deserialize, Serialize};

use super::{
    clock::Ports,
    explainer::{ExplainStats, Explained},
    source::LossReport,
};
use crate::{
    FastMap,
    events::path::{AssemblyStats, PacketTrace},
    uuid::Uuid,
};

pub const RECORD_VERSION: u32 = 1;

/// FlowStats as a recording stores it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FlowStatsRec {
    pub packets: u64,
    pub bytes: u64,
    pub drops: u64,
    pub outputs: u64,
    pub drop_reasons: Vec<u64>,
    pub latency: Vec<u64>,
    pub latency_sum_ns: u64,
    /// Absent from recordings made before it existed.
    #[serde(default, skip_serializing_if = "crate::events::is_zero_u64")]
    pub drops_after_upcall: u64,
}

impl From<&FlowStats> for FlowStatsRec {
    fn from(s: &FlowStats) -> Self {
        Self {
            packets: s.packets,
            bytes: s.bytes,
            drops: s.drops,
            outputs: s.outputs,
            drop_reasons: s.drop_reasons.to_vec(),
            latency: s.latency.to_vec(),
            latency_sum_ns: s.latency_sum_ns,
            drops_after_upcall: s.drops_after_upcall,
        }
    }
}

impl From<&FlowStatsRec> for FlowStats {
    fn from(r: &FlowStatsRec) -> Self {
        let mut s = FlowStats {
            packets: r.packets,
            bytes: r.bytes,
            drops: r.drops,
            outputs: r.outputs,
            latency_sum_ns: r.latency_sum_ns,
            drops_after_upcall: r.drops_after_upcall,
            ..Default::default()
        };
        for (d, v) in s.drop_reasons.iter_mut().zip(&r.drop_reasons) {
            *d = *v;
        }
        for (d, v) in s.latency.iter_mut().zip(&r.latency) {
            *d = *v;
        }
        s
    }
}

/// One line of a recording.
#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RecordLine {
    Header {
        version: u32,
        clock_offset_ns: i64,
        command: String,
        #[serde(default, deserialize_with = "ports_from_json")]
        ports: Ports,
    },
    Explanation(Box<Explained>),
    Packet(PacketTrace),
    Flow {
        ufid: Uuid,
        stats: FlowStatsRec,
    },
    Summary {
        loss: LossReport,
        assembly: AssemblyStats,
        explain: ExplainStats,
        malformed_events: u64,
    },
}

/// Port names as a header stores them: JSON object keys are strings, and a map inside an
/// internally tagged enum is read back without the number parsing serde does for maps
/// elsewhere, so the keys are parsed here (a header whose ports failed to read was skipped
/// whole before, losing its clock offset).
fn ports_from_json<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Ports, D::Error> {
    let raw = std::collections::BTreeMap::<String, String>::deserialize(d)?;
    raw.into_iter()
        .map(|(k, v)| {
            k.parse::<u32>()
                .map(|n| (n, v))
                .map_err(|_| serde::de::Error::custom(format!("port number {k:?}")))
        })
        .collect()
}

/// The per-packet lines of a recording, serialized from borrows (the same JSON as
/// [`RecordLine`]'s variants): a packet or an explanation is written without being cloned.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum RecordLineRef<'a> {
    Explanation(&'a Explained),
    Packet(&'a PacketTrace),
}

/// A recording read back: replay's source.
#[derive(Default)]
pub struct Recording {
    /// The recorder's realtime - monotonic offset, when the header said it.
    pub clock_offset_ns: Option<i64>,
    pub ports: Ports,
    pub explanations: Vec<Explained>,
    pub packets: Vec<PacketTrace>,
    /// The kernel's per-flow counters at the end (none when the recording was interrupted).
    pub flows: FastMap<Uuid, FlowStats>,
    pub loss: Option<LossReport>,
    /// Lines that were not a record line: (line number, error), the first few.
    pub malformed: Vec<(usize, String)>,
    pub malformed_lines: u64,
    /// The last line, cut off mid-way (a recording interrupted by a full disk or a crash): its
    /// line number. Not counted as malformed.
    pub truncated_line: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("reading the recording")]
    Read(#[from] std::io::Error),
    #[error("a version {version} recording; this detrace reads up to {RECORD_VERSION}")]
    Version { version: u32 },
}

impl Recording {
    pub fn read(r: impl BufRead) -> Result<Self, RecordingError> {
        let mut rec = Self::default();
        // A line that ended mid-value: the recording's cut-off end if nothing follows it.
        let mut cut: Option<(usize, String)> = None;
        for (n, line) in r.lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            if let Some((n, e)) = cut.take() {
                rec.malformed_line(n, e);
            }
            match serde_json::from_str::<RecordLine>(&line) {
                Ok(RecordLine::Header {
                    version,
                    clock_offset_ns,
                    ports,
                    ..
                }) => {
                    rec.ports = ports;
                    if version > RECORD_VERSION {
                        return Err(RecordingError::Version { version });
                    }
                    rec.clock_offset_ns = Some(clock_offset_ns);
                }
                Ok(RecordLine::Explanation(e)) => rec.explanations.push(*e),
                Ok(RecordLine::Packet(p)) => rec.packets.push(p),
                Ok(RecordLine::Flow { ufid, stats }) => {
                    // A UFID retired during the recording and met again has a line for each
                    // of its lives.
                    rec.flows.entry(ufid).or_default().add(&(&stats).into());
                }
                Ok(RecordLine::Summary { loss, .. }) => rec.loss = Some(loss),
                Err(e) if e.is_eof() => cut = Some((n + 1, e.to_string())),
                Err(e) => rec.malformed_line(n + 1, e.to_string()),
            }
        }
        rec.truncated_line = cut.map(|(n, _)| n);
        Ok(rec)
    }

    fn malformed_line(&mut self, n: usize, e: String) {
        self.malformed_lines += 1;
        if self.malformed.len() < 3 {
            self.malformed.push((n, e));
        }
    }

    /// Whether a header was read: without one, the input is not a recording at all.
    pub fn has_header(&self) -> bool {
        self.clock_offset_ns.is_some()
    }
}
