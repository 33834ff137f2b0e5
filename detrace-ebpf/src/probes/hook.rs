//! One hook, two entry points: the kprobe (registers through `ProbeContext::arg`) and the
//! fentry program (the function's arguments from the trampoline's context), both reduced to
//! the same pointer arguments and handed to one body function. User space attaches the fentry
//! where it can and the kprobe otherwise (detrace-user/src/probes/hooks.rs), so the two must
//! never drift apart: [`hook!`] writes both from the argument indexes.

/// ```ignore
/// hook! {
///     /// `void ovs_vport_send(struct vport *vport, struct sk_buff *skb, u8 mac_proto)`.
///     kprobe ovs_vport_send, fentry fentry_vport_send on "ovs_vport_send",
///     args(vport = 0, skb = 1) => vport_send
/// }
/// ```
/// defines the kprobe program `ovs_vport_send` and the fentry program `fentry_vport_send` on the
/// kernel function `ovs_vport_send`: each reads arguments 0 and 1 (a NULL or unreadable one is
/// counted as a probe error) and returns `vport_send(vport, skb)`'s `Ok` or `Err` value. The
/// kprobe is named after the function it probes (checked at compile time).
macro_rules! hook {
    (
        $(#[$doc:meta])*
        kprobe $kprobe:ident, fentry $fentry:ident on $function:literal,
        args($($arg:ident = $idx:literal),+ $(,)?) => $body:ident
    ) => {
        const _: () = assert!(
            $crate::probes::hook::same(stringify!($kprobe), $function),
            "a hook's kprobe is named after its kernel function"
        );

        $(#[$doc])*
        #[aya_ebpf::macros::kprobe]
        pub fn $kprobe(ctx: aya_ebpf::programs::ProbeContext) -> u32 {
            if $crate::maps::conf!(noop) != 0 {
                return 0;
            }
            let args = (|| -> Result<_, $crate::probes::packet::Fail> {
                Ok(($($crate::probes::packet::nonzero(ctx.arg($idx))?,)+))
            })();
            match args {
                Ok(($($arg,)+)) => $body($($arg),+).unwrap_or_else(|r| r),
                Err(r) => r,
            }
        }

        /// The same hook as an fentry program (a BPF trampoline: no breakpoint or ftrace
        /// handler, no register save, no perf event around it). Loaded by user space itself
        /// (detrace-user/src/probes/fentry.rs): the target lives in the openvswitch module's BTF.
        #[aya_ebpf::macros::fentry(function = $function)]
        pub fn $fentry(ctx: aya_ebpf::programs::FEntryContext) -> u32 {
            if $crate::maps::conf!(noop) != 0 {
                return 0;
            }
            const ARGS: usize = $crate::probes::hook::arg_count(&[$($idx),+]);
            let args = $crate::probes::packet::fentry_args::<ARGS>(&ctx).and_then(|a| {
                Ok(($($crate::probes::packet::nonzero(Some(a[$idx]))?,)+))
            });
            match args {
                Ok(($($arg,)+)) => $body($($arg),+).unwrap_or_else(|r| r),
                Err(r) => r,
            }
        }
    };
}

/// How many leading arguments an fentry program reads: one past the highest index used.
pub const fn arg_count(indexes: &[usize]) -> usize {
    let (mut n, mut i) = (0, 0);
    while i < indexes.len() {
        if indexes[i] + 1 > n {
            n = indexes[i] + 1;
        }
        i += 1;
    }
    n
}

/// `a == b`, at compile time.
pub const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}
