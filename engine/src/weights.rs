//! Memory-mapped safetensors weights: one file or a sharded set with its index.
//!
//! The files are mapped, never read whole; each tensor is converted to f32 on request, so a
//! backend can repack it into its own layout and drop the temporary.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};

/// Where one tensor lives.
#[derive(Debug, Clone)]
struct TensorEntry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    range: std::ops::Range<usize>,
}

/// The tensors of a model directory.
#[derive(Debug)]
pub struct Weights {
    maps: Vec<Mmap>,
    tensors: HashMap<String, TensorEntry>,
    /// With `--cc sealed` on the CPU backend: every tensor read crosses the sealed channel in
    /// loopback first (see [`crate::cc::loopback`]).
    loopback: Option<std::sync::Mutex<crate::cc::loopback::Loopback>>,
}

/// The weight files of a model directory: the single file, or the shards named by the index.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index)
        .map_err(|e| Error::io("no model.safetensors; reading the shard index", &index, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::format("safetensors index", e.to_string()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::format("safetensors index", "no weight_map object"))?;
    let mut files: Vec<String> = Vec::new();
    for v in map.values() {
        let name = v
            .as_str()
            .ok_or_else(|| Error::format("safetensors index", "weight_map value is not a string"))?;
        // Shard names come from the file; refuse anything that leaves the directory.
        if name.contains('/') || name.contains('\\') || name.starts_with('.') {
            return Err(Error::format(
                "safetensors index",
                format!("bad shard name {name:?}"),
            ));
        }
        if !files.iter().any(|f| f == name) {
            files.push(name.to_owned());
        }
    }
    files.sort();
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

impl Weights {
    /// Maps the weight files of a model directory.
    pub fn open(dir: &Path) -> Result<Self> {
        let files = weight_files(dir)?;
        let mut maps = Vec::with_capacity(files.len());
        for path in &files {
            let file = File::open(path).map_err(|e| Error::io("opening weights", path, e))?;
            // SAFETY: the map is read-only; the model files are not modified while the engine
            // runs (the store writes models into fresh directories and renames them in place).
            let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io("mapping weights", path, e))?;
            maps.push(map);
        }
        Self::from_maps(maps)
    }

    /// Builds from already-mapped (or in-memory, for tests) safetensors buffers.
    fn from_maps(maps: Vec<Mmap>) -> Result<Self> {
        let mut tensors = HashMap::new();
        for (i, map) in maps.iter().enumerate() {
            for (name, entry) in parse_header(map)? {
                if tensors
                    .insert(name.clone(), TensorEntry { file: i, ..entry })
                    .is_some()
                {
                    return Err(Error::format(
                        "safetensors",
                        format!("tensor {name} appears twice"),
                    ));
                }
            }
        }
        Ok(Self {
            maps,
            tensors,
            loopback: None,
        })
    }

    /// Passes every later tensor read through the sealed channel in loopback (the CPU
    /// backend's `--cc sealed`).
    pub fn seal_reads(&mut self, loopback: crate::cc::loopback::Loopback) {
        self.loopback = Some(std::sync::Mutex::new(loopback));
    }

    /// Whether a tensor exists.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The shape of a tensor.
    pub fn shape(&self, name: &str) -> Result<&[usize]> {
        Ok(&self.entry(name)?.shape)
    }

    fn entry(&self, name: &str) -> Result<&TensorEntry> {
        self.tensors.get(name).ok_or_else(|| Error::Tensor {
            name: name.into(),
            reason: "missing from the weight files".into(),
        })
    }

    /// A tensor converted to f32, checked against the expected shape.
    pub fn f32(&self, name: &str, expected_shape: &[usize]) -> Result<Vec<f32>> {
        let e = self.entry(name)?;
        if e.shape != expected_shape {
            return Err(Error::Tensor {
                name: name.into(),
                reason: format!("shape {:?}, expected {:?}", e.shape, expected_shape),
            });
        }
        let mapped = &self.maps[e.file][e.range.clone()];
        let transferred;
        let bytes = match &self.loopback {
            None => mapped,
            Some(l) => {
                let mut l = l.lock().map_err(|_| Error::Tensor {
                    name: name.into(),
                    reason: "the sealed loopback channel failed earlier".into(),
                })?;
                transferred = l.transfer(mapped)?;
                &transferred[..]
            }
        };
        to_f32(bytes, e.dtype).ok_or_else(|| Error::Unsupported {
            what: "tensor dtype",
            name: format!("{:?} (tensor {name})", e.dtype),
        })
    }

    /// The storage dtype of a tensor (as the safetensors name, e.g. "BF16").
    pub fn dtype_name(&self, name: &str) -> Result<String> {
        Ok(format!("{:?}", self.entry(name)?.dtype))
    }
}

/// Converts little-endian F32/F16/BF16 bytes to f32; `None` for other dtypes.
fn to_f32(bytes: &[u8], dtype: Dtype) -> Option<Vec<f32>> {
    let out = match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => return None,
    };
    Some(out)
}

/// Checks a whole safetensors file in memory (header, every tensor's range and size); returns
/// the number of tensors. For tools and fuzzing; [`Weights::open`] does the same per file.
pub fn check_safetensors(buf: &[u8]) -> Result<usize> {
    parse_header(buf).map(|t| t.len())
}

/// Reads a safetensors header and checks every tensor's byte range against the buffer.
fn parse_header(buf: &[u8]) -> Result<Vec<(String, TensorEntry)>> {
    let (header_len, meta) =
        SafeTensors::read_metadata(buf).map_err(|e| Error::format("safetensors", e.to_string()))?;
    let base = 8usize
        .checked_add(header_len)
        .ok_or_else(|| Error::format("safetensors", "header length overflows"))?;
    let mut out = Vec::new();
    for (name, info) in meta.tensors() {
        let (start, end) = info.data_offsets;
        let range = base.checked_add(start).zip(base.checked_add(end));
        let Some((start, end)) = range.filter(|(s, e)| s <= e && *e <= buf.len()) else {
            return Err(Error::format(
                "safetensors",
                format!("tensor {name}: data outside the file"),
            ));
        };
        let elems = info
            .shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| Error::format("safetensors", format!("tensor {name}: shape overflows")))?;
        let bytes = elems
            .checked_mul(info.dtype.bitsize())
            .map(|bits| bits.div_ceil(8))
            .ok_or_else(|| Error::format("safetensors", format!("tensor {name}: size overflows")))?;
        if bytes != end - start {
            return Err(Error::format(
                "safetensors",
                format!("tensor {name}: {} bytes for shape {:?}", end - start, info.shape),
            ));
        }
        out.push((
            name.clone(),
            TensorEntry {
                file: 0,
                dtype: info.dtype,
                shape: info.shape.clone(),
                range: start..end,
            },
        ));
    }
    Ok(out)
}

/// One decoder layer's tensors in f32, with q|k|v and gate|up fused (rows of q, then k, then v;
/// gate then up), as both backends lay them out.
#[derive(Debug)]
pub struct LayerTensors {
    /// `input_layernorm.weight` `[hidden]`.
    pub attn_norm: Vec<f32>,
    /// q|k|v projection `[(heads + 2 kv_heads) head_dim, hidden]`.
    pub qkv: Vec<f32>,
    /// q|k|v bias, when the model has one (Qwen2).
    pub qkv_bias: Option<Vec<f32>>,
    /// Output projection `[hidden, heads head_dim]`.
    pub o_proj: Vec<f32>,
    /// `post_attention_layernorm.weight` `[hidden]`.
    pub mlp_norm: Vec<f32>,
    /// gate|up projection `[2 intermediate, hidden]`.
    pub gate_up: Vec<f32>,
    /// Down projection `[hidden, intermediate]`.
    pub down: Vec<f32>,
}

impl Weights {
    /// Reads layer `i` (Hugging Face Llama tensor names), checking every shape.
    pub fn layer(&self, cfg: &crate::config::ModelConfig, i: usize) -> Result<LayerTensors> {
        let h = cfg.hidden_size;
        let (nh, nkv, hd, inter) = (
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
            cfg.intermediate_size,
        );
        let p = format!("model.layers.{i}");
        let mut qkv = self.f32(&format!("{p}.self_attn.q_proj.weight"), &[nh * hd, h])?;
        qkv.extend(self.f32(&format!("{p}.self_attn.k_proj.weight"), &[nkv * hd, h])?);
        qkv.extend(self.f32(&format!("{p}.self_attn.v_proj.weight"), &[nkv * hd, h])?);
        let qkv_bias = if cfg.attention_bias {
            let mut b = self.f32(&format!("{p}.self_attn.q_proj.bias"), &[nh * hd])?;
            b.extend(self.f32(&format!("{p}.self_attn.k_proj.bias"), &[nkv * hd])?);
            b.extend(self.f32(&format!("{p}.self_attn.v_proj.bias"), &[nkv * hd])?);
            Some(b)
        } else {
            None
        };
        let mut gate_up = self.f32(&format!("{p}.mlp.gate_proj.weight"), &[inter, h])?;
        gate_up.extend(self.f32(&format!("{p}.mlp.up_proj.weight"), &[inter, h])?);
        Ok(LayerTensors {
            attn_norm: self.f32(&format!("{p}.input_layernorm.weight"), &[h])?,
            qkv,
            qkv_bias,
            o_proj: self.f32(&format!("{p}.self_attn.o_proj.weight"), &[h, nh * hd])?,
            mlp_norm: self.f32(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
            gate_up,
            down: self.f32(&format!("{p}.mlp.down_proj.weight"), &[h, inter])?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(header: &str, data: &[u8]) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn reads_valid_tensor() {
        let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0]
            .iter()
            .flat_map(|f| f.to_le_bytes())
            .collect();
        let buf = file_with(
            r#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#,
            &data,
        );
        let entries = parse_header(&buf).expect("valid");
        assert_eq!(entries.len(), 1);
        let e = &entries[0].1;
        assert_eq!(
            to_f32(&buf[e.range.clone()], e.dtype),
            Some(vec![1.0, 2.0, 3.0, 4.0])
        );
    }

    #[test]
    fn rejects_hostile_files() {
        let data = vec![0u8; 16];
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            vec![1, 2, 3],
            (u64::MAX).to_le_bytes().to_vec(),
            file_with("not json", &data),
            file_with(
                r#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,32]}}"#,
                &data,
            ),
            file_with(
                r#"{"w":{"dtype":"F32","shape":[3,2],"data_offsets":[0,16]}}"#,
                &data,
            ),
            file_with(
                r#"{"w":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,16]}}"#,
                &data,
            ),
            file_with(
                r#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[16,0]}}"#,
                &data,
            ),
        ];
        for (i, c) in cases.iter().enumerate() {
            assert!(parse_header(c).is_err(), "case {i} accepted");
        }
        // Truncating a valid file anywhere is an error, never a panic.
        let valid = file_with(
            r#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#,
            &data,
        );
        for cut in 0..valid.len() {
            assert!(
                parse_header(&valid[..cut]).is_err(),
                "truncated at {cut} accepted"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = parse_header(&bytes);
        }
    }
}
