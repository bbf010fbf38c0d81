//! Full-model benchmarks on the default model: one decode step at batch 1, a batched decode
//! step, and a 128-token prefill, in bf16 and f32. The model is pulled into the cache if absent.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use veil_engine::backend::{DType, SeqChunk};
use veil_engine::model::{LoadOptions, LoadedModel};
use veil_engine::store::{DEFAULT_MODEL, ModelStore};

fn model_dir() -> std::path::PathBuf {
    let store = ModelStore::open_default().expect("model store");
    store
        .resolve(DEFAULT_MODEL)
        .or_else(|_| store.pull(DEFAULT_MODEL, &mut |_| {}))
        .expect("default model")
}

fn bench_model(c: &mut Criterion) {
    let dir = model_dir();
    for dtype in [DType::Bf16, DType::F32] {
        let opts = LoadOptions {
            dtype,
            ..LoadOptions::default()
        };
        let mut model = LoadedModel::load(&dir, &opts, &mut |_, _| {}).expect("load");
        let blocks = 64;
        model.backend.init_kv_cache(blocks * 16, 16).expect("kv");
        let prompt: Vec<u32> = (0..128u32).map(|i| 1000 + i * 7).collect();
        let mut logits = Vec::new();
        let tables: Vec<Vec<u32>> = (0..16)
            .map(|s| ((s * blocks) as u32..((s + 1) * blocks) as u32).collect())
            .collect();

        let mut g = c.benchmark_group(format!("model_{}", dtype.name()));
        g.sample_size(10);
        g.throughput(Throughput::Elements(128));
        g.bench_function("prefill_128", |b| {
            b.iter(|| {
                let chunk = SeqChunk {
                    tokens: &prompt,
                    start_pos: 0,
                    block_table: &tables[0],
                    want_logits: true,
                };
                model.backend.forward(&[chunk], &mut logits).expect("prefill");
            })
        });
        // Decode at position 128 (the prompt above is in the cache of every sequence).
        for table in &tables {
            let chunk = SeqChunk {
                tokens: &prompt,
                start_pos: 0,
                block_table: table,
                want_logits: false,
            };
            model.backend.forward(&[chunk], &mut logits).expect("prefill");
        }
        let tok = [504u32];
        g.throughput(Throughput::Elements(1));
        g.bench_function("decode_batch1_ctx128", |b| {
            b.iter(|| {
                let chunk = SeqChunk {
                    tokens: &tok,
                    start_pos: 128,
                    block_table: &tables[0],
                    want_logits: true,
                };
                model.backend.forward(&[chunk], &mut logits).expect("decode");
            })
        });
        g.throughput(Throughput::Elements(16));
        g.bench_function("decode_batch16_ctx128", |b| {
            b.iter(|| {
                let batch: Vec<SeqChunk<'_>> = tables
                    .iter()
                    .map(|t| SeqChunk {
                        tokens: &tok,
                        start_pos: 128,
                        block_table: t,
                        want_logits: true,
                    })
                    .collect();
                model.backend.forward(&batch, &mut logits).expect("decode");
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench_model);
criterion_main!(benches);
