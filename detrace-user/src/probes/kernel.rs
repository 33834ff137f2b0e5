//! What the kernel offers, checked before anything is loaded: privileges, the openvswitch
//! module, tracefs (mounted when missing), kprobes, and kernel symbols.

use std::{
    io,
    path::{Path, PathBuf},
};

use super::error::ProbeError;

use crate::paths::{KALLSYMS, KPROBE_PMU, OVS_MODULE, TRACEFS, TRACEFS_OLD};

/// Root, and the openvswitch module.
pub(super) fn check_privileges() -> Result<(), ProbeError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(ProbeError::NotRoot);
    }
    if !Path::new(OVS_MODULE).exists() {
        return Err(ProbeError::NoOvsModule);
    }
    Ok(())
}

/// tracefs (mounted when missing) and kprobes; returns where tracefs is.
pub(super) fn check_tracing() -> Result<PathBuf, ProbeError> {
    let tracefs = tracefs()?;
    if !Path::new(KPROBE_PMU).exists() && !tracefs.join("kprobe_events").exists() {
        return Err(ProbeError::NoKprobes { tracefs });
    }
    Ok(tracefs)
}

/// Where tracefs is, mounting it at /sys/kernel/tracing when it is nowhere.
fn tracefs() -> Result<PathBuf, ProbeError> {
    for p in [TRACEFS, TRACEFS_OLD] {
        if Path::new(p).join("events").is_dir() {
            return Ok(p.into());
        }
    }
    let c = |s: &str| {
        std::ffi::CString::new(s).map_err(|e| ProbeError::Tracefs {
            path: TRACEFS,
            source: e.into(),
        })
    };
    let (src, target, fstype) = (c("nodev")?, c(TRACEFS)?, c("tracefs")?);
    // SAFETY: valid NUL-terminated strings that outlive the call; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(ProbeError::Tracefs {
            path: TRACEFS,
            source: io::Error::last_os_error(),
        });
    }
    tracing::info!("mounted tracefs at {TRACEFS}");
    Ok(TRACEFS.into())
}

pub(super) fn kallsyms_has(symbol: &str) -> bool {
    std::fs::read_to_string(KALLSYMS).is_ok_and(|text| {
        text.lines()
            .any(|l| l.split_whitespace().nth(2) == Some(symbol))
    })
}
