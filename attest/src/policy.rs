//! The verification policy, read from TOML.
//!
//! ```toml
//! allow_simulated = false          # accept simulated evidence (never confidential)
//! max_age_secs = 300               # bundle server_time may be at most this old
//! accepted_model_digests = ["<64 hex>"]   # empty: any model
//! accepted_engine_build_digests = ["<64 hex>"]   # empty: any engine build
//!
//! [gpu]
//! require_cc = true                # claims must say CC "on" (production, dev-tools off)
//! allowed_driver_versions = ["550.90.07"]  # empty: any
//! allowed_vbios_versions = []
//! [gpu.measurements]               # measurement block index -> expected hex value
//! 1 = "<hex>"
//!
//! [tdx]
//! allow_debug = false
//! allowed_mrtd = ["<96 hex>"]      # empty: any
//! rtmr = ["<hex>", "", "", ""]     # "" = not checked
//! allowed_tcb_statuses = ["UpToDate"]   # needs collateral in the bundle; empty: not checked
//!
//! [snp]
//! allow_debug = false
//! allowed_measurements = ["<96 hex>"]
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Everything a verifier requires of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Accept simulated evidence (the verdict then says NOT confidential).
    #[serde(default)]
    pub allow_simulated: bool,
    /// Maximum age of the bundle in seconds.
    #[serde(default = "default_max_age")]
    pub max_age_secs: u64,
    /// Accepted model digests (hex); empty accepts any.
    #[serde(default)]
    pub accepted_model_digests: Vec<String>,
    /// Accepted engine executable digests (hex, the claims' `engine_build_digest`); empty
    /// accepts any. Pin it together with the TEE measurements: they prove the VM, this proves
    /// which engine runs in it.
    #[serde(default)]
    pub accepted_engine_build_digests: Vec<String>,
    /// GPU requirements.
    #[serde(default)]
    pub gpu: GpuPolicy,
    /// TDX requirements.
    #[serde(default)]
    pub tdx: TdxRules,
    /// SEV-SNP requirements.
    #[serde(default)]
    pub snp: SnpRules,
}

fn default_max_age() -> u64 {
    300
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            allow_simulated: false,
            max_age_secs: default_max_age(),
            accepted_model_digests: Vec::new(),
            accepted_engine_build_digests: Vec::new(),
            gpu: GpuPolicy::default(),
            tdx: TdxRules::default(),
            snp: SnpRules::default(),
        }
    }
}

/// GPU requirements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuPolicy {
    /// The claims must report CC mode "on" with dev-tools off for every GPU.
    #[serde(default = "yes")]
    pub require_cc: bool,
    /// Allowed driver versions; empty allows any.
    #[serde(default)]
    pub allowed_driver_versions: Vec<String>,
    /// Allowed VBIOS versions; empty allows any.
    #[serde(default)]
    pub allowed_vbios_versions: Vec<String>,
    /// Expected measurement values by block index (hex).
    #[serde(default)]
    pub measurements: BTreeMap<u8, String>,
}

fn yes() -> bool {
    true
}

impl Default for GpuPolicy {
    fn default() -> Self {
        Self {
            require_cc: true,
            allowed_driver_versions: Vec::new(),
            allowed_vbios_versions: Vec::new(),
            measurements: BTreeMap::new(),
        }
    }
}

/// TDX requirements.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TdxRules {
    /// Accept debug TDs.
    #[serde(default)]
    pub allow_debug: bool,
    /// Allowed MRTD values (hex); empty allows any.
    #[serde(default)]
    pub allowed_mrtd: Vec<String>,
    /// Expected RTMR0-3 (hex; empty string = not checked).
    #[serde(default)]
    pub rtmr: Vec<String>,
    /// Allowed TCB statuses (e.g. "UpToDate"); empty: not checked.
    #[serde(default)]
    pub allowed_tcb_statuses: Vec<String>,
}

/// SEV-SNP requirements.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpRules {
    /// Accept guests whose policy allows debugging.
    #[serde(default)]
    pub allow_debug: bool,
    /// Allowed MEASUREMENT values (hex); empty allows any.
    #[serde(default)]
    pub allowed_measurements: Vec<String>,
}

impl Policy {
    /// Parses a TOML policy.
    pub fn from_toml(text: &str) -> Result<Self> {
        let p: Self = toml::from_str(text).map_err(|e| Error::malformed("policy TOML", e.to_string()))?;
        p.validate()?;
        Ok(p)
    }

    /// Checks that every hex value has the right length.
    fn validate(&self) -> Result<()> {
        let check = |what: &str, v: &str, len: usize| {
            if v.is_empty() && what == "rtmr" {
                return Ok(());
            }
            match hex::decode(v) {
                Ok(b) if b.len() == len => Ok(()),
                _ => Err(Error::malformed(
                    "policy TOML",
                    format!("{what}: {v:?} is not {len} bytes of hex"),
                )),
            }
        };
        for d in &self.accepted_model_digests {
            check("accepted_model_digests", d, 32)?;
        }
        for m in &self.tdx.allowed_mrtd {
            check("tdx.allowed_mrtd", m, 48)?;
        }
        if self.tdx.rtmr.len() > 4 {
            return Err(Error::malformed(
                "policy TOML",
                "tdx.rtmr has more than 4 entries",
            ));
        }
        for r in &self.tdx.rtmr {
            check("rtmr", r, 48)?;
        }
        for m in &self.snp.allowed_measurements {
            check("snp.allowed_measurements", m, 48)?;
        }
        for v in self.gpu.measurements.values() {
            if hex::decode(v).is_err() {
                return Err(Error::malformed(
                    "policy TOML",
                    format!("gpu.measurements: {v:?} is not hex"),
                ));
            }
        }
        Ok(())
    }
}

/// Decodes fixed-length hex values already validated by [`Policy::validate`].
pub(crate) fn hex_array<const N: usize>(values: &[String]) -> Vec<[u8; N]> {
    values
        .iter()
        .filter_map(|v| hex::decode(v).ok())
        .filter_map(|b| <[u8; N]>::try_from(b.as_slice()).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_policy_and_rejects_bad_values() {
        let text = format!(
            r#"
allow_simulated = true
max_age_secs = 60
accepted_model_digests = ["{d}"]
[gpu]
require_cc = false
allowed_driver_versions = ["550.90.07"]
[gpu.measurements]
1 = "abcd"
[tdx]
allowed_mrtd = ["{m}"]
rtmr = ["", "{m}"]
allowed_tcb_statuses = ["UpToDate"]
[snp]
allowed_measurements = ["{m}"]
"#,
            d = "00".repeat(32),
            m = "11".repeat(48)
        );
        let p = Policy::from_toml(&text).expect("valid");
        assert!(p.allow_simulated && !p.gpu.require_cc);
        assert_eq!(p.gpu.measurements.get(&1).map(String::as_str), Some("abcd"));
        assert_eq!(hex_array::<48>(&p.snp.allowed_measurements).len(), 1);
        let strict = Policy::from_toml("").expect("empty is the strict default");
        assert!(!strict.allow_simulated && strict.gpu.require_cc && strict.max_age_secs == 300);
        assert!(Policy::from_toml("accepted_model_digests = [\"abc\"]").is_err());
        assert!(Policy::from_toml("unknown_key = 1").is_err());
        assert!(Policy::from_toml("[tdx]\nallowed_mrtd = [\"zz\"]").is_err());
    }
}
