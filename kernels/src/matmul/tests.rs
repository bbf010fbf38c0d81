//! Every available ISA path against [`matmul_reference`] on odd shapes.

use half::bf16;

use super::*;

/// Deterministic pseudo-random values in [-1, 1).
fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Checks `got` against `want` with an error bound relative to `Σ|x·w| + |b|` per output.
#[allow(clippy::too_many_arguments)]
fn check(
    got: &[f32],
    want: &[f32],
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    m: usize,
    n: usize,
    k: usize,
    tol: f32,
) {
    for i in 0..m {
        for j in 0..n {
            let mag: f32 = (0..k)
                .map(|kk| (x[i * k + kk] * w[j * k + kk]).abs())
                .sum::<f32>()
                + bias.map_or(0.0, |b| b[j].abs());
            let (g, e) = (got[i * n + j], want[i * n + j]);
            assert!(
                (g - e).abs() <= tol * mag + 1e-6,
                "m {m} n {n} k {k} at ({i},{j}): got {g}, want {e}"
            );
        }
    }
}

fn run_case(isa: Isa, pool: &ThreadPool, m: usize, n: usize, k: usize, dtype: WeightDtype, with_bias: bool) {
    let x = rand_vec(m * k, (m * 31 + n * 7 + k) as u64);
    let w = rand_vec(n * k, (n * 131 + k) as u64);
    let bias = with_bias.then(|| rand_vec(n, n as u64 + 5));
    let packed = PackedMatrix::from_f32(n, k, &w, dtype).expect("pack");
    // The reference uses the weights exactly as stored (bf16-rounded when packed as bf16).
    let w_eff: Vec<f32> = match dtype {
        WeightDtype::F32 => w.clone(),
        WeightDtype::Bf16 => w.iter().map(|&v| bf16::from_f32(v).to_f32()).collect(),
    };
    let mut want = vec![0.0; m * n];
    matmul_reference(&x, m, &w_eff, n, k, bias.as_deref(), &mut want);
    // Sentinel after the output checks that nothing past m × n is written.
    let mut got = vec![f32::NAN; m * n + 1];
    matmul_with_isa(isa, pool, &x, m, &packed, bias.as_deref(), &mut got);
    assert!(got[m * n].is_nan(), "wrote past the output");
    let tol = match dtype {
        WeightDtype::F32 => 1e-5,
        WeightDtype::Bf16 => 1e-4,
    };
    check(&got[..m * n], &want, &x, &w_eff, bias.as_deref(), m, n, k, tol);
}

#[test]
fn all_isas_match_reference_on_odd_shapes() {
    let pools = [ThreadPool::new(1), ThreadPool::new(2), ThreadPool::new(3)];
    for isa in Isa::available() {
        for (pi, pool) in pools.iter().enumerate() {
            for &m in &[1usize, 2, 3, 7, 8, 9, 17, 33] {
                for &n in &[1usize, 15, 17, 100] {
                    for &k in &[1usize, 3, 64, 576, 1536] {
                        // Keep the debug-build run time reasonable: big K only with one pool.
                        if k >= 576 && (pi != 1 || m > 9) {
                            continue;
                        }
                        for dtype in [WeightDtype::F32, WeightDtype::Bf16] {
                            run_case(isa, pool, m, n, k, dtype, (m + n + k) % 2 == 0);
                            run_case(isa, pool, m, n, k, dtype, (m + n + k) % 2 == 1);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn all_isas_large_shapes() {
    let pool = ThreadPool::new(2);
    for isa in Isa::available() {
        for &(m, n, k) in &[
            (1usize, 960usize, 576usize),
            (33, 200, 576),
            (17, 100, 1536),
            (1, 576, 1536),
        ] {
            for dtype in [WeightDtype::F32, WeightDtype::Bf16] {
                run_case(isa, &pool, m, n, k, dtype, true);
            }
        }
    }
}

#[test]
fn isas_agree_bitwise_on_bf16_exact_inputs() {
    // Small integers make every product and partial sum exact in f32, so all kernels must give
    // identical results regardless of summation order.
    let (m, n, k) = (5usize, 37usize, 70usize);
    let x: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 5) as f32 - 2.0).collect();
    let w: Vec<f32> = (0..n * k).map(|i| ((i * 3) % 7) as f32 - 3.0).collect();
    let packed = PackedMatrix::from_f32(n, k, &w, WeightDtype::Bf16).expect("pack");
    let mut want = vec![0.0; m * n];
    matmul_reference(&x, m, &w, n, k, None, &mut want);
    let pool = ThreadPool::new(2);
    for isa in Isa::available() {
        for mm in [1, m] {
            let mut got = vec![0.0; mm * n];
            matmul_with_isa(isa, &pool, &x, mm, &packed, None, &mut got);
            assert_eq!(got, want[..mm * n], "{}", isa.name());
        }
    }
}

#[test]
fn public_matmul_uses_selected_kernel() {
    assert!(["scalar", "avx2", "avx512"].contains(&kernel_name()));
    let pool = ThreadPool::new(2);
    let (m, n, k) = (3, 20, 10);
    let x = rand_vec(m * k, 1);
    let w = rand_vec(n * k, 2);
    let packed = PackedMatrix::from_f32(n, k, &w, WeightDtype::F32).expect("pack");
    let (mut got, mut want) = (vec![0.0; m * n], vec![0.0; m * n]);
    matmul(&pool, &x, m, &packed, None, &mut got);
    matmul_reference(&x, m, &w, n, k, None, &mut want);
    check(&got, &want, &x, &w, None, m, n, k, 1e-5);
    // m == 0 is a no-op.
    matmul(&pool, &[], 0, &packed, None, &mut []);
}
