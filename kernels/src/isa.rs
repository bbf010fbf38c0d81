//! Runtime selection of the instruction set the kernels use.
//!
//! The choice is made once (first use) and cached: the best ISA the CPU supports, unless the
//! environment variable `VEIL_KERNEL` (`scalar`, `avx2` or `avx512`) asks for another one. A
//! request for an ISA the CPU lacks falls back to the best available one below it.

use std::sync::OnceLock;

/// An instruction-set level with its own kernel implementations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Isa {
    /// Portable Rust, no explicit SIMD.
    Scalar,
    /// AVX2 + FMA, 8-lane `ymm` kernels.
    Avx2,
    /// AVX-512F, 16-lane `zmm` kernels.
    Avx512,
}

impl Isa {
    /// Every ISA, worst first.
    pub(crate) const ALL: [Isa; 3] = [Isa::Scalar, Isa::Avx2, Isa::Avx512];

    /// Lower-case name as accepted by `VEIL_KERNEL`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Whether this CPU can run the kernels of `self`.
    pub(crate) fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The ISAs this CPU supports, worst first.
    pub(crate) fn available() -> impl Iterator<Item = Isa> {
        Isa::ALL.into_iter().filter(|isa| isa.is_available())
    }

    /// The best ISA that is available and not above `limit`.
    fn best_up_to(limit: Isa) -> Isa {
        Isa::available()
            .filter(|&isa| isa <= limit)
            .last()
            .unwrap_or(Isa::Scalar)
    }
}

/// The ISA every dispatching kernel uses (detected once, `VEIL_KERNEL` honoured).
pub(crate) fn selected() -> Isa {
    static SELECTED: OnceLock<Isa> = OnceLock::new();
    *SELECTED.get_or_init(|| {
        let limit = match std::env::var("VEIL_KERNEL").as_deref() {
            Ok("scalar") => Isa::Scalar,
            Ok("avx2") => Isa::Avx2,
            _ => Isa::Avx512,
        };
        Isa::best_up_to(limit)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_is_available_and_honours_env() {
        let sel = selected();
        assert!(sel.is_available());
        assert!(Isa::available().any(|i| i == sel));
        match std::env::var("VEIL_KERNEL").as_deref() {
            Ok("scalar") => assert_eq!(sel, Isa::Scalar),
            Ok("avx2") => assert!(sel <= Isa::Avx2),
            _ => assert_eq!(Some(sel), Isa::available().last()),
        }
    }
}
