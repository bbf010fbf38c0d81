//! The Kubernetes manifests in `deploy/` (docs/scale-out.md), checked offline by
//! `tests/deploy/test_manifests.py`: every overlay rendered, validated against the Kubernetes
//! schemas with `kubernetes-validate`, and held to the deployment policy (runtime classes, GPU
//! counts, image pinned by digest, nothing privileged, probes, limits, measured initdata, model
//! digest check), plus `deploy/scripts/initdata.py check` (the initdata annotations encode
//! their TOML) and `deploy/scripts/registry.py check` (every replica registry lists the
//! StatefulSet's pods). Skips, saying why, when Python lacks `kubernetes-validate` (`.ci/run`
//! installs it: `python3 -m pip install kubernetes-validate==1.37.0`).

use std::process::Command;

fn python(args: &[&str]) -> std::process::Output {
    Command::new("python3")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run python3")
}

#[test]
fn deploy_manifests_validate_and_meet_the_policy() {
    let probe = python(&["-c", "import kubernetes_validate, yaml"]);
    if !probe.status.success() {
        eprintln!(
            "skipping deploy_manifests_validate_and_meet_the_policy: python3 cannot import \
             kubernetes_validate and yaml (python3 -m pip install kubernetes-validate==1.37.0)"
        );
        return;
    }
    for args in [
        &["deploy/scripts/initdata.py", "check"][..],
        &["deploy/scripts/registry.py", "check"],
        &["tests/deploy/test_manifests.py"],
    ] {
        let out = python(args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "python3 {args:?} failed:\n{text}");
        eprintln!("{text}");
    }
}
