//! Deterministic random weights, streamed into safetensors shards.
//!
//! Every element is a pure function of (seed, tensor name, element index): a SplitMix64
//! output at that counter, keyed by the seed and an FNV-1a hash of the name, turned into a
//! normal-ish value (the sum of four 16-bit uniforms, Irwin–Hall) with standard deviation
//! [`MATRIX_STD`]. So values do not depend on chunking, thread count, sharding or file order,
//! and the same seed always gives byte-identical files. Tensors are generated in chunks on all
//! cores while a second thread writes the previous chunk, so memory stays at a few chunks.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, sync_channel};

use serde_json::{Map, Value, json};
use veil_kernels::pool::{ThreadPool, split_range};

use super::shapes::{TensorInit, TensorSpec};
use crate::error::{Error, Result};
use crate::gguf::ImportDtype;

/// Standard deviation of random (matrix) tensors.
pub const MATRIX_STD: f32 = 0.02;

/// Default largest shard (4 GiB); a single larger tensor gets a shard of its own.
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 4 << 30;

/// Elements generated per chunk.
const CHUNK_ELEMS: usize = 1 << 22;

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The generator key of one tensor: the seed and an FNV-1a hash of its name, mixed.
pub fn tensor_key(seed: u64, name: &str) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3);
    }
    mix(mix(seed.wrapping_add(GOLDEN)) ^ h)
}

/// Element `i` of the tensor with key `key`: normal-ish, mean 0, standard deviation
/// [`MATRIX_STD`], bounded by ±3.46 standard deviations.
#[inline]
pub fn random_value(key: u64, i: u64) -> f32 {
    let r = mix(key.wrapping_add(i.wrapping_add(1).wrapping_mul(GOLDEN)));
    let sum = (r & 0xFFFF) + ((r >> 16) & 0xFFFF) + ((r >> 32) & 0xFFFF) + (r >> 48);
    // Four uniforms on 0..65536: mean 2 * 65535, standard deviation 65536 / sqrt(3) (nearly).
    const MEAN: f32 = 2.0 * 65535.0;
    const INV_STD: f32 = 1.732_050_8 / 65536.0;
    (sum as f32 - MEAN) * (INV_STD * MATRIX_STD)
}

/// Writes elements `start..start + out.len() / size` of `t` as little-endian `dtype` into
/// `out` (whose length must be a multiple of the element size).
pub fn fill_tensor_bytes(seed: u64, t: &TensorSpec, dtype: ImportDtype, start: u64, out: &mut [u8]) {
    let key = tensor_key(seed, &t.name);
    let value = |i: u64| match t.init {
        TensorInit::Random => random_value(key, i),
        TensorInit::Ones => 1.0,
    };
    match dtype {
        ImportDtype::Bf16 => {
            for (i, c) in (start..).zip(out.chunks_exact_mut(2)) {
                c.copy_from_slice(&half::bf16::from_f32(value(i)).to_bits().to_le_bytes());
            }
        }
        ImportDtype::F32 => {
            for (i, c) in (start..).zip(out.chunks_exact_mut(4)) {
                c.copy_from_slice(&value(i).to_le_bytes());
            }
        }
    }
}

/// The bytes of elements `range` of `t` (for tests and spot checks).
pub fn tensor_bytes(seed: u64, t: &TensorSpec, dtype: ImportDtype, range: std::ops::Range<u64>) -> Vec<u8> {
    let n = range.end.saturating_sub(range.start) as usize;
    let mut out = vec![0u8; n * dtype.size() as usize];
    fill_tensor_bytes(seed, t, dtype, range.start, &mut out);
    out
}

/// One output file and the tensors it holds (indices into the tensor list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    /// File name inside the model directory.
    pub file: String,
    /// Indices of its tensors, in file order.
    pub tensors: Vec<usize>,
    /// Bytes of tensor data (without the header).
    pub data_bytes: u64,
}

/// Splits `tensors` into files of at most `max_bytes` of data each, in order: one
/// `model.safetensors`, or `model-0000i-of-0000n.safetensors` when more are needed.
pub fn plan_shards(tensors: &[TensorSpec], dtype: ImportDtype, max_bytes: u64) -> Vec<Shard> {
    let mut shards: Vec<Shard> = Vec::new();
    for (i, t) in tensors.iter().enumerate() {
        let size = t.numel() as u64 * dtype.size();
        match shards.last_mut() {
            Some(s) if s.data_bytes + size <= max_bytes || s.tensors.is_empty() => {
                s.tensors.push(i);
                s.data_bytes += size;
            }
            _ => shards.push(Shard {
                file: String::new(),
                tensors: vec![i],
                data_bytes: size,
            }),
        }
    }
    let n = shards.len();
    for (i, s) in shards.iter_mut().enumerate() {
        s.file = if n == 1 {
            "model.safetensors".into()
        } else {
            format!("model-{:05}-of-{n:05}.safetensors", i + 1)
        };
    }
    shards
}

/// `model.safetensors.index.json` for more than one shard.
pub fn index_json(tensors: &[TensorSpec], shards: &[Shard]) -> Value {
    let total: u64 = shards.iter().map(|s| s.data_bytes).sum();
    let mut map = Map::new();
    for s in shards {
        for &i in &s.tensors {
            map.insert(tensors[i].name.clone(), json!(s.file));
        }
    }
    json!({"metadata": {"total_size": total}, "weight_map": map})
}

/// The safetensors header of a shard, padded with spaces to a multiple of 8 bytes.
fn header(tensors: &[TensorSpec], shard: &Shard, dtype: ImportDtype) -> Result<Vec<u8>> {
    let mut h = Map::new();
    h.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0u64;
    for &i in &shard.tensors {
        let t = &tensors[i];
        let size = t.numel() as u64 * dtype.size();
        h.insert(
            t.name.clone(),
            json!({
                "dtype": dtype.safetensors_name(),
                "shape": t.shape,
                "data_offsets": [offset, offset + size],
            }),
        );
        offset += size;
    }
    let mut bytes = serde_json::to_vec(&Value::Object(h))
        .map_err(|e| Error::format("safetensors", format!("header: {e}")))?;
    while !bytes.len().is_multiple_of(8) {
        bytes.push(b' ');
    }
    Ok(bytes)
}

/// What the writer thread receives: a new file to start, or bytes for the current one.
enum Job {
    Open(PathBuf),
    Bytes(Vec<u8>),
}

/// Writes buffers to files in order, returning emptied buffers for reuse.
fn writer_loop(rx: &Receiver<Job>, recycle: &std::sync::mpsc::SyncSender<Vec<u8>>) -> Result<()> {
    let mut current: Option<(PathBuf, BufWriter<File>)> = None;
    let finish = |cur: Option<(PathBuf, BufWriter<File>)>| -> Result<()> {
        if let Some((path, w)) = cur {
            let file = w
                .into_inner()
                .map_err(|e| Error::io("writing", &path, e.into_error()))?;
            file.sync_all().map_err(|e| Error::io("syncing", &path, e))?;
        }
        Ok(())
    };
    while let Ok(job) = rx.recv() {
        match job {
            Job::Open(path) => {
                finish(current.take())?;
                let f = File::create(&path).map_err(|e| Error::io("creating", &path, e))?;
                current = Some((path, BufWriter::with_capacity(1 << 20, f)));
            }
            Job::Bytes(buf) => {
                let Some((path, w)) = current.as_mut() else {
                    return Err(Error::format("safetensors", "bytes before a file was opened"));
                };
                w.write_all(&buf)
                    .map_err(|e| Error::io("writing", path.as_path(), e))?;
                // The generator may have finished; then nobody needs the buffer back.
                let _ = recycle.try_send(buf);
            }
        }
    }
    finish(current.take())
}

/// Generates and writes every shard of `tensors` into `dir`. `progress(done, total)` sees
/// bytes of tensor data.
pub fn write_shards(
    dir: &Path,
    tensors: &[TensorSpec],
    shards: &[Shard],
    seed: u64,
    dtype: ImportDtype,
    threads: usize,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let total: u64 = shards.iter().map(|s| s.data_bytes).sum();
    let pool = ThreadPool::new(threads);
    let elem = dtype.size() as usize;
    let headers = shards
        .iter()
        .map(|s| header(tensors, s, dtype))
        .collect::<Result<Vec<_>>>()?;
    let (tx, rx) = sync_channel::<Job>(2);
    let (recycle_tx, recycle_rx) = sync_channel::<Vec<u8>>(4);
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || writer_loop(&rx, &recycle_tx));
        // Generation stops at the first send error (the writer failed, and reports why).
        let generated = (|| -> std::result::Result<(), ()> {
            let mut done = 0u64;
            progress(0, total);
            for (shard, head) in shards.iter().zip(&headers) {
                tx.send(Job::Open(dir.join(&shard.file))).map_err(|_| ())?;
                let mut first = (head.len() as u64).to_le_bytes().to_vec();
                first.extend_from_slice(head);
                tx.send(Job::Bytes(first)).map_err(|_| ())?;
                for &ti in &shard.tensors {
                    let t = &tensors[ti];
                    let n = t.numel();
                    let mut start = 0usize;
                    while start < n {
                        let len = CHUNK_ELEMS.min(n - start);
                        let mut buf = recycle_rx.try_recv().unwrap_or_default();
                        buf.clear();
                        buf.resize(len * elem, 0);
                        fill_parallel(&pool, seed, t, dtype, start as u64, &mut buf);
                        tx.send(Job::Bytes(buf)).map_err(|_| ())?;
                        start += len;
                        done += (len * elem) as u64;
                        progress(done, total);
                    }
                }
            }
            Ok(())
        })();
        drop(tx);
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(Error::format("safetensors", "the writer thread panicked")));
        match (generated, written) {
            (_, Err(e)) => Err(e),
            (Err(()), Ok(())) => Err(Error::format("safetensors", "the writer thread stopped early")),
            (Ok(()), Ok(())) => Ok(()),
        }
    })
}

/// Fills `out` (elements from `start`) on every thread of `pool`.
fn fill_parallel(
    pool: &ThreadPool,
    seed: u64,
    t: &TensorSpec,
    dtype: ImportDtype,
    start: u64,
    out: &mut [u8],
) {
    let elem = dtype.size() as usize;
    let n = out.len() / elem;
    let parts = pool.n_threads();
    let mut slices: Vec<Mutex<(u64, &mut [u8])>> = Vec::with_capacity(parts);
    let mut rest = out;
    for idx in 0..parts {
        let r = split_range(n, parts, idx, 1);
        let (head, tail) = rest.split_at_mut(r.len() * elem);
        slices.push(Mutex::new((start + r.start as u64, head)));
        rest = tail;
    }
    pool.run(|idx, _| {
        if let Some(m) = slices.get(idx) {
            let mut guard = m.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let (s, buf) = &mut *guard;
            fill_tensor_bytes(seed, t, dtype, *s, buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(name: &str, rows: usize, cols: usize) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            shape: vec![rows, cols],
            init: TensorInit::Random,
        }
    }

    #[test]
    fn same_seed_same_bytes_other_seed_or_name_differs() {
        let t = matrix("model.layers.0.self_attn.q_proj.weight", 64, 64);
        let a = tensor_bytes(7, &t, ImportDtype::Bf16, 0..4096);
        assert_eq!(a, tensor_bytes(7, &t, ImportDtype::Bf16, 0..4096));
        assert_ne!(a, tensor_bytes(8, &t, ImportDtype::Bf16, 0..4096));
        let other = matrix("model.layers.1.self_attn.q_proj.weight", 64, 64);
        assert_ne!(a, tensor_bytes(7, &other, ImportDtype::Bf16, 0..4096));
        // Chunks are independent: any sub-range equals the slice of the whole.
        assert_eq!(&a[2000..3000], tensor_bytes(7, &t, ImportDtype::Bf16, 1000..1500));
        // The parallel fill gives the same bytes for any thread count.
        for threads in [1, 3] {
            let pool = ThreadPool::new(threads);
            let mut buf = vec![0u8; 4096 * 2];
            fill_parallel(&pool, 7, &t, ImportDtype::Bf16, 0, &mut buf);
            assert_eq!(buf, a);
        }
        // bf16 is f32 rounded.
        let f = tensor_bytes(7, &t, ImportDtype::F32, 0..4096);
        for (b, f) in a.chunks_exact(2).zip(f.chunks_exact(4)) {
            let f = f32::from_le_bytes([f[0], f[1], f[2], f[3]]);
            assert_eq!(half::bf16::from_le_bytes([b[0], b[1]]), half::bf16::from_f32(f));
        }
    }

    #[test]
    fn values_are_normal_ish() {
        let key = tensor_key(1, "w");
        let n = 200_000;
        let v: Vec<f64> = (0..n).map(|i| f64::from(random_value(key, i))).collect();
        let mean = v.iter().sum::<f64>() / n as f64;
        let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
        assert!(mean.abs() < 2e-4, "mean {mean}");
        assert!((std - 0.02).abs() < 3e-4, "std {std}");
        assert!(v.iter().all(|x| x.abs() <= 0.0693), "bounded");
        let ones = TensorSpec {
            name: "n".into(),
            shape: vec![4],
            init: TensorInit::Ones,
        };
        assert_eq!(
            tensor_bytes(1, &ones, ImportDtype::F32, 0..4),
            [1.0f32; 4]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn shard_plan() {
        let ts = vec![
            matrix("a", 10, 10),
            matrix("b", 10, 10),
            matrix("c", 30, 10),
            matrix("d", 1, 10),
        ];
        // bf16: 200, 200, 600, 20 bytes.
        let one = plan_shards(&ts, ImportDtype::Bf16, 10_000);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].file, "model.safetensors");
        let many = plan_shards(&ts, ImportDtype::Bf16, 400);
        let files: Vec<_> = many
            .iter()
            .map(|s| (s.file.as_str(), s.tensors.clone()))
            .collect();
        assert_eq!(
            files,
            vec![
                ("model-00001-of-00003.safetensors", vec![0, 1]),
                ("model-00002-of-00003.safetensors", vec![2]),
                ("model-00003-of-00003.safetensors", vec![3]),
            ]
        );
        let idx = index_json(&ts, &many);
        assert_eq!(idx["metadata"]["total_size"], 1020);
        assert_eq!(idx["weight_map"]["c"], "model-00002-of-00003.safetensors");
    }
}
