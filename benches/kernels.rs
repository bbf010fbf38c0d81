//! Criterion benchmarks of the CPU kernels at SmolLM2-135M shapes.
//!
//! * `gemv_layer`: decode GEMV (m = 1) on one layer's matrices (fused qkv 960×576, o 576×576,
//!   fused gate_up 3072×576, down 576×1536) and the LM head 49152×576, bf16 and f32; throughput
//!   is bytes of packed weights read.
//! * `gemv_full_model`: one token's worth of GEMVs over all 30 layers + LM head in bf16 (the full
//!   269 MB, larger than the cache share), on 1 and on all threads. The time per iteration is the
//!   GEMV-only time per decoded token; a summary line prints it as tokens/s.
//! * `gemm`: m = 16 and m = 128 tokens on gate_up (3072×576); throughput counts FLOPs.
//! * `attention`: paged decode attention, 16 sequences × 256 context, 9/3 heads of 64.
//! * `pool`: cost of one empty `ThreadPool::run` (the per-matmul synchronisation).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use veil_kernels::{
    AttnSeq, KvLayerView, PackedMatrix, ThreadPool, WeightDtype, kernel_name, matmul, paged_attention,
    set_flush_denormals,
};

const HIDDEN: usize = 576;
const MLP: usize = 1536;
const VOCAB: usize = 49152;
const LAYERS: usize = 30;
const N_HEADS: usize = 9;
const N_KV: usize = 3;
const HEAD_DIM: usize = 64;

/// (name, rows N, cols K) of the matrices of one layer.
const LAYER_SHAPES: [(&str, usize, usize); 4] = [
    ("qkv", 960, HIDDEN),
    ("o", HIDDEN, HIDDEN),
    ("gate_up", 2 * MLP, HIDDEN),
    ("down", HIDDEN, MLP),
];

/// Deterministic values in [-0.05, 0.05).
fn fill(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
        })
        .collect()
}

fn packed(rows: usize, cols: usize, dtype: WeightDtype, seed: u64) -> PackedMatrix {
    PackedMatrix::from_f32(rows, cols, &fill(rows * cols, seed), dtype).expect("valid shape")
}

fn dtype_name(d: WeightDtype) -> &'static str {
    match d {
        WeightDtype::Bf16 => "bf16",
        WeightDtype::F32 => "f32",
    }
}

fn bench_gemv_layer(c: &mut Criterion, pool: &ThreadPool) {
    let mut g = c.benchmark_group("gemv_layer");
    for dtype in [WeightDtype::Bf16, WeightDtype::F32] {
        let shapes = LAYER_SHAPES.iter().copied().chain([("lm_head", VOCAB, HIDDEN)]);
        for (i, (name, n, k)) in shapes.enumerate() {
            let w = packed(n, k, dtype, i as u64 + 1);
            let x = fill(k, 99);
            let mut y = vec![0.0f32; n];
            g.throughput(Throughput::Bytes(w.size_bytes() as u64));
            g.bench_function(format!("{}/{name}_{n}x{k}", dtype_name(dtype)), |b| {
                b.iter(|| matmul(pool, black_box(&x), 1, &w, None, &mut y))
            });
        }
    }
    g.finish();
}

/// All matrices of the model, one token of GEMVs.
struct Model {
    layers: Vec<Vec<PackedMatrix>>,
    lm_head: PackedMatrix,
    x: Vec<f32>,
    y: Vec<f32>,
}

impl Model {
    fn new(dtype: WeightDtype) -> Model {
        let layers = (0..LAYERS)
            .map(|l| {
                LAYER_SHAPES
                    .iter()
                    .enumerate()
                    .map(|(i, &(_, n, k))| packed(n, k, dtype, (l * 8 + i) as u64))
                    .collect()
            })
            .collect();
        Model {
            layers,
            lm_head: packed(VOCAB, HIDDEN, dtype, 7777),
            x: fill(MLP, 5),
            y: vec![0.0; VOCAB],
        }
    }

    fn bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(PackedMatrix::size_bytes)
            .sum::<usize>()
            + self.lm_head.size_bytes()
    }

    fn token(&mut self, pool: &ThreadPool) {
        for layer in &self.layers {
            for w in layer {
                matmul(pool, &self.x[..w.cols()], 1, w, None, &mut self.y[..w.rows()]);
            }
        }
        matmul(pool, &self.x[..HIDDEN], 1, &self.lm_head, None, &mut self.y);
        black_box(&self.y);
    }

    /// Median seconds per token over `n` tokens.
    fn median_token_time(&mut self, pool: &ThreadPool, n: usize) -> f64 {
        let mut t: Vec<f64> = (0..n)
            .map(|_| {
                let s = Instant::now();
                self.token(pool);
                s.elapsed().as_secs_f64()
            })
            .collect();
        t.sort_by(f64::total_cmp);
        t[n / 2]
    }
}

fn bench_gemv_full_model(c: &mut Criterion, pools: &[&ThreadPool]) {
    let mut model = Model::new(WeightDtype::Bf16);
    let bytes = model.bytes();
    let mut g = c.benchmark_group("gemv_full_model");
    g.throughput(Throughput::Bytes(bytes as u64))
        .sample_size(20)
        .measurement_time(Duration::from_secs(4));
    for pool in pools {
        g.bench_function(format!("bf16/threads={}", pool.n_threads()), |b| {
            b.iter(|| model.token(pool))
        });
    }
    g.finish();
    for pool in pools {
        model.token(pool);
        let t = model.median_token_time(pool, 15);
        println!(
            "SUMMARY gemv_full_model bf16 ({:.1} MB, kernel {}) threads={}: {:.2} ms/token = {:.1} tok/s GEMV-only, {:.1} GB/s",
            bytes as f64 / 1e6,
            kernel_name(),
            pool.n_threads(),
            t * 1e3,
            1.0 / t,
            bytes as f64 / t / 1e9
        );
    }
}

fn bench_gemm(c: &mut Criterion, pool: &ThreadPool) {
    let mut g = c.benchmark_group("gemm");
    let (n, k) = (2 * MLP, HIDDEN);
    for dtype in [WeightDtype::Bf16, WeightDtype::F32] {
        let w = packed(n, k, dtype, 3);
        for m in [16usize, 128] {
            let x = fill(m * k, 4);
            let mut y = vec![0.0f32; m * n];
            g.throughput(Throughput::Elements((2 * m * n * k) as u64));
            g.bench_function(format!("{}/m={m}_{n}x{k}_flops", dtype_name(dtype)), |b| {
                b.iter(|| matmul(pool, black_box(&x), m, &w, None, &mut y))
            });
        }
    }
    g.finish();
}

fn bench_attention(c: &mut Criterion, pool: &ThreadPool) {
    let (n_seqs, ctx, bs) = (16usize, 256usize, 16usize);
    let blocks_per_seq = ctx.div_ceil(bs);
    let n_blocks = n_seqs * blocks_per_seq;
    let elems = n_blocks * N_KV * bs * HEAD_DIM;
    let (k, v) = (fill(elems, 11), fill(elems, 12));
    // Interleave the sequences' blocks so they are not contiguous in memory.
    let tables: Vec<Vec<u32>> = (0..n_seqs)
        .map(|s| (0..blocks_per_seq).map(|b| (b * n_seqs + s) as u32).collect())
        .collect();
    let seqs: Vec<AttnSeq<'_>> = tables
        .iter()
        .enumerate()
        .map(|(s, t)| AttnSeq {
            q_offset: s,
            n_tokens: 1,
            start_pos: ctx - 1,
            block_table: t,
        })
        .collect();
    let view = KvLayerView {
        k: &k,
        v: &v,
        block_size: bs,
        n_kv_heads: N_KV,
        head_dim: HEAD_DIM,
    };
    let q = fill(n_seqs * N_HEADS * HEAD_DIM, 13);
    let mut out = vec![0.0f32; q.len()];
    let mut g = c.benchmark_group("attention");
    g.throughput(Throughput::Bytes((2 * n_seqs * ctx * N_KV * HEAD_DIM * 4) as u64));
    g.bench_function(format!("decode_{n_seqs}seqs_x{ctx}ctx"), |b| {
        b.iter(|| paged_attention(pool, black_box(&q), N_HEADS, &seqs, &view, 0.125, &mut out))
    });
    g.finish();
}

fn bench_pool(c: &mut Criterion, pool: &ThreadPool) {
    c.bench_function("pool/empty_run", |b| {
        b.iter(|| {
            pool.run(|i, n| {
                black_box((i, n));
            })
        })
    });
}

fn benches(c: &mut Criterion) {
    set_flush_denormals();
    let pool = ThreadPool::new(ThreadPool::default_threads());
    let single = ThreadPool::new(1);
    println!("kernel: {}, threads: {}", kernel_name(), pool.n_threads());
    bench_pool(c, &pool);
    bench_gemv_layer(c, &pool);
    bench_gemm(c, &pool);
    bench_attention(c, &pool);
    bench_gemv_full_model(c, &[&single, &pool]);
}

criterion_group!(kernels, benches);
criterion_main!(kernels);
