use aya_ebpf::{macros::map, maps::PerCpuArray};
use detrace_common::{COUNTER_SLOTS, Counter};

/// Per-CPU counters: counting in the kernel costs no event per packet.
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

#[inline(always)]
pub fn bump(kind: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(kind as u32) {
        // SAFETY: the pointer comes from the map lookup for this CPU's slot, which is valid
        // for the duration of the program and not shared with other CPUs.
        unsafe { *slot += 1 };
    }
}
