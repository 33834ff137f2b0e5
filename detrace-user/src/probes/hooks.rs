//! The datapath hooks and how each is attached: its fentry program where that attaches, its
//! kprobe otherwise, and the skb:kfree_skb tracepoint. [`attach`] returns what it attached,
//! typed ([`AttachedHook`]); an optional hook that attaches neither way is left out with a
//! warning saying what is lost.

use aya::{
    Ebpf,
    programs::{KProbe, Program, ProgramError, TracePoint},
};

use super::{
    btf::Btf,
    error::{FentryError, ProbeError},
    fentry, kernel,
    phases::{Phases, timed},
};

/// One openvswitch function, with one program per way of attaching to it.
#[derive(Clone, Copy)]
pub(super) struct Hook {
    pub function: &'static str,
    pub fentry: &'static str,
    /// Named after the function (detrace-ebpf's `hook!` checks it).
    pub kprobe: &'static str,
    /// Tracing works without it (it adds something): when it attaches neither way, a warning
    /// says what is missing and the others go on.
    pub optional: Option<&'static str>,
}

impl Hook {
    const fn required(function: &'static str, fentry: &'static str) -> Self {
        Self {
            function,
            fentry,
            kprobe: function,
            optional: None,
        }
    }
}

/// Once per upcall, never per pass: the packet ovs-vswitchd executes after an upcall is
/// followed as a packet of the flow it installed (detrace-ebpf/src/probes/upcall.rs).
const UPCALL_HOOKS: [Hook; 2] = [
    Hook {
        optional: Some(AFTER_UPCALL_MISSING),
        ..Hook::required("ovs_flow_tbl_insert", "fentry_flow_tbl_insert")
    },
    Hook {
        optional: Some(AFTER_UPCALL_MISSING),
        ..Hook::required(
            "ovs_flow_key_extract_userspace",
            "fentry_key_extract_userspace",
        )
    },
];

/// The datapath hooks of per-packet tracing, in attach order. One probe per datapath pass
/// (`ovs_flow_stats_update`, see detrace-ebpf/src/probes/datapath.rs).
pub(super) const HOOKS: &[Hook] = &[
    Hook::required("ovs_flow_stats_update", "fentry_flow_stats_update"),
    Hook::required("ovs_dp_upcall", "fentry_dp_upcall"),
    Hook::required("ovs_vport_send", "fentry_vport_send"),
    UPCALL_HOOKS[0],
    UPCALL_HOOKS[1],
];

/// Once per flow removal (detrace-ebpf/src/probes/removal.rs).
const REMOVAL_HOOKS: [Hook; 2] = [
    Hook::required("rcu_free_flow_callback", "fentry_flow_free_rcu"),
    Hook {
        optional: Some(
            "a flow's stats cleared by OVS_FLOW_ATTR_CLEAR (dpctl/mod-flow --clear) lose what \
             they counted before",
        ),
        ..Hook::required("ovs_flow_stats_clear", "fentry_stats_clear")
    },
];

/// The hooks when counts come from the kernel's flow table (no per-packet probe): once per
/// flow removal, once per upcall.
pub(super) const FLOW_TABLE_HOOKS: &[Hook] = &[
    REMOVAL_HOOKS[0],
    REMOVAL_HOOKS[1],
    UPCALL_HOOKS[0],
    UPCALL_HOOKS[1],
];

/// Counts from the flow table, latency from a sample of packets (`--latency-sample`).
pub(super) const SAMPLED_HOOKS: &[Hook] = &[
    HOOKS[0],
    HOOKS[1],
    HOOKS[2],
    REMOVAL_HOOKS[0],
    REMOVAL_HOOKS[1],
    UPCALL_HOOKS[0],
    UPCALL_HOOKS[1],
];

/// The hooks of a counting mode (see [`super::config::ProbeOptions`]).
pub(super) fn hooks(flow_table: bool, per_packet_probes: bool) -> &'static [Hook] {
    match (flow_table, per_packet_probes) {
        (true, true) => SAMPLED_HOOKS,
        (true, false) => FLOW_TABLE_HOOKS,
        (false, _) => HOOKS,
    }
}

/// What is lost without the upcall hooks.
const AFTER_UPCALL_MISSING: &str = "packets executed by ovs-vswitchd after an upcall (often \
     the first packet of a conversation) are not followed: their drops are not counted";

/// The drop tracepoint's program (skb:kfree_skb).
pub(super) const TP_PROGRAM: &str = "kfree_skb";

/// How a hook ended up attached.
pub enum Attachment {
    /// Closing the program (dropping this) detaches it.
    Fentry(fentry::Attached),
    /// Owned by the [`Ebpf`], detached with it.
    Kprobe,
    /// An optional hook that attached neither way.
    None,
}

/// One hooked function and how it is probed.
pub struct AttachedHook {
    pub function: &'static str,
    pub attachment: Attachment,
}

impl AttachedHook {
    /// "fentry", "kprobe" or "none".
    pub fn kind(&self) -> &'static str {
        match self.attachment {
            Attachment::Fentry(_) => "fentry",
            Attachment::Kprobe => "kprobe",
            Attachment::None => "none",
        }
    }
}

/// Each hook's function in the module's BTF (its fentry target; None: not there).
pub(super) fn fentry_targets(hooks: &[Hook], btf: &Btf) -> Vec<Option<u32>> {
    hooks
        .iter()
        .map(|h| btf.split_func(h.function).ok().flatten())
        .collect()
}

/// The object's programs as parsed for fentry, and each hook's target in the module's BTF.
pub(super) type FentryPlan<'a> = (Result<fentry::Parsed, FentryError>, &'a [Option<u32>]);

/// Attaches every hook (fentry first, unless `fentry` is None: the object's parsed programs and
/// each hook's target in the module's BTF; else its kprobe) and the drop tracepoint. The result
/// is in `hooks` order.
pub(super) fn attach(
    ebpf: &mut Ebpf,
    hooks: &'static [Hook],
    fentry: Option<FentryPlan<'_>>,
    phases: &mut Phases,
) -> Result<Vec<AttachedHook>, ProbeError> {
    let fentries = match fentry {
        None => hooks.iter().map(|_| None).collect(),
        Some((parsed, targets)) => attach_fentries(ebpf, hooks, parsed, targets, phases),
    };
    phases.mark("fentry");
    let need_kprobe: Vec<&Hook> = hooks
        .iter()
        .zip(&fentries)
        .filter(|(_, f)| f.is_none())
        .map(|(h, _)| h)
        .collect();
    let left_out = load_kprobes(ebpf, &need_kprobe, phases)?;
    phases.mark("load_verify");
    let mut out = Vec::with_capacity(hooks.len());
    for (h, f) in hooks.iter().zip(fentries) {
        let attachment = match f {
            Some(a) => Attachment::Fentry(a),
            None if left_out.contains(&h.kprobe) => Attachment::None,
            None => {
                let a = attach_kprobe(ebpf, h)?;
                phases.mark(h.function);
                a
            }
        };
        out.push(AttachedHook {
            function: h.function,
            attachment,
        });
    }
    attach_tracepoint(ebpf)?;
    phases.mark("skb:kfree_skb");
    Ok(out)
}

/// Each hook's fentry program, attached where it can be (None: use the kprobe, with a warning
/// saying why). Loaded (verified) in parallel: the verifier runs in the loading thread.
fn attach_fentries(
    ebpf: &Ebpf,
    hooks: &[Hook],
    parsed: Result<fentry::Parsed, FentryError>,
    targets: &[Option<u32>],
    phases: &mut Phases,
) -> Vec<Option<fentry::Attached>> {
    let setup = fentry::module_btf("openvswitch")
        .and_then(|btf| Ok((btf, fentry::Relocated::new(parsed?, ebpf)?)));
    phases.mark("fentry_setup");
    let (btf, code) = match setup {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("fentry unavailable ({}): using kprobes", error_chain(&e));
            return hooks.iter().map(|_| None).collect();
        }
    };
    let attach_one = |h: &Hook, id: Option<u32>| -> Result<_, FentryError> {
        let id = id.ok_or(FentryError::NotInBtf {
            function: h.function,
        })?;
        code.attach(h.fentry, &btf, id)
    };
    let results: Vec<_> = std::thread::scope(|s| {
        let jobs: Vec<_> = hooks
            .iter()
            .zip(targets)
            .map(|(h, id)| s.spawn(move || attach_one(h, *id)))
            .collect();
        jobs.into_iter()
            .map(|j| j.join().unwrap_or(Err(FentryError::Panicked)))
            .collect()
    });
    hooks
        .iter()
        .zip(results)
        .map(|(h, r)| match r {
            Ok((a, [load, attach])) => {
                phases.part(
                    format!("load {} ({} insns)", h.fentry, a.verified_insns()),
                    load,
                );
                phases.part(format!("attach {}", h.fentry), attach);
                Some(a)
            }
            Err(e) => {
                let e = error_chain(&e);
                tracing::warn!("fentry on {}: {e}; using a kprobe", h.function);
                None
            }
        })
        .collect()
}

/// Loads (the kernel verifies) the kprobes of `hooks` and the tracepoint, in parallel; returns
/// the optional hooks' kprobes that failed to load (left out, with a warning).
fn load_kprobes(
    ebpf: &mut Ebpf,
    hooks: &[&Hook],
    phases: &mut Phases,
) -> Result<Vec<&'static str>, ProbeError> {
    let wanted = |n: &str| {
        hooks
            .iter()
            .map(|h| h.kprobe)
            .chain([TP_PROGRAM])
            .find(|p| *p == n)
    };
    let optional = |name: &str| hooks.iter().find(|h| h.kprobe == name)?.optional;
    let mut left_out = Vec::new();
    std::thread::scope(|s| -> Result<(), ProbeError> {
        let jobs: Vec<_> = ebpf
            .programs_mut()
            .filter_map(|(name, prog)| wanted(name).map(|name| (name, prog)))
            .map(|(name, prog)| (name, s.spawn(move || timed(|| load_program(name, prog)))))
            .collect();
        for (name, job) in jobs {
            let (r, took) = job.join().map_err(|_| ProbeError::LoaderPanic)?;
            phases.part(format!("load {name}"), took);
            let Err(e) = r else {
                continue;
            };
            let Some(missing) = optional(name) else {
                return Err(e);
            };
            tracing::warn!("{}; left out: {missing}", error_chain(&e));
            left_out.push(name);
        }
        Ok(())
    })?;
    Ok(left_out)
}

/// Attaches a hook's (loaded) kprobe; an optional hook that fails is left out with a warning.
fn attach_kprobe(ebpf: &mut Ebpf, h: &Hook) -> Result<Attachment, ProbeError> {
    let (name, target) = (h.kprobe, h.function);
    let prog: &mut KProbe = ebpf
        .program_mut(name)
        .ok_or(ProbeError::NoProgram { name })?
        .try_into()
        .map_err(|source| ProbeError::Load {
            program: name,
            source,
        })?;
    let attached = prog.attach(target, 0).map_err(|source| {
        if !kernel::kallsyms_has(target) {
            ProbeError::SymbolMissing { symbol: target }
        } else {
            ProbeError::Attach {
                program: name,
                target,
                source,
            }
        }
    });
    match (attached, h.optional) {
        (Ok(_), _) => Ok(Attachment::Kprobe),
        (Err(e), Some(missing)) => {
            tracing::warn!("{}; left out: {missing}", error_chain(&e));
            Ok(Attachment::None)
        }
        (Err(e), None) => Err(e),
    }
}

fn attach_tracepoint(ebpf: &mut Ebpf) -> Result<(), ProbeError> {
    let tp: &mut TracePoint = ebpf
        .program_mut(TP_PROGRAM)
        .ok_or(ProbeError::NoProgram { name: TP_PROGRAM })?
        .try_into()
        .map_err(|source| ProbeError::Load {
            program: TP_PROGRAM,
            source,
        })?;
    tp.attach("skb", "kfree_skb")
        .map_err(|source| ProbeError::Attach {
            program: TP_PROGRAM,
            target: "skb:kfree_skb",
            source,
        })?;
    Ok(())
}

/// Loads (the kernel verifies) one of the kprobe or tracepoint programs.
fn load_program(name: &'static str, prog: &mut Program) -> Result<(), ProbeError> {
    let err = |source| ProbeError::Load {
        program: name,
        source,
    };
    match prog {
        Program::KProbe(p) => p.load().map_err(err),
        Program::TracePoint(p) => p.load().map_err(err),
        _ => Err(err(ProgramError::UnexpectedProgramType)),
    }
}

/// An error and its sources, for a warning that goes on without them.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use aya_obj::ProgramSection;

    use super::*;
    use crate::probes::object::EBPF_OBJECT;

    /// Every program the hook table names is in the embedded eBPF object, of the right kind.
    #[test]
    fn every_hook_program_is_in_the_object() {
        let obj = aya_obj::Object::parse(EBPF_OBJECT).unwrap_or_else(|e| panic!("parse: {e}"));
        let section = |name: &str| {
            obj.programs
                .get(name)
                .map(|p| p.section.clone())
                .unwrap_or_else(|| panic!("no program {name} in the embedded object"))
        };
        for h in HOOKS.iter().chain(FLOW_TABLE_HOOKS) {
            assert!(
                matches!(section(h.fentry), ProgramSection::FEntry { .. }),
                "{} is not an fentry program",
                h.fentry
            );
            assert!(
                matches!(section(h.kprobe), ProgramSection::KProbe),
                "{} is not a kprobe",
                h.kprobe
            );
        }
        assert!(matches!(section(TP_PROGRAM), ProgramSection::TracePoint));
    }
}
