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
//! Any failure here is reported to the caller, which falls back to the kprobe of the same hook.

use std::{
    collections::HashSet,
    ffi::CString,
    io,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
};

use aya::{Ebpf, maps::Map};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_BTF_GET_FD_BY_ID: libc::c_long = 19;
const BPF_BTF_GET_NEXT_ID: libc::c_long = 23;
const BPF_PROG_TYPE_TRACING: u32 = 26;
const BPF_TRACE_FENTRY: u32 = 24;

/// The BPF_PROG_LOAD part of `union bpf_attr` (include/uapi/linux/bpf.h), up to
/// `attach_btf_obj_fd`; the kernel zero-fills what follows.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
    attach_btf_obj_fd: u32,
}

/// BPF_BTF_GET_NEXT_ID / BPF_BTF_GET_FD_BY_ID: `start_id`/`btf_id`, `next_id`, `open_flags`.
#[repr(C)]
#[derive(Default)]
struct IdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

/// BPF_OBJ_GET_INFO_BY_FD.
#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `struct bpf_btf_info`.
#[repr(C)]
#[derive(Default)]
struct BtfInfo {
    btf: u64,
    btf_size: u32,
    id: u32,
    name: u64,
    name_len: u32,
    kernel_btf: u32,
}

/// BPF_RAW_TRACEPOINT_OPEN: no name for a tracing program (its target is in the program).
#[repr(C)]
#[derive(Default)]
struct RawTpAttr {
    name: u64,
    prog_fd: u32,
    _pad: u32,
}

fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: attr is a live, initialised repr(C) prefix of `union bpf_attr` for this command,
    // and its size is passed along; the kernel reads (and for some commands writes) only that.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            std::mem::size_of::<T>(),
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

/// The fd of the kernel BTF object named `name` (a module's: "openvswitch").
pub fn module_btf(name: &str) -> io::Result<OwnedFd> {
    let mut id = 0;
    loop {
        let mut next = IdAttr {
            id,
            ..Default::default()
        };
        if let Err(e) = sys_bpf(BPF_BTF_GET_NEXT_ID, &mut next) {
            return Err(if e.raw_os_error() == Some(libc::ENOENT) {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no BTF object named {name} is loaded"),
                )
            } else {
                e
            });
        }
        id = next.next_id;
        let mut get = IdAttr {
            id,
            ..Default::default()
        };
        let fd = match sys_bpf(BPF_BTF_GET_FD_BY_ID, &mut get) {
            Ok(fd) => owned(fd),
            // Unloaded in between.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(e),
        };
        let mut buf = [0u8; 64];
        let mut info = BtfInfo {
            name: buf.as_mut_ptr() as u64,
            name_len: buf.len() as u32,
            ..Default::default()
        };
        let mut attr = InfoAttr {
            bpf_fd: fd.as_raw_fd() as u32,
            info_len: std::mem::size_of::<BtfInfo>() as u32,
            info: std::ptr::from_mut(&mut info) as u64,
        };
        sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
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
    /// Runs and time inside the program, from the kernel's BPF statistics (`struct
    /// bpf_prog_info` run_time_ns at byte 192, run_cnt at 200; counted while BPF_ENABLE_STATS
    /// is held).
    pub fn cost(&self) -> io::Result<(u64, std::time::Duration)> {
        let mut info = [0u64; 32];
        let mut attr = InfoAttr {
            bpf_fd: self.prog.as_raw_fd() as u32,
            info_len: std::mem::size_of_val(&info) as u32,
            info: info.as_mut_ptr() as u64,
        };
        sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
        if attr.info_len < 208 {
            return Err(io::Error::other("bpf_prog_info without run statistics"));
        }
        Ok((info[25], std::time::Duration::from_nanos(info[24])))
    }
}

/// Instructions of the object's programs, relocated against the maps of `ebpf`.
pub struct Relocated {
    obj: aya_obj::Object,
}

impl Relocated {
    pub fn new(object: &[u8], ebpf: &Ebpf) -> Result<Self, String> {
        let mut obj = aya_obj::Object::parse(object).map_err(|e| format!("parsing: {e}"))?;
        let text_sections: HashSet<usize> = obj.functions.keys().map(|(s, _)| *s).collect();
        let mut fds = Vec::new();
        for (name, map) in ebpf.maps() {
            let fd = map_fd(map).ok_or_else(|| format!("map {name}: unexpected type"))?;
            fds.push((name.to_string(), fd));
        }
        let defs: Vec<(String, i32, aya_obj::Map)> = fds
            .into_iter()
            .filter_map(|(name, fd)| obj.maps.get(&name).cloned().map(|m| (name, fd, m)))
            .collect();
        obj.relocate_maps(
            defs.iter().map(|(n, fd, m)| (n.as_str(), *fd, m)),
            &text_sections,
        )
        .map_err(|e| format!("relocating maps: {e}"))?;
        obj.relocate_calls(&text_sections)
            .map_err(|e| format!("relocating calls: {e}"))?;
        Ok(Self { obj })
    }

    /// Loads program `name` as fentry on the function of type id `func_id` in the BTF object
    /// `btf`, and attaches it. On a verifier rejection the error carries the end of its log.
    pub fn attach(&self, name: &str, btf: &OwnedFd, func_id: u32) -> Result<Attached, String> {
        let prog = self
            .obj
            .programs
            .get(name)
            .ok_or_else(|| format!("no program {name} in the object"))?;
        let func = self
            .obj
            .functions
            .get(&prog.function_key())
            .ok_or_else(|| format!("no code for program {name}"))?;
        let license = CString::new("GPL").expect("no NUL inside");
        let mut prog_name = [0u8; 16];
        for (d, s) in prog_name.iter_mut().zip(name.bytes().take(15)) {
            *d = s;
        }
        let load = |log: &mut [u8]| {
            let mut attr = ProgLoadAttr {
                prog_type: BPF_PROG_TYPE_TRACING,
                insn_cnt: func.instructions.len() as u32,
                insns: func.instructions.as_ptr() as u64,
                license: license.as_ptr() as u64,
                log_level: u32::from(!log.is_empty()),
                log_size: log.len() as u32,
                // NULL without a log: the kernel refuses a buffer with log_level 0.
                log_buf: if log.is_empty() {
                    0
                } else {
                    log.as_mut_ptr() as u64
                },
                prog_name,
                expected_attach_type: BPF_TRACE_FENTRY,
                attach_btf_id: func_id,
                attach_btf_obj_fd: btf.as_raw_fd() as u32,
                ..Default::default()
            };
            sys_bpf(BPF_PROG_LOAD, &mut attr)
        };
        let prog_fd = match load(&mut []) {
            Ok(fd) => owned(fd),
            Err(e) => {
                // Again with the verifier's log, for the message: its last lines, and the
                // first line that reads like a complaint.
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
                return Err(format!(
                    "BPF_PROG_LOAD: {e} (again with the verifier's log: {again}, {} lines); first complaint: {}; last: {tail}",
                    lines.len(),
                    complaint.unwrap_or(&"none"),
                ));
            }
        };
        let mut attr = RawTpAttr {
            prog_fd: prog_fd.as_raw_fd() as u32,
            ..Default::default()
        };
        let link = sys_bpf(BPF_RAW_TRACEPOINT_OPEN, &mut attr)
            .map_err(|e| format!("attaching (BPF_RAW_TRACEPOINT_OPEN): {e}"))?;
        Ok(Attached {
            _link: owned(link),
            prog: prog_fd,
        })
    }
}
