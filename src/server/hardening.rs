//! Process hardening for confidential serving.
//!
//! A confidential server holds plaintext prompts and completions, the session key that opens
//! sealed requests and the receipt signing key in its memory. The TEE keeps the host out; these
//! settings keep other processes inside the guest out, and keep that memory out of files:
//!
//! - `setrlimit(RLIMIT_CORE, 0)` (soft and hard): a crash writes no core dump, and the limit
//!   cannot be raised again without privileges.
//! - `prctl(PR_SET_DUMPABLE, 0)`: the process is not dumpable, so the kernel refuses ptrace
//!   attachment and reads of `/proc/PID/mem`, `/proc/PID/environ` and the like to every other
//!   process lacking `CAP_SYS_PTRACE` (even one of the same user), and the process's `/proc`
//!   files belong to root. It also suppresses core dumps on its own.
//!
//! Both are applied as soon as `veil serve` knows it is confidential (or `--harden` asks), before
//! the model is loaded and before any key is made, and each result is checked and read back:
//! a server that cannot harden itself refuses to start.

use anyhow::{Context, bail, ensure};

/// What [`harden`] did, for the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hardened {
    /// The core-file size limit before (soft, hard), in bytes (`u64::MAX`: unlimited).
    pub(crate) core_limit_before: (u64, u64),
}

/// Turns off core dumps and makes the process non-dumpable (see the module docs). Errors name
/// the call that failed.
#[cfg(target_os = "linux")]
pub(crate) fn harden() -> anyhow::Result<Hardened> {
    let before = core_limit().context("getrlimit(RLIMIT_CORE)")?;
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit only reads the `rlimit` passed by reference, which outlives the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setrlimit(RLIMIT_CORE, 0)");
    }
    let after = core_limit().context("getrlimit(RLIMIT_CORE)")?;
    ensure!(
        after == (0, 0),
        "the core-file size limit is {after:?} after setting it to 0"
    );
    let off: libc::c_ulong = 0;
    // SAFETY: PR_SET_DUMPABLE takes plain integer arguments and only changes a flag of this
    // process; no memory is passed.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, off, off, off, off) } != 0 {
        return Err(std::io::Error::last_os_error()).context("prctl(PR_SET_DUMPABLE, 0)");
    }
    // SAFETY: as above; PR_GET_DUMPABLE returns the flag and reads no memory.
    let dumpable = unsafe { libc::prctl(libc::PR_GET_DUMPABLE, off, off, off, off) };
    if dumpable != 0 {
        bail!("prctl(PR_GET_DUMPABLE) is {dumpable} after PR_SET_DUMPABLE 0");
    }
    Ok(Hardened {
        core_limit_before: before,
    })
}

/// Hardening is implemented for Linux, where confidential VMs run.
#[cfg(not(target_os = "linux"))]
pub(crate) fn harden() -> anyhow::Result<Hardened> {
    bail!("process hardening (core dumps off, not dumpable) is implemented on Linux only")
}

/// The core-file size limit (soft, hard).
#[cfg(target_os = "linux")]
fn core_limit() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` through the pointer, which points to a live local.
    if unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}
