//! Per-kernel checks of the CUDA kernels against host references on random inputs, with
//! outputs poisoned (NaN) before each run. They run on a machine with a usable CUDA GPU and
//! skip, saying why, everywhere else.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};
use half::bf16;

use super::launch::{Arg, Kernels};
use super::ptr;
use crate::sampling::Rng;

/// A usable GPU: one stream and our kernels (shared with the other kernel tests of the backend).
pub(super) struct Gpu {
    pub(super) stream: Arc<CudaStream>,
    pub(super) k: Kernels,
}

/// The first GPU, or `None` after printing why the test `test` is skipped.
pub(super) fn gpu(test: &str) -> Option<Gpu> {
    match super::probe::open(0) {
        Ok((ctx, info)) => {
            // SAFETY: one stream per test, used in order.
            unsafe { ctx.disable_event_tracking() };
            let stream = ctx.new_stream().unwrap();
            let k = Kernels::load(&ctx, info.compute_capability).unwrap();
            Some(Gpu { stream, k })
        }
        Err(e) => {
            eprintln!("skipping {test}: {e}");
            None
        }
    }
}

fn rand_vec(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| ((rng.next_f64() * 2.0 - 1.0) as f32) * scale)
        .collect()
}

fn round_bf16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| bf16::from_f32(x).to_f32()).collect()
}

impl Gpu {
    fn bf16(&self, v: &[f32]) -> CudaSlice<u16> {
        let bits: Vec<u16> = v.iter().map(|&x| bf16::from_f32(x).to_bits()).collect();
        self.stream.clone_htod(&bits).unwrap()
    }
    fn f32(&self, v: &[f32]) -> CudaSlice<f32> {
        self.stream.clone_htod(v).unwrap()
    }
    fn i32(&self, v: &[i32]) -> CudaSlice<i32> {
        self.stream.clone_htod(v).unwrap()
    }
    /// A bf16 buffer full of NaNs.
    fn poison_bf16(&self, n: usize) -> CudaSlice<u16> {
        self.stream.clone_htod(&vec![0x7fc0u16; n]).unwrap()
    }
    fn poison_f32(&self, n: usize) -> CudaSlice<f32> {
        self.stream.clone_htod(&vec![f32::NAN; n]).unwrap()
    }
    fn read_bf16(&self, s: &CudaSlice<u16>) -> Vec<f32> {
        let bits = self.stream.clone_dtoh(s).unwrap();
        bits.iter().map(|&b| bf16::from_bits(b).to_f32()).collect()
    }
    fn read_f32(&self, s: &CudaSlice<f32>) -> Vec<f32> {
        self.stream.clone_dtoh(s).unwrap()
    }
    fn p<T>(&self, s: &CudaSlice<T>) -> Arg {
        Arg::Ptr(ptr(s, &self.stream))
    }
}

fn assert_close(got: &[f32], want: &[f32], rel: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(g.is_finite(), "{what}[{i}] = {g} (poison left?)");
        let tol = rel * w.abs().max(1.0);
        assert!(
            (g - w).abs() <= tol,
            "{what}[{i}]: got {g}, want {w} (tolerance {tol})"
        );
    }
}

fn rmsnorm_ref(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (ms + eps).sqrt();
    x.iter().zip(w).map(|(v, w)| v * inv * w).collect()
}

#[test]
fn add_rmsnorm_and_rows_match_the_host() {
    let Some(g) = gpu("add_rmsnorm_and_rows_match_the_host") else {
        return;
    };
    let (t, h, eps) = (5usize, 576usize, 1e-5f32);
    let mut rng = Rng::new(1);
    let resid = rand_vec(&mut rng, t * h, 2.0);
    let delta = round_bf16(&rand_vec(&mut rng, t * h, 1.0));
    let w = round_bf16(&rand_vec(&mut rng, h, 1.5));
    let d_resid = g.f32(&resid);
    let d_out = g.poison_bf16(t * h);
    let (dd, dw) = (g.bf16(&delta), g.bf16(&w));
    let args = [
        g.p(&d_resid),
        g.p(&dd),
        g.p(&dw),
        g.p(&d_out),
        Arg::I32(t as i32),
        Arg::I32(h as i32),
        Arg::F32(eps),
    ];
    g.k.launch(&g.stream, "veil_add_rmsnorm", (t as u32, 1, 1), 256, 0, &args)
        .unwrap();
    let summed: Vec<f32> = resid.iter().zip(&delta).map(|(a, b)| a + b).collect();
    assert_close(&g.read_f32(&d_resid), &summed, 1e-6, "residual");
    let want: Vec<f32> = summed.chunks(h).flat_map(|r| rmsnorm_ref(r, &w, eps)).collect();
    assert_close(&g.read_bf16(&d_out), &want, 1e-2, "normed");

    let rows = [3i32, 0];
    let d_rows = g.i32(&rows);
    let d_out2 = g.poison_bf16(2 * h);
    let args = [
        g.p(&d_resid),
        g.p(&d_rows),
        g.p(&dw),
        g.p(&d_out2),
        Arg::I32(2),
        Arg::I32(h as i32),
        Arg::F32(eps),
    ];
    g.k.launch(&g.stream, "veil_rmsnorm_rows", (2, 1, 1), 256, 0, &args)
        .unwrap();
    let want2: Vec<f32> = rows
        .iter()
        .flat_map(|&r| rmsnorm_ref(&summed[r as usize * h..(r as usize + 1) * h], &w, eps))
        .collect();
    assert_close(&g.read_bf16(&d_out2), &want2, 1e-2, "gathered rows");
}

#[test]
fn embed_and_silu_mul_match_the_host() {
    let Some(g) = gpu("embed_and_silu_mul_match_the_host") else {
        return;
    };
    let mut rng = Rng::new(2);
    let (v, h) = (100usize, 64usize);
    let table = round_bf16(&rand_vec(&mut rng, v * h, 1.0));
    let ids = [7i32, 99, 0];
    let (dt, di, dout) = (g.bf16(&table), g.i32(&ids), g.poison_f32(3 * h));
    let args = [g.p(&dt), g.p(&di), g.p(&dout), Arg::I32(3), Arg::I32(h as i32)];
    g.k.launch(&g.stream, "veil_embed", (3, 1, 1), 256, 0, &args)
        .unwrap();
    let want: Vec<f32> = ids
        .iter()
        .flat_map(|&i| table[i as usize * h..(i as usize + 1) * h].to_vec())
        .collect();
    assert_close(&g.read_f32(&dout), &want, 0.0, "embedding");

    let (t, inter) = (4usize, 1536usize);
    let gu = round_bf16(&rand_vec(&mut rng, t * 2 * inter, 4.0));
    let (dgu, dact) = (g.bf16(&gu), g.poison_bf16(t * inter));
    let args = [g.p(&dgu), g.p(&dact), Arg::I32(t as i32), Arg::I32(inter as i32)];
    g.k.launch(&g.stream, "veil_silu_mul", (t as u32, 1, 1), 256, 0, &args)
        .unwrap();
    let want: Vec<f32> = (0..t * inter)
        .map(|i| {
            let (r, c) = (i / inter, i % inter);
            let gate = gu[r * 2 * inter + c];
            let up = gu[r * 2 * inter + inter + c];
            gate / (1.0 + (-gate).exp()) * up
        })
        .collect();
    assert_close(&g.read_bf16(&dact), &want, 1e-2, "silu_mul");
}

/// Host reference: rotate-half RoPE of one head vector.
fn rope_ref(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = x.len() / 2;
    for d in 0..half {
        let (x1, x2) = (x[d], x[d + half]);
        x[d] = x1 * cos[d] - x2 * sin[d];
        x[d + half] = x2 * cos[d] + x1 * sin[d];
    }
}

#[test]
fn rope_kv_rotates_and_writes_the_paged_cache() {
    let Some(g) = gpu("rope_kv_rotates_and_writes_the_paged_cache") else {
        return;
    };
    let mut rng = Rng::new(3);
    let (nh, nkv, hd, bs, blocks) = (4usize, 2usize, 64usize, 16usize, 4usize);
    let w = (nh + 2 * nkv) * hd;
    let positions = [0i32, 17, 33];
    let slots = [5i32, 2 * 16 + 1, -1];
    let qkv = round_bf16(&rand_vec(&mut rng, 3 * w, 1.0));
    let bias = round_bf16(&rand_vec(&mut rng, w, 0.5));
    let table = veil_kernels::ops::RopeTable::new(
        hd,
        64,
        &(0..hd / 2)
            .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / hd as f32))
            .collect::<Vec<_>>(),
    );
    let dq = g.bf16(&qkv);
    let (db, dpos, dslot) = (g.bf16(&bias), g.i32(&positions), g.i32(&slots));
    let (dc, ds) = (g.f32(table.cos()), g.f32(table.sin()));
    let cache_len = blocks * nkv * bs * hd;
    let (kc, vc) = (g.poison_bf16(cache_len), g.poison_bf16(cache_len));
    let args = [
        g.p(&dq),
        g.p(&db),
        g.p(&dpos),
        g.p(&dc),
        g.p(&ds),
        g.p(&kc),
        g.p(&vc),
        g.p(&dslot),
        Arg::I32(3),
        Arg::I32(nh as i32),
        Arg::I32(nkv as i32),
        Arg::I32(hd as i32),
        Arg::I32(bs as i32),
    ];
    g.k.launch(&g.stream, "veil_rope_kv", (3, 1, 1), 128, 0, &args)
        .unwrap();
    let got = g.read_bf16(&dq);
    let (kgot, vgot) = (g.read_bf16(&kc), g.read_bf16(&vc));
    for t in 0..3 {
        let mut row: Vec<f32> = qkv[t * w..(t + 1) * w]
            .iter()
            .zip(&bias)
            .map(|(a, b)| a + b)
            .collect();
        let p = positions[t] as usize;
        let (cos, sin) = (
            &table.cos()[p * hd / 2..(p + 1) * hd / 2],
            &table.sin()[p * hd / 2..(p + 1) * hd / 2],
        );
        for head in 0..nh + nkv {
            rope_ref(&mut row[head * hd..(head + 1) * hd], cos, sin);
        }
        assert_close(&got[t * w..(t + 1) * w], &row, 2e-2, "rotated q|k, v with bias");
        if slots[t] < 0 {
            continue;
        }
        let slot = slots[t] as usize;
        for kv in 0..nkv {
            let at = ((slot / bs * nkv + kv) * bs + slot % bs) * hd;
            assert_close(
                &kgot[at..at + hd],
                &row[(nh + kv) * hd..(nh + kv + 1) * hd],
                2e-2,
                "cached k",
            );
            assert_close(
                &vgot[at..at + hd],
                &row[(nh + nkv + kv) * hd..(nh + nkv + kv + 1) * hd],
                2e-2,
                "cached v",
            );
        }
    }
}

/// Host reference: causal attention of one query over positions 0..=pos of a paged cache.
#[allow(clippy::too_many_arguments)]
fn attend_ref(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    table: &[i32],
    pos: usize,
    kvh: usize,
    nkv: usize,
    bs: usize,
    hd: usize,
    scale: f32,
) -> Vec<f32> {
    let at = |p: usize| ((table[p / bs] as usize * nkv + kvh) * bs + p % bs) * hd;
    let scores: Vec<f32> = (0..=pos)
        .map(|p| {
            q.iter()
                .zip(&k[at(p)..at(p) + hd])
                .map(|(a, b)| a * b)
                .sum::<f32>()
                * scale
        })
        .collect();
    let m = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = scores.iter().map(|s| (s - m).exp()).collect();
    let z: f32 = e.iter().sum();
    (0..hd)
        .map(|d| (0..=pos).map(|p| e[p] * v[at(p) + d]).sum::<f32>() / z)
        .collect()
}

#[test]
fn decode_and_prefill_attention_match_the_host() {
    let Some(g) = gpu("decode_and_prefill_attention_match_the_host") else {
        return;
    };
    let mut rng = Rng::new(4);
    let (nh, nkv, hd, bs, blocks) = (6usize, 2usize, 64usize, 16usize, 80usize);
    let w = (nh + 2 * nkv) * hd;
    let scale = 1.0 / (hd as f32).sqrt();
    let cache_len = blocks * nkv * bs * hd;
    let kh = round_bf16(&rand_vec(&mut rng, cache_len, 1.0));
    let vh = round_bf16(&rand_vec(&mut rng, cache_len, 1.0));
    let (kc, vc) = (g.bf16(&kh), g.bf16(&vh));
    // Two sequences with shuffled block tables; contexts long enough for several splits.
    let max_blocks = 40usize;
    let mut tables = vec![0i32; 2 * max_blocks];
    for j in 0..max_blocks {
        tables[j] = (2 * j) as i32;
        tables[max_blocks + j] = (2 * j + 1) as i32;
    }
    let qn = 5usize;
    let qkv = round_bf16(&rand_vec(&mut rng, qn * w, 1.0));
    let query_seq = [0i32, 1, 0, 1, 1];
    let query_pos = [0i32, 3, 600, 629, 17];
    let (split_len, n_splits) = (256usize, 3usize);
    let parts = qn * nh * n_splits;
    let (pa, pm) = (g.poison_f32(parts * hd), g.poison_f32(parts * 2));
    let (dq, dt, dsq, dqp) = (g.bf16(&qkv), g.i32(&tables), g.i32(&query_seq), g.i32(&query_pos));
    let out = g.poison_bf16(qn * nh * hd);
    let i = |v: usize| Arg::I32(v as i32);
    let args = [
        g.p(&pa),
        g.p(&pm),
        g.p(&dq),
        g.p(&kc),
        g.p(&vc),
        g.p(&dt),
        g.p(&dsq),
        g.p(&dqp),
        i(qn),
        i(nh),
        i(nkv),
        i(hd),
        i(bs),
        i(max_blocks),
        i(w),
        i(n_splits),
        i(split_len),
        Arg::F32(scale),
    ];
    g.k.launch(
        &g.stream,
        "veil_attention_decode",
        (qn as u32, nh as u32, n_splits as u32),
        128,
        0,
        &args,
    )
    .unwrap();
    let args = [g.p(&out), g.p(&pa), g.p(&pm), i(qn), i(nh), i(hd), i(n_splits)];
    g.k.launch(
        &g.stream,
        "veil_attention_reduce",
        (qn as u32, nh as u32, 1),
        128,
        0,
        &args,
    )
    .unwrap();
    let got = g.read_bf16(&out);
    for q in 0..qn {
        let s = query_seq[q] as usize;
        for h in 0..nh {
            let want = attend_ref(
                &qkv[q * w + h * hd..q * w + (h + 1) * hd],
                &kh,
                &vh,
                &tables[s * max_blocks..(s + 1) * max_blocks],
                query_pos[q] as usize,
                h / (nh / nkv),
                nkv,
                bs,
                hd,
                scale,
            );
            assert_close(
                &got[(q * nh + h) * hd..(q * nh + h + 1) * hd],
                &want,
                2e-2,
                "decode attention",
            );
        }
    }

    // Prefill: sequence 1, 70 queries at positions 100..170 in tiles of 64 and 6.
    let n = 70usize;
    let qkv = round_bf16(&rand_vec(&mut rng, n * w, 1.0));
    let tiles = ([1i32, 1], [0i32, 64], [64i32, 6], [100i32, 164]);
    let (dq, ts, tf, tn, tp) = (
        g.bf16(&qkv),
        g.i32(&tiles.0),
        g.i32(&tiles.1),
        g.i32(&tiles.2),
        g.i32(&tiles.3),
    );
    let out = g.poison_bf16(n * nh * hd);
    let args = [
        g.p(&out),
        g.p(&dq),
        g.p(&kc),
        g.p(&vc),
        g.p(&dt),
        g.p(&ts),
        g.p(&tf),
        g.p(&tn),
        g.p(&tp),
        i(nh),
        i(nkv),
        i(hd),
        i(bs),
        i(max_blocks),
        i(w),
        Arg::F32(scale),
    ];
    g.k.launch(
        &g.stream,
        "veil_attention_prefill",
        (2, nh as u32, 1),
        128,
        super::prefill_shared_bytes(hd),
        &args,
    )
    .unwrap();
    let got = g.read_bf16(&out);
    for q in 0..n {
        for h in 0..nh {
            let want = attend_ref(
                &qkv[q * w + h * hd..q * w + (h + 1) * hd],
                &kh,
                &vh,
                &tables[max_blocks..],
                100 + q,
                h / (nh / nkv),
                nkv,
                bs,
                hd,
                scale,
            );
            assert_close(
                &got[(q * nh + h) * hd..(q * nh + h + 1) * hd],
                &want,
                2e-2,
                "prefill attention",
            );
        }
    }
}

#[test]
fn sampling_matches_the_host_sampler() {
    let Some(g) = gpu("sampling_matches_the_host_sampler") else {
        return;
    };
    use super::plan::ParamWords;
    use crate::sampling::{Sampler, SamplingParams};
    let mut rng = Rng::new(5);
    let vocab = 49152usize;
    let logits = rand_vec(&mut rng, vocab, 8.0);
    let max_top = 20usize;
    let run = |params: &SamplingParams, counter: u32, pen: &[(u32, u32)], n_top: i32| {
        let row = super::super::SampleRow {
            params,
            seed: 42,
            counter,
            logprobs: (n_top >= 0).then_some(n_top as usize),
            penalties: pen,
        };
        let p = super::plan::sample_params(&row, 0).unwrap().to_words();
        let dl = g.f32(&logits);
        let dp = g.i32(&p);
        let ids: Vec<i32> = pen.iter().map(|x| x.0 as i32).collect();
        let counts: Vec<i32> = pen.iter().map(|x| x.1 as i32).collect();
        let (di, dc) = (
            g.i32(&ids.iter().copied().chain([0]).collect::<Vec<_>>()),
            g.i32(&counts.iter().copied().chain([0]).collect::<Vec<_>>()),
        );
        let out = g.i32(&vec![-7; 2 + 2 * max_top]);
        let o = ptr(&out, &g.stream);
        let args = [
            g.p(&dl),
            g.p(&dp),
            g.p(&di),
            g.p(&dc),
            Arg::Ptr(o),
            Arg::Ptr(o + 4),
            Arg::Ptr(o + 8),
            Arg::Ptr(o + 8 + 4 * max_top as u64),
            Arg::I32(1),
            Arg::I32(vocab as i32),
            Arg::I32(max_top as i32),
        ];
        g.k.launch(&g.stream, "veil_sample", (1, 1, 1), 1024, 0, &args)
            .unwrap();
        g.stream.clone_dtoh(&out).unwrap()
    };
    // Greedy with logprobs and penalties: the host sampler on the same logits agrees.
    let params = SamplingParams {
        repetition_penalty: 1.3,
        presence_penalty: 0.5,
        frequency_penalty: 0.2,
        ..SamplingParams::default()
    };
    let mut host = Sampler::new(params.clone(), &[11, 12]);
    host.record_picked(12);
    host.record_picked(99);
    let mut pen = Vec::new();
    host.penalty_pairs(&mut pen);
    let out = run(&params, 2, &pen, 5);
    let mut l = logits.clone();
    let want = host.clone().sample(&mut l, Some(5));
    assert_eq!(out[0] as u32, want.id, "greedy pick");
    let lp = f32::from_bits(out[1] as u32);
    assert!(
        (lp - want.logprob.unwrap()).abs() < 1e-3,
        "logprob {lp} vs {:?}",
        want.logprob
    );
    for (j, t) in want.top_logprobs.iter().enumerate() {
        assert_eq!(out[2 + j] as u32, t.id, "top id {j}");
        let got = f32::from_bits(out[2 + max_top + j] as u32);
        assert!((got - t.logprob).abs() < 1e-3, "top logprob {j}");
    }
    // Top-k: every draw is among the k most likely; different counters draw differently;
    // the same counter draws the same.
    let params = SamplingParams {
        temperature: 1.0,
        top_k: 5,
        ..SamplingParams::default()
    };
    let top5 = crate::sampling::top_n(&logits, 5)
        .into_iter()
        .map(|(id, _)| id)
        .collect::<Vec<_>>();
    let draws: Vec<u32> = (0..64).map(|c| run(&params, c, &[], -1)[0] as u32).collect();
    assert!(
        draws.iter().all(|d| top5.contains(d)),
        "{draws:?} outside {top5:?}"
    );
    assert!(draws.iter().collect::<std::collections::HashSet<_>>().len() > 1);
    assert_eq!(run(&params, 7, &[], -1)[0], run(&params, 7, &[], -1)[0]);
    // Top-p tiny: only the most likely token survives.
    let params = SamplingParams {
        temperature: 1.0,
        top_p: 1e-6,
        ..SamplingParams::default()
    };
    assert_eq!(
        run(&params, 3, &[], -1)[0] as u32,
        crate::sampling::argmax(&logits)
    );
}
