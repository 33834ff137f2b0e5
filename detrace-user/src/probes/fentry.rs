//! fentry programs on functions of the openvswitch module.
//!
//! An fentry program runs from a BPF trampoline the kernel patches into the function's entry:
//! a direct call, where a kprobe goes through the ftrace handler (or a breakpoint), saves every
//! register, and dispatches through a perf event. aya 0.14 attaches fentry programs to vmlinux
//! functions only: the kernel needs, besides the target's BTF type id, the fd of the BTF object
//! that holds it (`attach_btf_obj_fd`), here the module's, and aya has no way to pass it. So
//! this module loads those programs itself: aya-obj relocates their instructions against the
//! maps aya created (same maps, so user space reads one set), then BPF_PROG_LOAD with the
//! module's BTF object and BPF_RAW_TRACEPOINT_OPEN to attach. Closing the link fd detaches.
//!
//! The bpf(2) arguments are aya-obj's bindgen of include/uapi/linux/bpf.h (`union bpf_attr`,
//! `struct bpf_prog_info`, `struct bpf_btf_info`). Any failure here is a [`FentryError`]
//! reported to the caller, which falls back to the kprobe of the same hook.

use std::{
    collections::HashSet,
    ffi::CStr,
    io,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use aya::{Ebpf, maps::Map};
use aya_obj::generated::{
    bpf_attach_type::BPF_TRACE_FENTRY,
    bpf_attr, bpf_btf_info,
    bpf_cmd::{self, *},
    bpf_prog_info,
    bpf_prog_type::BPF_PROG_TYPE_TRACING,
};

use super::error::FentryError;

const LICENSE: &CStr = c"GPL";

/// A zeroed `union bpf_attr`: the kernel wants every byte a command does not use to be zero.
fn zeroed_attr() -> bpf_attr {
    // SAFETY: bpf_attr is a repr(C) union of integer-only structs: all zeroes is a valid value.
    unsafe { std::mem::zeroed() }
}

fn sys_bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<libc::c_long> {
    // SAFETY: attr is a live, initialised `union bpf_attr` and its size is passed along; the
    // kernel reads (and for some commands writes) only that.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            std::ptr::from_mut(attr),
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: a file descriptor the kernel just returned to us, owned by no one else.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// BPF_OBJ_GET_INFO_BY_FD into `info` (a `struct bpf_*_info`); returns the length filled.
fn obj_info<T>(fd: &OwnedFd, info: &mut T) -> io::Result<u32> {
    let mut attr = zeroed_attr();
    attr.info.bpf_fd = fd.as_raw_fd() as u32;
    attr.info.info_len = std::mem::size_of::<T>() as u32;
    attr.info.info = std::ptr::from_mut(info) as u64;
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    // SAFETY: the info member was written above and by the kernel.
    Ok(unsafe { attr.info.info_len })
}

/// The fd of the kernel BTF object named `name` (a module's: "openvswitch").
pub fn module_btf(name: &'static str) -> Result<OwnedFd, FentryError> {
    let err = |call| move |source| FentryError::ModuleBtf { name, call, source };
    let mut id = 0;
    loop {
        let mut attr = zeroed_attr();
        attr.__bindgen_anon_6.__bindgen_anon_1.start_id = id;
        match sys_bpf(BPF_BTF_GET_NEXT_ID, &mut attr) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                return Err(FentryError::NoModuleBtf { name });
            }
            r => r.map_err(err("BPF_BTF_GET_NEXT_ID"))?,
        };
        // SAFETY: the member BPF_BTF_GET_NEXT_ID fills.
        id = unsafe { attr.__bindgen_anon_6.next_id };
        let mut attr = zeroed_attr();
        attr.__bindgen_anon_6.__bindgen_anon_1.btf_id = id;
        let fd = match sys_bpf(BPF_BTF_GET_FD_BY_ID, &mut attr) {
            Ok(fd) => owned(fd),
            // Unloaded in between.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(err("BPF_BTF_GET_FD_BY_ID")(e)),
        };
        let mut buf = [0u8; 64];
        // SAFETY: bpf_btf_info is a repr(C) struct of integers: all zeroes is valid.
        let mut info: bpf_btf_info = unsafe { std::mem::zeroed() };
        info.name = buf.as_mut_ptr() as u64;
        info.name_len = buf.len() as u32;
        obj_info(&fd, &mut info).map_err(err("BPF_OBJ_GET_INFO_BY_FD"))?;
        let got = buf.split(|&b| b == 0).next().unwrap_or_default();
        if info.kernel_btf != 0 && got == name.as_bytes() {
            return Ok(fd);
        }
    }
}

/// The raw fd of one of aya's maps (the variants detrace-ebpf uses).
fn map_fd(map: &Map) -> Option<i32> {
    let data = match map {
        Map::Array(d)
        | Map::PerCpuArray(d)
        | Map::HashMap(d)
        | Map::PerCpuHashMap(d)
        | Map::LruHashMap(d)
        | Map::RingBuf(d) => d,
        _ => return None,
    };
    Some(data.fd().as_fd().as_raw_fd())
}

/// An attached fentry program: dropping it closes the link (detaches) and the program.
pub struct Attached {
    _link: OwnedFd,
    prog: OwnedFd,
}

impl Attached {
    /// Instructions the verifier processed when it loaded the program (`verified_insns` of
    /// `struct bpf_prog_info`; 0 on a kernel that does not say).
    pub fn verified_insns(&self) -> u32 {
        // SAFETY: bpf_prog_info is a repr(C) struct of integers: all zeroes is valid.
        let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
        obj_info(&self.prog, &mut info).map_or(0, |_| info.verified_insns)
    }

    /// Runs and time inside the program, from the kernel's BPF statistics (`struct
    /// bpf_prog_info` run_cnt and run_time_ns, counted while BPF_ENABLE_STATS is held).
    pub fn cost(&self) -> io::Result<(u64, Duration)> {
        // SAFETY: bpf_prog_info is a repr(C) struct of integers: all zeroes is valid.
        let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
        let len = obj_info(&self.prog, &mut info)?;
        let needed = std::mem::offset_of!(bpf_prog_info, run_cnt) + size_of::<u64>();
        if (len as usize) < needed {
            return Err(io::Error::other("bpf_prog_info without run statistics"));
        }
        Ok((info.run_cnt, Duration::from_nanos(info.run_time_ns)))
    }
}

/// Instructions of the object's programs, relocated against the maps of `ebpf`.
pub struct Relocated {
    obj: aya_obj::Object,
}

/// The object's programs, parsed (their maps not yet known).
pub struct Parsed(aya_obj::Object);

impl Parsed {
    /// Parses the object (needs nothing from the kernel: done while the kernel's BTF is read).
    pub fn new(object: &[u8]) -> Result<Self, FentryError> {
        aya_obj::Object::parse(object)
            .map(Self)
            .map_err(|source| FentryError::Parse { source })
    }
}

impl Relocated {
    /// Relocates the parsed programs against the maps of `ebpf`.
    pub fn new(Parsed(mut obj): Parsed, ebpf: &Ebpf) -> Result<Self, FentryError> {
        let text_sections: HashSet<usize> = obj.functions.keys().map(|(s, _)| *s).collect();
        let mut defs = Vec::new();
        for (name, map) in ebpf.maps() {
            let fd = map_fd(map).ok_or_else(|| FentryError::MapType {
                name: name.to_string(),
            })?;
            if let Some(m) = obj.maps.get(name) {
                defs.push((name.to_string(), fd, m.clone()));
            }
        }
        obj.relocate_maps(
            defs.iter().map(|(n, fd, m)| (n.as_str(), *fd, m)),
            &text_sections,
        )
        .map_err(|source| FentryError::RelocateMaps { source })?;
        obj.relocate_calls(&text_sections)
            .map_err(|source| FentryError::RelocateCalls { source })?;
        Ok(Self { obj })
    }

    /// Loads program `name` as fentry on the function of type id `func_id` in the BTF object
    /// `btf`, and attaches it; also says how long the load (the kernel's verification) and the
    /// attach took. On a verifier rejection the error carries the end of its log.
    pub fn attach(
        &self,
        name: &'static str,
        btf: &OwnedFd,
        func_id: u32,
    ) -> Result<(Attached, [Duration; 2]), FentryError> {
        let prog = self
            .obj
            .programs
            .get(name)
            .ok_or(FentryError::NoProgram { name })?;
        let func = self
            .obj
            .functions
            .get(&prog.function_key())
            .ok_or(FentryError::NoCode { name })?;
        let load = |log: &mut [u8]| {
            let mut attr = zeroed_attr();
            // SAFETY: writing plain integer fields of the BPF_PROG_LOAD member.
            let a = unsafe { &mut attr.__bindgen_anon_3 };
            a.prog_type = BPF_PROG_TYPE_TRACING as u32;
            a.insn_cnt = func.instructions.len() as u32;
            a.insns = func.instructions.as_ptr() as u64;
            a.license = LICENSE.as_ptr() as u64;
            a.log_level = u32::from(!log.is_empty());
            a.log_size = log.len() as u32;
            // NULL without a log: the kernel refuses a buffer with log_level 0.
            a.log_buf = if log.is_empty() {
                0
            } else {
                log.as_mut_ptr() as u64
            };
            for (d, s) in a.prog_name.iter_mut().zip(name.bytes().take(15)) {
                *d = s as libc::c_char;
            }
            a.expected_attach_type = BPF_TRACE_FENTRY as u32;
            a.attach_btf_id = func_id;
            a.__bindgen_anon_1.attach_btf_obj_fd = btf.as_raw_fd() as u32;
            sys_bpf(BPF_PROG_LOAD, &mut attr)
        };
        let t = Instant::now();
        let prog_fd = match load(&mut []) {
            Ok(fd) => owned(fd),
            Err(source) => return Err(load_error(source, load)),
        };
        let loaded = t.elapsed();
        let mut attr = zeroed_attr();
        attr.raw_tracepoint.prog_fd = prog_fd.as_raw_fd() as u32;
        let link = sys_bpf(BPF_RAW_TRACEPOINT_OPEN, &mut attr)
            .map_err(|source| FentryError::Attach { source })?;
        let attached = Attached {
            _link: owned(link),
            prog: prog_fd,
        };
        Ok((attached, [loaded, t.elapsed() - loaded]))
    }
}

/// A refused BPF_PROG_LOAD, loaded again with the verifier's log for the message.
fn load_error(
    source: io::Error,
    load: impl Fn(&mut [u8]) -> io::Result<libc::c_long>,
) -> FentryError {
    let mut log = vec![0u8; 64 << 20];
    let again = match load(&mut log) {
        Ok(fd) => {
            drop(owned(fd));
            "loads with a log".to_string()
        }
        Err(e) => e.to_string(),
    };
    let text = String::from_utf8_lossy(&log);
    let text = text.trim_end_matches('\0').trim_end();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
    let complaint = lines.iter().find(|l| {
        let l = l.to_ascii_lowercase();
        [
            "invalid",
            "unknown",
            "not allowed",
            "prohibited",
            "misconfigured",
            "must",
            "expected",
            "unsupported",
            "too ",
        ]
        .iter()
        .any(|k| l.contains(k))
    });
    FentryError::Load {
        source,
        again,
        lines: lines.len(),
        complaint: complaint.unwrap_or(&"none").to_string(),
        tail,
    }
}
