//! The committed PTX (`kernels/ptx/`) must be what `scripts/gen_ptx.py` builds from
//! `kernels/cuda/` today: fails when a kernel no longer compiles (NVRTC's log is printed), when
//! an ABI kernel is missing from a module, or when the PTX is stale. Needs Python 3 with pip; the
//! script installs its pinned NVRTC wheel on first use (no GPU, no CUDA toolkit).

use std::path::Path;
use std::process::Command;

#[test]
fn committed_ptx_is_up_to_date() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("python3")
        .arg("scripts/gen_ptx.py")
        .arg("--check")
        .current_dir(&root)
        .output()
        .unwrap_or_else(|e| panic!("running python3 scripts/gen_ptx.py --check: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python3 scripts/gen_ptx.py --check failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("check passed"),
        "unexpected output:\n{stdout}\n{stderr}"
    );
}
