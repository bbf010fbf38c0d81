//! Importing a llama-architecture GGUF file as a Hugging Face model directory.
//!
//! The output is what `transformers` would load as a `LlamaForCausalLM`:
//! `model.safetensors` (dequantized, with llama.cpp's Q/K row permutation
//! undone so the usual rotate-half RoPE applies), `config.json`,
//! `tokenizer.json`, `tokenizer_config.json` and `generation_config.json`.
//!
//! The directory is written into a temporary directory next to the target and
//! renamed into place at the end, so a failed import leaves nothing behind.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_json::{Map, Value, json};

use super::dequant::{dequantize, is_supported};
use super::reader::{GgufFile, GgufTensorInfo};
use super::tokenizer::{GgufTokenizer, tokenizer_from_gguf};
use crate::error::{Error, Result};

/// The element type of the imported safetensors weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImportDtype {
    /// bfloat16 (half the size; rounds the dequantized values).
    #[default]
    Bf16,
    /// float32 (exact dequantized values).
    F32,
}

impl ImportDtype {
    /// The safetensors dtype name (`"BF16"` / `"F32"`).
    pub fn safetensors_name(self) -> &'static str {
        match self {
            Self::Bf16 => "BF16",
            Self::F32 => "F32",
        }
    }

    /// The `torch_dtype` written to `config.json`.
    pub fn torch_name(self) -> &'static str {
        match self {
            Self::Bf16 => "bfloat16",
            Self::F32 => "float32",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            Self::Bf16 => 2,
            Self::F32 => 4,
        }
    }
}

impl FromStr for ImportDtype {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            "f32" | "float32" => Ok(Self::F32),
            _ => Err(Error::InvalidRequest(format!(
                "unknown import dtype {s:?} (expected bf16 or f32)"
            ))),
        }
    }
}

/// Which rows permutation to undo for a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Permute {
    None,
    /// Undo llama.cpp's Q/K permutation with this many heads.
    Heads(usize),
}

/// Reorders the rows of a Q or K projection (weight or bias) from llama.cpp's
/// interleaved-RoPE order to Hugging Face's rotate-half order.
///
/// `data` holds `rows = data.len() / row_len` rows of `row_len` elements;
/// with `d = rows / n_heads`, GGUF row `h*d + 2j + t` becomes HF row
/// `h*d + t*(d/2) + j` (for `t` in 0..2, `j` in 0..d/2).
pub fn unpermute_qk_rows<T: Copy>(data: &[T], row_len: usize, n_heads: usize) -> Result<Vec<T>> {
    reorder_qk_rows(data, row_len, n_heads, true)
}

/// The inverse of [`unpermute_qk_rows`]: what llama.cpp's converter applies.
pub fn permute_qk_rows<T: Copy>(data: &[T], row_len: usize, n_heads: usize) -> Result<Vec<T>> {
    reorder_qk_rows(data, row_len, n_heads, false)
}

fn reorder_qk_rows<T: Copy>(data: &[T], row_len: usize, n_heads: usize, to_hf: bool) -> Result<Vec<T>> {
    let bad = |why: &str| Error::Tensor {
        name: "attention q/k".into(),
        reason: format!(
            "cannot undo the RoPE row permutation: {why} ({} elements, row length {row_len}, {n_heads} heads)",
            data.len()
        ),
    };
    if row_len == 0 || n_heads == 0 || !data.len().is_multiple_of(row_len) {
        return Err(bad("bad shape"));
    }
    let rows = data.len() / row_len;
    if !rows.is_multiple_of(n_heads) || !(rows / n_heads).is_multiple_of(2) {
        return Err(bad("rows per head must be even"));
    }
    let d = rows / n_heads;
    let half = d / 2;
    let mut out = Vec::with_capacity(data.len());
    for hf_row in 0..rows {
        // Output row index in the destination order; find its source row.
        let h = hf_row / d;
        let r = hf_row % d;
        let src = if to_hf {
            // HF row h*d + t*half + j  <-  GGUF row h*d + 2j + t
            let (t, j) = (r / half, r % half);
            h * d + 2 * j + t
        } else {
            // GGUF row h*d + 2j + t  <-  HF row h*d + t*half + j
            let (j, t) = (r / 2, r % 2);
            h * d + t * half + j
        };
        out.extend_from_slice(&data[src * row_len..(src + 1) * row_len]);
    }
    Ok(out)
}

/// Llama hyper-parameters read from the GGUF metadata.
#[derive(Debug, Clone)]
struct LlamaParams {
    arch: String,
    n_layers: usize,
    hidden: u64,
    ffn: u64,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: u64,
    rms_eps: f32,
    rope_theta: f32,
    context: u64,
    vocab_size: u64,
    tied: bool,
    attention_bias: bool,
    rope_scaling: Option<Value>,
}

fn fmt_err(reason: impl Into<String>) -> Error {
    Error::format("GGUF", reason)
}

fn read_params(g: &GgufFile) -> Result<LlamaParams> {
    let arch = g.get_str("general.architecture")?.to_string();
    if arch != "llama" {
        return Err(Error::Unsupported {
            what: "GGUF architecture for import",
            name: arch,
        });
    }
    let k = |s: &str| format!("{arch}.{s}");
    let as_usize = |v: u32| v as usize;
    let n_layers = as_usize(g.get_u32(&k("block_count"))?);
    let hidden = u64::from(g.get_u32(&k("embedding_length"))?);
    let ffn = u64::from(g.get_u32(&k("feed_forward_length")).map_err(|e| {
        if g.get(&k("feed_forward_length"))
            .and_then(|v| v.as_array())
            .is_some()
        {
            Error::Unsupported {
                what: "GGUF hyper-parameter",
                name: "per-layer feed_forward_length".into(),
            }
        } else {
            e
        }
    })?);
    let n_heads = as_usize(g.get_u32(&k("attention.head_count"))?);
    let n_kv_heads = g
        .get_u32_opt(&k("attention.head_count_kv"))?
        .map_or(n_heads, as_usize);
    if n_layers == 0 || hidden == 0 || ffn == 0 || n_heads == 0 || n_kv_heads == 0 {
        return Err(fmt_err("a llama hyper-parameter is zero"));
    }
    if n_heads % n_kv_heads != 0 {
        return Err(fmt_err(format!(
            "head_count {n_heads} is not a multiple of head_count_kv {n_kv_heads}"
        )));
    }
    let head_dim = match g.get_u32_opt(&k("attention.key_length"))? {
        Some(d) => u64::from(d),
        None => {
            if hidden % n_heads as u64 != 0 {
                return Err(fmt_err(format!(
                    "embedding_length {hidden} is not a multiple of head_count {n_heads}"
                )));
            }
            hidden / n_heads as u64
        }
    };
    if let Some(v) = g.get_u32_opt(&k("attention.value_length"))?
        && u64::from(v) != head_dim
    {
        return Err(Error::Unsupported {
            what: "GGUF attention shape",
            name: format!("value_length {v} != key_length {head_dim}"),
        });
    }
    if head_dim == 0 || head_dim % 2 != 0 {
        return Err(fmt_err(format!("head dimension {head_dim} must be even")));
    }
    if let Some(n_rot) = g.get_u32_opt(&k("rope.dimension_count"))?
        && u64::from(n_rot) != head_dim
    {
        return Err(Error::Unsupported {
            what: "partial rotary embedding",
            name: format!("rope.dimension_count {n_rot} != head dim {head_dim}"),
        });
    }
    let rms_eps = g.get_f32(&k("attention.layer_norm_rms_epsilon"))?;
    let rope_theta = g.get_f32_opt(&k("rope.freq_base"))?.unwrap_or(10_000.0);
    let context = u64::from(g.get_u32(&k("context_length"))?);

    let rope_scaling = match g.get_str_opt(&k("rope.scaling.type"))? {
        None | Some("none") => None,
        Some("linear") => {
            let factor = g.get_f32(&k("rope.scaling.factor"))?;
            Some(json!({"rope_type": "linear", "type": "linear", "factor": f32_json(factor)}))
        }
        Some(other) => {
            return Err(Error::Unsupported {
                what: "rope scaling",
                name: other.to_string(),
            });
        }
    };
    if g.tensor("rope_freqs.weight").is_some() {
        // llama3-style scaling is stored only as precomputed per-frequency
        // factors; the HF parameters cannot be recovered exactly.
        return Err(Error::Unsupported {
            what: "rope scaling",
            name: "llama3 (rope_freqs.weight factors)".into(),
        });
    }

    let embd = g
        .tensor("token_embd.weight")
        .ok_or_else(|| missing("token_embd.weight"))?;
    if embd.dims.len() != 2 {
        return Err(shape_err(embd, "[hidden, vocab]"));
    }
    let vocab_size = embd.dims[1];
    Ok(LlamaParams {
        arch,
        n_layers,
        hidden,
        ffn,
        n_heads,
        n_kv_heads,
        head_dim,
        rms_eps,
        rope_theta,
        context,
        vocab_size,
        tied: g.tensor("output.weight").is_none(),
        attention_bias: g.tensor("blk.0.attn_q.bias").is_some(),
        rope_scaling,
    })
}

fn missing(name: &str) -> Error {
    Error::Tensor {
        name: name.into(),
        reason: "missing from the GGUF file".into(),
    }
}

fn shape_err(t: &GgufTensorInfo, want: &str) -> Error {
    Error::Tensor {
        name: t.name.clone(),
        reason: format!("GGUF dims (ne0 first) {:?}, expected {want}", t.dims),
    }
}

/// An `f32` as the JSON number of its shortest decimal spelling (so 1e-5
/// stays 1e-5 rather than 9.999999747378752e-06).
pub(crate) fn f32_json(x: f32) -> Value {
    format!("{x}")
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

/// One output tensor.
#[derive(Debug)]
struct Planned {
    hf_name: String,
    gguf_index: usize,
    /// HF shape: `[ne1, ne0]` for matrices, `[ne0]` for vectors.
    shape: Vec<u64>,
    permute: Permute,
}

/// Maps every GGUF tensor to its HF name, checking shapes and completeness.
fn plan(g: &GgufFile, p: &LlamaParams) -> Result<Vec<Planned>> {
    let q_rows = p.n_heads as u64 * p.head_dim;
    let kv_rows = p.n_kv_heads as u64 * p.head_dim;
    let index: std::collections::HashMap<&str, usize> = g
        .tensors()
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    let mut planned = Vec::new();

    // Expected tensors in output order: (gguf name, hf name, dims ne0-first, permute, required)
    let mut expected: Vec<(String, String, Vec<u64>, Permute, bool)> = vec![(
        "token_embd.weight".into(),
        "model.embed_tokens.weight".into(),
        vec![p.hidden, p.vocab_size],
        Permute::None,
        true,
    )];
    for i in 0..p.n_layers {
        let b = |s: &str| format!("blk.{i}.{s}");
        let h = |s: &str| format!("model.layers.{i}.{s}");
        let bias = p.attention_bias;
        expected.extend([
            (
                b("attn_q.weight"),
                h("self_attn.q_proj.weight"),
                vec![p.hidden, q_rows],
                Permute::Heads(p.n_heads),
                true,
            ),
            (
                b("attn_q.bias"),
                h("self_attn.q_proj.bias"),
                vec![q_rows],
                Permute::Heads(p.n_heads),
                bias,
            ),
            (
                b("attn_k.weight"),
                h("self_attn.k_proj.weight"),
                vec![p.hidden, kv_rows],
                Permute::Heads(p.n_kv_heads),
                true,
            ),
            (
                b("attn_k.bias"),
                h("self_attn.k_proj.bias"),
                vec![kv_rows],
                Permute::Heads(p.n_kv_heads),
                bias,
            ),
            (
                b("attn_v.weight"),
                h("self_attn.v_proj.weight"),
                vec![p.hidden, kv_rows],
                Permute::None,
                true,
            ),
            (
                b("attn_v.bias"),
                h("self_attn.v_proj.bias"),
                vec![kv_rows],
                Permute::None,
                bias,
            ),
            (
                b("attn_output.weight"),
                h("self_attn.o_proj.weight"),
                vec![q_rows, p.hidden],
                Permute::None,
                true,
            ),
            (
                b("attn_output.bias"),
                h("self_attn.o_proj.bias"),
                vec![p.hidden],
                Permute::None,
                false,
            ),
            (
                b("ffn_gate.weight"),
                h("mlp.gate_proj.weight"),
                vec![p.hidden, p.ffn],
                Permute::None,
                true,
            ),
            (
                b("ffn_up.weight"),
                h("mlp.up_proj.weight"),
                vec![p.hidden, p.ffn],
                Permute::None,
                true,
            ),
            (
                b("ffn_down.weight"),
                h("mlp.down_proj.weight"),
                vec![p.ffn, p.hidden],
                Permute::None,
                true,
            ),
            (
                b("attn_norm.weight"),
                h("input_layernorm.weight"),
                vec![p.hidden],
                Permute::None,
                true,
            ),
            (
                b("ffn_norm.weight"),
                h("post_attention_layernorm.weight"),
                vec![p.hidden],
                Permute::None,
                true,
            ),
        ]);
    }
    expected.push((
        "output_norm.weight".into(),
        "model.norm.weight".into(),
        vec![p.hidden],
        Permute::None,
        true,
    ));
    expected.push((
        "output.weight".into(),
        "lm_head.weight".into(),
        vec![p.hidden, p.vocab_size],
        Permute::None,
        false,
    ));

    let mut used = vec![false; g.tensors().len()];
    for (gguf_name, hf_name, dims, permute, required) in expected {
        let Some(&idx) = index.get(gguf_name.as_str()) else {
            if required {
                return Err(missing(&gguf_name));
            }
            continue;
        };
        let t = &g.tensors()[idx];
        if t.dims != dims {
            return Err(shape_err(t, &format!("{dims:?}")));
        }
        if !is_supported(t.ggml_type) {
            return Err(Error::Unsupported {
                what: "GGUF tensor type for import",
                name: format!("{} ({})", t.ggml_type, t.name),
            });
        }
        used[idx] = true;
        let shape = if dims.len() == 2 {
            vec![dims[1], dims[0]]
        } else {
            dims.clone()
        };
        planned.push(Planned {
            hf_name,
            gguf_index: idx,
            shape,
            permute,
        });
    }
    if let Some(i) = used.iter().position(|u| !u) {
        return Err(Error::Unsupported {
            what: "GGUF tensor (not part of a plain llama model)",
            name: g.tensors()[i].name.clone(),
        });
    }
    if p.attention_bias {
        // HF's LlamaAttention with attention_bias = true also expects o_proj.bias.
        if g.tensor("blk.0.attn_output.bias").is_none() {
            return Err(Error::Unsupported {
                what: "attention bias layout",
                name: "q/k/v biases without an output bias".into(),
            });
        }
    } else if g.tensors().iter().any(|t| t.name.ends_with("attn_output.bias")) {
        return Err(Error::Unsupported {
            what: "attention bias layout",
            name: "output bias without q/k/v biases".into(),
        });
    }
    Ok(planned)
}

pub(crate) fn json_to_file(path: &Path, v: &Value) -> Result<()> {
    let mut s = serde_json::to_string_pretty(v).map_err(|e| fmt_err(e.to_string()))?;
    s.push('\n');
    std::fs::write(path, s).map_err(|e| Error::io("writing", path, e))
}

fn config_json(p: &LlamaParams, tok: &GgufTokenizer, dtype: ImportDtype) -> Value {
    let mut m = Map::new();
    m.insert("architectures".into(), json!(["LlamaForCausalLM"]));
    m.insert("model_type".into(), json!("llama"));
    m.insert("hidden_size".into(), json!(p.hidden));
    m.insert("intermediate_size".into(), json!(p.ffn));
    m.insert("num_hidden_layers".into(), json!(p.n_layers));
    m.insert("num_attention_heads".into(), json!(p.n_heads));
    m.insert("num_key_value_heads".into(), json!(p.n_kv_heads));
    m.insert("head_dim".into(), json!(p.head_dim));
    m.insert("hidden_act".into(), json!("silu"));
    m.insert("rms_norm_eps".into(), f32_json(p.rms_eps));
    m.insert("rope_theta".into(), f32_json(p.rope_theta));
    m.insert(
        "rope_scaling".into(),
        p.rope_scaling.clone().unwrap_or(Value::Null),
    );
    m.insert("max_position_embeddings".into(), json!(p.context));
    m.insert("vocab_size".into(), json!(p.vocab_size));
    m.insert("tie_word_embeddings".into(), json!(p.tied));
    m.insert("attention_bias".into(), json!(p.attention_bias));
    m.insert("mlp_bias".into(), json!(false));
    m.insert("bos_token_id".into(), json!(tok.bos_id));
    m.insert("eos_token_id".into(), json!(tok.eos_id));
    if let Some(pad) = tok.pad_id {
        m.insert("pad_token_id".into(), json!(pad));
    }
    m.insert("torch_dtype".into(), json!(dtype.torch_name()));
    m.insert("use_cache".into(), json!(true));
    Value::Object(m)
}

fn tokenizer_config_json(g: &GgufFile, p: &LlamaParams, tok: &GgufTokenizer) -> Result<Value> {
    let mut m = Map::new();
    m.insert("add_bos_token".into(), json!(tok.add_bos));
    m.insert("add_eos_token".into(), json!(tok.add_eos));
    m.insert("bos_token".into(), json!(tok.token(tok.bos_id)));
    m.insert("eos_token".into(), json!(tok.token(tok.eos_id)));
    m.insert("pad_token".into(), json!(tok.token(tok.pad_id)));
    m.insert("unk_token".into(), json!(tok.token(tok.unk_id)));
    if let Some(t) = g.get_str_opt("tokenizer.chat_template")? {
        m.insert("chat_template".into(), json!(t));
    }
    m.insert("clean_up_tokenization_spaces".into(), json!(tok.clean_spaces));
    m.insert("model_max_length".into(), json!(p.context));
    m.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    Ok(Value::Object(m))
}

fn generation_config_json(tok: &GgufTokenizer) -> Value {
    let mut m = Map::new();
    m.insert("bos_token_id".into(), json!(tok.bos_id));
    let eos = match (tok.eos_id, tok.eot_id) {
        (Some(e), Some(t)) if e != t => json!([e, t]),
        (e, t) => json!(e.or(t)),
    };
    m.insert("eos_token_id".into(), eos);
    if let Some(pad) = tok.pad_id {
        m.insert("pad_token_id".into(), json!(pad));
    }
    Value::Object(m)
}

/// Writes `model.safetensors` by hand, streaming one tensor at a time.
fn write_safetensors(
    path: &Path,
    bytes: &[u8],
    g: &GgufFile,
    plan: &[Planned],
    dtype: ImportDtype,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let mut header = Map::new();
    let mut meta = Map::new();
    meta.insert("format".into(), json!("pt"));
    header.insert("__metadata__".into(), Value::Object(meta));
    let mut offset = 0u64;
    let mut sizes = Vec::with_capacity(plan.len());
    for t in plan {
        let n: u64 = t.shape.iter().product();
        let size = n
            .checked_mul(dtype.size())
            .ok_or_else(|| fmt_err("tensor size overflows"))?;
        header.insert(
            t.hf_name.clone(),
            json!({
                "dtype": dtype.safetensors_name(),
                "shape": t.shape,
                "data_offsets": [offset, offset + size],
            }),
        );
        sizes.push(size);
        offset += size;
    }
    let total = offset;
    let mut header = serde_json::to_vec(&Value::Object(header)).map_err(|e| fmt_err(e.to_string()))?;
    // Pad with spaces so the data starts 8-byte aligned.
    while header.len() % 8 != 0 {
        header.push(b' ');
    }

    let file = File::create(path).map_err(|e| Error::io("creating", path, e))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let io = |e| Error::io("writing", path, e);
    w.write_all(&(header.len() as u64).to_le_bytes()).map_err(io)?;
    w.write_all(&header).map_err(io)?;
    let mut done = 0u64;
    progress(0, total);
    for (t, &size) in plan.iter().zip(&sizes) {
        let info = &g.tensors()[t.gguf_index];
        let raw = g.tensor_bytes(bytes, info)?;
        let n = usize::try_from(info.n_elements()).map_err(|_| fmt_err("tensor too large"))?;
        let mut values = dequantize(info.ggml_type, raw, n)?;
        if let Permute::Heads(h) = t.permute {
            let row_len = usize::try_from(info.ne0()).map_err(|_| fmt_err("row too long"))?;
            let row_len = if info.dims.len() == 1 { 1 } else { row_len };
            values = unpermute_qk_rows(&values, row_len, h).map_err(|e| match e {
                Error::Tensor { reason, .. } => Error::Tensor {
                    name: info.name.clone(),
                    reason,
                },
                e => e,
            })?;
        }
        let mut out = Vec::with_capacity(size as usize);
        match dtype {
            ImportDtype::F32 => {
                for v in &values {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
            ImportDtype::Bf16 => {
                for v in &values {
                    out.extend_from_slice(&half::bf16::from_f32(*v).to_bits().to_le_bytes());
                }
            }
        }
        debug_assert_eq!(out.len() as u64, size);
        w.write_all(&out).map_err(io)?;
        done += size;
        progress(done, total);
    }
    let file = w
        .into_inner()
        .map_err(|e| Error::io("writing", path, e.into_error()))?;
    file.sync_all().map_err(|e| Error::io("syncing", path, e))?;
    Ok(())
}

/// Imports the llama-architecture GGUF file `gguf` as a Hugging Face model
/// directory at `out_dir` (which must not exist, or be an empty directory).
///
/// `progress(done, total)` is called with bytes of weights written. The
/// directory is built in a temporary sibling and renamed into place at the
/// end; on any error nothing is left at `out_dir`.
pub fn import_gguf(
    gguf: &Path,
    out_dir: &Path,
    dtype: ImportDtype,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    if out_dir.exists() {
        let empty_dir = std::fs::read_dir(out_dir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !empty_dir {
            return Err(Error::io(
                "import: output already exists",
                out_dir,
                std::io::ErrorKind::AlreadyExists.into(),
            ));
        }
    }
    let file = File::open(gguf).map_err(|e| Error::io("opening", gguf, e))?;
    // SAFETY: the map is read-only and private to this function; as with any
    // file mapping, the file must not be truncated or modified while we read
    // it (a model file being imported is not expected to change).
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io("mapping", gguf, e))?;
    let bytes: &[u8] = &mmap;
    let g = GgufFile::parse(bytes)?;
    let params = read_params(&g)?;
    let plan = plan(&g, &params)?;
    let tok = tokenizer_from_gguf(&g)?;

    let parent: PathBuf = match out_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| Error::io("creating", &parent, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".veil-import-")
        .tempdir_in(&parent)
        .map_err(|e| Error::io("creating a temporary directory in", &parent, e))?;
    let dir = tmp.path();

    write_safetensors(&dir.join("model.safetensors"), bytes, &g, &plan, dtype, progress)?;
    json_to_file(&dir.join("config.json"), &config_json(&params, &tok, dtype))?;
    let tok_path = dir.join("tokenizer.json");
    tok.tokenizer
        .save(&tok_path, true)
        .map_err(|e| Error::Tokenizer(format!("saving {}: {e}", tok_path.display())))?;
    json_to_file(
        &dir.join("tokenizer_config.json"),
        &tokenizer_config_json(&g, &params, &tok)?,
    )?;
    json_to_file(&dir.join("generation_config.json"), &generation_config_json(&tok))?;

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| Error::io("setting permissions on", dir, e))?;
    }
    let kept = tmp.keep();
    if let Err(e) = std::fs::rename(&kept, out_dir) {
        let _ = std::fs::remove_dir_all(&kept);
        return Err(Error::io("moving the imported model into place at", out_dir, e));
    }
    tracing::info!(
        gguf = %gguf.display(),
        out = %out_dir.display(),
        arch = %params.arch,
        tensors = plan.len(),
        "imported GGUF"
    );
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::gguf::reader::GgmlType;
    use crate::gguf::reader::GgufValue;
    use crate::gguf::reader::test_writer::{TensorSpec, f32_tensor, write_gguf};
    use crate::gguf::tokenizer::test_vocab;
    use safetensors::SafeTensors;

    #[test]
    fn permutation_matches_formula_and_inverts() {
        let n_heads = 3;
        let d = 8;
        let row_len = 2;
        let rows = n_heads * d;
        let hf: Vec<usize> = (0..rows * row_len).collect();
        let gguf = permute_qk_rows(&hf, row_len, n_heads).expect("permute");
        for h in 0..n_heads {
            for j in 0..d / 2 {
                for t in 0..2 {
                    let g_row = h * d + 2 * j + t;
                    let h_row = h * d + t * (d / 2) + j;
                    assert_eq!(
                        &gguf[g_row * row_len..(g_row + 1) * row_len],
                        &hf[h_row * row_len..(h_row + 1) * row_len]
                    );
                }
            }
        }
        assert_eq!(unpermute_qk_rows(&gguf, row_len, n_heads).ok(), Some(hf.clone()));
        assert_ne!(gguf, hf);
        // Vectors (biases) use row_len 1.
        let bias: Vec<u32> = (0..24).collect();
        let p = permute_qk_rows(&bias, 1, 3).expect("p");
        assert_eq!(unpermute_qk_rows(&p, 1, 3).ok(), Some(bias));
        // Bad shapes.
        assert!(unpermute_qk_rows(&[0u8; 10], 2, 2).is_err());
        assert!(unpermute_qk_rows(&[0u8; 12], 0, 2).is_err());
        assert!(unpermute_qk_rows(&[0u8; 12], 4, 0).is_err());
    }

    /// Hyper-parameters of the tiny synthetic model.
    pub(crate) const HIDDEN: u64 = 32;
    const FFN: u64 = 64;
    const HEADS: u64 = 2;
    const KV_HEADS: u64 = 1;
    const HEAD_DIM: u64 = 16;
    const LAYERS: usize = 2;

    fn det_values(seed: u64, n: usize) -> Vec<f32> {
        // Small deterministic values; exactly representable in f16/bf16 for
        // round trips? Not needed: Q8_0 tests compare dequantized values.
        (0..n)
            .map(|i| {
                let x = (seed.wrapping_mul(31).wrapping_add(i as u64 * 7919)) % 1000;
                (x as f32 - 500.0) / 1000.0
            })
            .collect()
    }

    fn q8_0_tensor(name: &str, dims: &[u64], seed: u64) -> TensorSpec {
        let n: u64 = dims.iter().product();
        let mut data = Vec::new();
        for b in 0..n / 32 {
            data.extend_from_slice(&half::f16::from_f32(0.01).to_bits().to_le_bytes());
            for i in 0..32 {
                data.push(((b * 7 + i + seed) % 255) as u8);
            }
        }
        TensorSpec {
            name: name.into(),
            dims: dims.to_vec(),
            ggml_type: GgmlType::Q8_0,
            data,
        }
    }

    /// A tiny llama GGUF with the test vocabulary (vocab 256 + 3 + 9 = 268,
    /// padded to 288 embedding rows).
    pub(crate) fn tiny_llama_gguf(with_output: bool) -> Vec<u8> {
        let vocab = 288u64;
        let mut kvs: Vec<(&str, GgufValue)> = vec![
            ("general.architecture", GgufValue::String("llama".into())),
            ("general.name", GgufValue::String("tiny".into())),
            ("llama.block_count", GgufValue::U32(LAYERS as u32)),
            ("llama.context_length", GgufValue::U32(256)),
            ("llama.embedding_length", GgufValue::U32(HIDDEN as u32)),
            ("llama.feed_forward_length", GgufValue::U32(FFN as u32)),
            ("llama.attention.head_count", GgufValue::U32(HEADS as u32)),
            ("llama.attention.head_count_kv", GgufValue::U32(KV_HEADS as u32)),
            ("llama.rope.dimension_count", GgufValue::U32(HEAD_DIM as u32)),
            ("llama.rope.freq_base", GgufValue::F32(100_000.0)),
            ("llama.attention.layer_norm_rms_epsilon", GgufValue::F32(1e-5)),
            ("llama.vocab_size", GgufValue::U32(vocab as u32)),
        ];
        kvs.extend(test_vocab::kvs("smollm"));
        let mut t = vec![q8_0_tensor("token_embd.weight", &[HIDDEN, vocab], 1)];
        for i in 0..LAYERS {
            let s = i as u64 * 100;
            let n = |x: &str| format!("blk.{i}.{x}");
            t.push(f32_tensor(
                &n("attn_q.weight"),
                &[HIDDEN, HEADS * HEAD_DIM],
                &det_values(s + 1, (HIDDEN * HEADS * HEAD_DIM) as usize),
            ));
            t.push(f32_tensor(
                &n("attn_k.weight"),
                &[HIDDEN, KV_HEADS * HEAD_DIM],
                &det_values(s + 2, (HIDDEN * KV_HEADS * HEAD_DIM) as usize),
            ));
            t.push(q8_0_tensor(
                &n("attn_v.weight"),
                &[HIDDEN, KV_HEADS * HEAD_DIM],
                s + 3,
            ));
            t.push(q8_0_tensor(
                &n("attn_output.weight"),
                &[HEADS * HEAD_DIM, HIDDEN],
                s + 4,
            ));
            t.push(q8_0_tensor(&n("ffn_gate.weight"), &[HIDDEN, FFN], s + 5));
            t.push(q8_0_tensor(&n("ffn_up.weight"), &[HIDDEN, FFN], s + 6));
            t.push(q8_0_tensor(&n("ffn_down.weight"), &[FFN, HIDDEN], s + 7));
            t.push(f32_tensor(
                &n("attn_norm.weight"),
                &[HIDDEN],
                &det_values(s + 8, HIDDEN as usize),
            ));
            t.push(f32_tensor(
                &n("ffn_norm.weight"),
                &[HIDDEN],
                &det_values(s + 9, HIDDEN as usize),
            ));
        }
        t.push(f32_tensor(
            "output_norm.weight",
            &[HIDDEN],
            &det_values(999, HIDDEN as usize),
        ));
        if with_output {
            t.push(q8_0_tensor("output.weight", &[HIDDEN, vocab], 77));
        }
        write_gguf(&kvs, &t)
    }

    fn read_f32(st: &SafeTensors<'_>, name: &str) -> Vec<f32> {
        let v = st.tensor(name).expect(name);
        assert_eq!(v.dtype(), safetensors::Dtype::F32, "{name}");
        v.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    #[test]
    fn import_tiny_model() {
        let tmp = tempfile::tempdir().expect("tmp");
        let gguf_path = tmp.path().join("tiny.gguf");
        let gguf_bytes = tiny_llama_gguf(false);
        std::fs::write(&gguf_path, &gguf_bytes).expect("write");
        let out = tmp.path().join("models").join("tiny");
        let mut calls = Vec::new();
        import_gguf(&gguf_path, &out, ImportDtype::F32, &mut |d, t| calls.push((d, t))).expect("import");
        assert!(calls.len() > 2);
        let (last_done, total) = calls[calls.len() - 1];
        assert_eq!(last_done, total);
        // No temporary directory left behind.
        let siblings: Vec<_> = std::fs::read_dir(out.parent().expect("parent"))
            .expect("ls")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert_eq!(siblings, vec![std::ffi::OsString::from("tiny")]);

        let st_bytes = std::fs::read(out.join("model.safetensors")).expect("st");
        let st = SafeTensors::deserialize(&st_bytes).expect("deserialize");
        assert_eq!(st.len(), 2 + 9 * LAYERS);
        assert!(st.tensor("lm_head.weight").is_err(), "tied");
        let emb = st.tensor("model.embed_tokens.weight").expect("emb");
        assert_eq!(emb.shape(), &[288, HIDDEN as usize]);
        let q = st.tensor("model.layers.1.self_attn.q_proj.weight").expect("q");
        assert_eq!(q.shape(), &[(HEADS * HEAD_DIM) as usize, HIDDEN as usize]);
        let k = st.tensor("model.layers.0.self_attn.k_proj.weight").expect("k");
        assert_eq!(k.shape(), &[(KV_HEADS * HEAD_DIM) as usize, HIDDEN as usize]);
        let down = st.tensor("model.layers.0.mlp.down_proj.weight").expect("down");
        assert_eq!(down.shape(), &[HIDDEN as usize, FFN as usize]);

        // Q and K rows are un-permuted; everything else is the dequantized data.
        let g = GgufFile::parse(&gguf_bytes).expect("parse");
        let gq = g.tensor("blk.1.attn_q.weight").expect("gq");
        let gq_vals =
            dequantize(gq.ggml_type, g.tensor_bytes(&gguf_bytes, gq).expect("b"), 1024).expect("dq");
        let hq = read_f32(&st, "model.layers.1.self_attn.q_proj.weight");
        assert_eq!(
            permute_qk_rows(&hq, HIDDEN as usize, HEADS as usize).ok(),
            Some(gq_vals)
        );
        let gk = g.tensor("blk.0.attn_k.weight").expect("gk");
        let gk_vals = dequantize(gk.ggml_type, g.tensor_bytes(&gguf_bytes, gk).expect("b"), 512).expect("dq");
        let hk = read_f32(&st, "model.layers.0.self_attn.k_proj.weight");
        assert_eq!(
            permute_qk_rows(&hk, HIDDEN as usize, KV_HEADS as usize).ok(),
            Some(gk_vals)
        );
        let gv = g.tensor("blk.0.attn_v.weight").expect("gv");
        let gv_vals = dequantize(gv.ggml_type, g.tensor_bytes(&gguf_bytes, gv).expect("b"), 512).expect("dq");
        assert_eq!(read_f32(&st, "model.layers.0.self_attn.v_proj.weight"), gv_vals);
        assert_eq!(
            read_f32(&st, "model.norm.weight"),
            det_values(999, HIDDEN as usize)
        );

        // config.json
        let cfg: Value =
            serde_json::from_slice(&std::fs::read(out.join("config.json")).expect("cfg")).expect("json");
        assert_eq!(cfg["architectures"], json!(["LlamaForCausalLM"]));
        assert_eq!(cfg["model_type"], "llama");
        assert_eq!(cfg["hidden_size"], HIDDEN);
        assert_eq!(cfg["intermediate_size"], FFN);
        assert_eq!(cfg["num_hidden_layers"], LAYERS);
        assert_eq!(cfg["num_attention_heads"], HEADS);
        assert_eq!(cfg["num_key_value_heads"], KV_HEADS);
        assert_eq!(cfg["head_dim"], HEAD_DIM);
        assert_eq!(cfg["rms_norm_eps"], json!(1e-5));
        assert_eq!(cfg["rope_theta"], json!(100000.0));
        assert_eq!(cfg["max_position_embeddings"], 256);
        assert_eq!(cfg["vocab_size"], 288);
        assert_eq!(cfg["tie_word_embeddings"], true);
        assert_eq!(cfg["bos_token_id"], 1);
        assert_eq!(cfg["eos_token_id"], 2);
        assert_eq!(cfg["torch_dtype"], "float32");
        assert_eq!(cfg["rope_scaling"], Value::Null);

        // tokenizer.json loads and tokenizes with digit splitting.
        let tok = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).expect("tokenizer");
        let enc = tok.encode("<|im_start|>hello world 12", false).expect("encode");
        let ids = enc.get_ids();
        assert_eq!(ids[0], 1);
        assert_eq!(ids.len(), 1 + 2 + 1 + 2, "{ids:?}"); // im_start, hello, Ġworld, Ġ, 1, 2

        let tc: Value =
            serde_json::from_slice(&std::fs::read(out.join("tokenizer_config.json")).expect("tc"))
                .expect("json");
        assert_eq!(tc["bos_token"], "<|im_start|>");
        assert_eq!(tc["eos_token"], "<|im_end|>");
        assert_eq!(tc["pad_token"], "<|im_end|>");
        assert_eq!(tc["add_bos_token"], false);
        assert!(
            tc["chat_template"]
                .as_str()
                .is_some_and(|s| s.contains("im_start"))
        );
        let gc: Value =
            serde_json::from_slice(&std::fs::read(out.join("generation_config.json")).expect("gc"))
                .expect("json");
        assert_eq!(gc["bos_token_id"], 1);
        assert_eq!(gc["eos_token_id"], 2);

        // A second import into the same place is refused and changes nothing.
        let e = import_gguf(&gguf_path, &out, ImportDtype::F32, &mut |_, _| {}).expect_err("exists");
        assert!(e.to_string().contains("already exists"), "{e}");
    }

    #[test]
    fn import_bf16_with_lm_head() {
        let tmp = tempfile::tempdir().expect("tmp");
        let gguf_path = tmp.path().join("tiny.gguf");
        std::fs::write(&gguf_path, tiny_llama_gguf(true)).expect("write");
        let out = tmp.path().join("out");
        import_gguf(&gguf_path, &out, ImportDtype::default(), &mut |_, _| {}).expect("import");
        let st_bytes = std::fs::read(out.join("model.safetensors")).expect("st");
        let st = SafeTensors::deserialize(&st_bytes).expect("deserialize");
        let lm = st.tensor("lm_head.weight").expect("lm_head");
        assert_eq!(lm.dtype(), safetensors::Dtype::BF16);
        assert_eq!(lm.shape(), &[288, HIDDEN as usize]);
        let norm = st.tensor("model.norm.weight").expect("norm");
        assert_eq!(norm.dtype(), safetensors::Dtype::BF16);
        let want: Vec<u8> = det_values(999, HIDDEN as usize)
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_bits().to_le_bytes())
            .collect();
        assert_eq!(norm.data(), &want[..]);
        let cfg: Value =
            serde_json::from_slice(&std::fs::read(out.join("config.json")).expect("cfg")).expect("json");
        assert_eq!(cfg["tie_word_embeddings"], false);
        assert_eq!(cfg["torch_dtype"], "bfloat16");
    }

    #[test]
    fn failed_import_leaves_nothing() {
        let tmp = tempfile::tempdir().expect("tmp");
        let gguf_path = tmp.path().join("tiny.gguf");
        let mut bytes = tiny_llama_gguf(false);
        bytes.truncate(bytes.len() - 1);
        std::fs::write(&gguf_path, &bytes).expect("write");
        let out_parent = tmp.path().join("o");
        let out = out_parent.join("model");
        assert!(import_gguf(&gguf_path, &out, ImportDtype::F32, &mut |_, _| {}).is_err());
        assert!(!out.exists());
        // An unsupported pre-tokenizer fails after planning; still nothing left.
        let mut good = tiny_llama_gguf(false);
        let needle = b"smollm";
        let pos = good.windows(needle.len()).position(|w| w == needle).expect("pre");
        good[pos..pos + 6].copy_from_slice(b"zzzzzz");
        std::fs::write(&gguf_path, &good).expect("write");
        let e = import_gguf(&gguf_path, &out, ImportDtype::F32, &mut |_, _| {}).expect_err("pre");
        assert!(matches!(e, Error::Unsupported { .. }), "{e}");
        assert!(!out.exists());
        if out_parent.exists() {
            assert_eq!(std::fs::read_dir(&out_parent).expect("ls").count(), 0);
        }
    }
}
