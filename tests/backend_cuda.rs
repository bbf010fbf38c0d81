//! The CUDA backend held to the CPU backend, burn-style: the same checks run on both. They run
//! on a machine with a usable CUDA GPU and skip, printing why, everywhere else.
//!
//! The model is `$VEIL_TEST_MODEL_DIR` when set (e.g. a `veil model synth --shape
//! smollm2-135m` directory on a GPU machine without network), else the default model.

mod common;

use std::path::PathBuf;

use veil_engine::backend::{Device, DeviceSample, SampleRow, SeqChunk, cuda};
use veil_engine::model::{LoadOptions, LoadedModel};
use veil_engine::sampling::{SamplingParams, argmax};

fn model_dir() -> PathBuf {
    std::env::var_os("VEIL_TEST_MODEL_DIR").map_or_else(common::model_dir, PathBuf::from)
}

fn load(device: Device) -> LoadedModel {
    let opts = LoadOptions {
        device,
        ..LoadOptions::default()
    };
    LoadedModel::load(&model_dir(), &opts, &mut |_, _| {}).expect("load the model")
}

/// The CPU (bf16) and CUDA models, or `None` (with the reason printed) without a GPU.
fn both(test: &str) -> Option<(LoadedModel, LoadedModel)> {
    if let Err(e) = cuda::probe(0) {
        eprintln!("skipping {test}: {e}");
        return None;
    }
    Some((load(Device::Cpu), load(Device::Cuda(0))))
}

fn prompts() -> Vec<Vec<u32>> {
    common::cases().into_iter().map(|c| c.input_ids).collect()
}

/// Largest gap between the best and second-best logit.
fn margin(logits: &[f32]) -> f32 {
    let best = argmax(logits) as usize;
    let second = logits
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != best)
        .map(|(_, &l)| l)
        .fold(f32::NEG_INFINITY, f32::max);
    logits[best] - second
}

#[test]
fn cuda_logits_and_greedy_tokens_match_cpu() {
    let Some((mut cpu, mut gpu)) = both("cuda_logits_and_greedy_tokens_match_cpu") else {
        return;
    };
    for (i, p) in prompts().iter().enumerate() {
        let want = common::prompt_logits(&mut cpu, p);
        let got = common::prompt_logits(&mut gpu, p);
        let diff = common::max_abs_diff(&got, &want);
        let range = want.iter().fold(0.0f32, |m, &x| m.max(x.abs()));
        eprintln!("prompt {i}: max |logit diff| {diff:.4} (logits up to {range:.2})");
        assert!(
            diff <= 0.05 * range.max(1.0),
            "prompt {i}: logits differ by {diff}"
        );
        if margin(&want) > 2.0 * diff {
            assert_eq!(argmax(&got), argmax(&want), "prompt {i}: top token");
        }
        let g_cpu = common::greedy(&mut cpu, p, 16);
        let g_gpu = common::greedy(&mut gpu, p, 16);
        let same = g_cpu.iter().zip(&g_gpu).take_while(|(a, b)| a == b).count();
        eprintln!("prompt {i}: greedy tokens agree for {same} of {}", g_cpu.len());
        assert!(
            same >= 4.min(g_cpu.len()),
            "prompt {i}: greedy {g_gpu:?} vs cpu {g_cpu:?}"
        );
    }
}

#[test]
fn cuda_batched_steps_equal_solo_runs() {
    if let Err(e) = cuda::probe(0) {
        eprintln!("skipping cuda_batched_steps_equal_solo_runs: {e}");
        return;
    }
    let mut gpu = load(Device::Cuda(0));
    common::batched_equals_solo(&mut gpu, 0.25);
}

#[test]
fn cuda_device_sampling_agrees_with_its_logits() {
    let Some((_, mut gpu)) = both("cuda_device_sampling_agrees_with_its_logits") else {
        return;
    };
    let ps = prompts();
    gpu.backend.init_kv_cache(64, 16).expect("kv");
    let tables: Vec<Vec<u32>> = (0..ps.len())
        .map(|s| (0..16u32).map(|j| j * ps.len() as u32 + s as u32).collect())
        .collect();
    let batch: Vec<SeqChunk<'_>> = ps
        .iter()
        .zip(&tables)
        .map(|(p, t)| SeqChunk {
            tokens: p,
            start_pos: 0,
            block_table: t,
            want_logits: true,
        })
        .collect();
    let mut logits = Vec::new();
    gpu.backend.forward(&batch, &mut logits).expect("forward");
    let greedy = SamplingParams::default();
    let rows: Vec<SampleRow<'_>> = ps
        .iter()
        .map(|_| SampleRow {
            params: &greedy,
            seed: 1,
            counter: 0,
            logprobs: Some(3),
            penalties: &[],
        })
        .collect();
    let mut picked: Vec<DeviceSample> = Vec::new();
    // The same step again (the KV writes are identical), now picking on the device.
    gpu.backend
        .forward_sample(&batch, &rows, &mut picked)
        .expect("forward_sample");
    let vocab = gpu.config.vocab_size;
    for (i, d) in picked.iter().enumerate() {
        let row = &logits[i * vocab..(i + 1) * vocab];
        assert_eq!(d.id, argmax(row), "row {i}: greedy pick");
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let log_z = max + row.iter().map(|&l| ((l - max) as f64).exp()).sum::<f64>().ln() as f32;
        let lp = d.logprob.expect("logprob asked for");
        assert!(
            (lp - (row[d.id as usize] - log_z)).abs() < 1e-2,
            "row {i}: logprob {lp}"
        );
        assert_eq!(d.top_logprobs.len(), 3);
        assert_eq!(d.top_logprobs[0].0, d.id);
    }
}

/// `--cc sealed` on the GPU: the weights arrive through the AES-GCM pipeline and every step's
/// inputs and outputs through the sealed channel (small chunks and a key rotation every 5
/// messages, so both directions rotate many times), and the model computes exactly what the
/// plain transfer path computes: the same logits bit for bit and the same sampled tokens.
#[test]
fn cuda_sealed_transfers_match_plain_transfers() {
    if let Err(e) = cuda::probe(0) {
        eprintln!("skipping cuda_sealed_transfers_match_plain_transfers: {e}");
        return;
    }
    let mut plain = load(Device::Cuda(0));
    let mut opts = LoadOptions {
        device: Device::Cuda(0),
        cc: veil_engine::cc::CcMode::Sealed,
        ..LoadOptions::default()
    };
    opts.channel.chunk_size = 4096;
    opts.channel.rotate_after = 5;
    let mut sealed = LoadedModel::load(&model_dir(), &opts, &mut |_, _| {}).expect("load sealed");
    eprintln!(
        "weights: plain {:.2} GB/s, sealed {:.2} GB/s",
        plain.load.transfer_gb_per_s, sealed.load.transfer_gb_per_s
    );
    for (i, p) in prompts().iter().enumerate() {
        let a = common::prompt_logits(&mut plain, p);
        let b = common::prompt_logits(&mut sealed, p);
        assert_eq!(
            a, b,
            "prompt {i}: logits differ between plain and sealed transfers"
        );
        assert_eq!(
            common::greedy(&mut plain, p, 24),
            common::greedy(&mut sealed, p, 24),
            "prompt {i}: greedy tokens"
        );
    }
}
