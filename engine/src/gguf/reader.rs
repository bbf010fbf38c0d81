//! A bounds-checked GGUF (v2/v3) reader over a byte slice.
//!
//! The reader never trusts a length, count, offset or dimension from the file:
//! every one is checked with checked arithmetic against the bytes that remain
//! *before* anything is allocated, so a corrupt or hostile file yields an
//! [`Error::Format`] (or [`Error::Unsupported`] for a well-formed feature we do
//! not implement) and never a panic or a huge allocation.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;

use crate::error::{Error, Result};

const FORMAT: &str = "GGUF";

/// The four magic bytes at the start of every GGUF file.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";

/// Alignment of the data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// Deepest nesting of arrays inside arrays that the reader accepts.
pub const MAX_ARRAY_DEPTH: usize = 4;

/// Most dimensions a tensor may have (GGML_MAX_DIMS).
pub const MAX_DIMS: usize = 4;

/// Longest tensor name accepted (GGML_MAX_NAME is 64 including the NUL; we are lenient).
pub const MAX_TENSOR_NAME: usize = 256;

/// The value type tag of a metadata value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgufValueType {
    /// `u8` (tag 0).
    U8,
    /// `i8` (tag 1).
    I8,
    /// `u16` (tag 2).
    U16,
    /// `i16` (tag 3).
    I16,
    /// `u32` (tag 4).
    U32,
    /// `i32` (tag 5).
    I32,
    /// `f32` (tag 6).
    F32,
    /// `bool`, one byte 0/1 (tag 7).
    Bool,
    /// Length-prefixed UTF-8 string (tag 8).
    String,
    /// Typed array (tag 9).
    Array,
    /// `u64` (tag 10).
    U64,
    /// `i64` (tag 11).
    I64,
    /// `f64` (tag 12).
    F64,
}

impl GgufValueType {
    /// Parses a type tag.
    pub fn from_u32(tag: u32) -> Option<Self> {
        Some(match tag {
            0 => Self::U8,
            1 => Self::I8,
            2 => Self::U16,
            3 => Self::I16,
            4 => Self::U32,
            5 => Self::I32,
            6 => Self::F32,
            7 => Self::Bool,
            8 => Self::String,
            9 => Self::Array,
            10 => Self::U64,
            11 => Self::I64,
            12 => Self::F64,
            _ => return None,
        })
    }

    /// The on-disk type tag.
    pub fn tag(self) -> u32 {
        match self {
            Self::U8 => 0,
            Self::I8 => 1,
            Self::U16 => 2,
            Self::I16 => 3,
            Self::U32 => 4,
            Self::I32 => 5,
            Self::F32 => 6,
            Self::Bool => 7,
            Self::String => 8,
            Self::Array => 9,
            Self::U64 => 10,
            Self::I64 => 11,
            Self::F64 => 12,
        }
    }

    /// The smallest number of bytes one value of this type occupies on disk
    /// (a string is at least its 8-byte length, an array its 4-byte type and
    /// 8-byte count). Used to bound element counts before allocating.
    fn min_size(self) -> u64 {
        match self {
            Self::U8 | Self::I8 | Self::Bool => 1,
            Self::U16 | Self::I16 => 2,
            Self::U32 | Self::I32 | Self::F32 => 4,
            Self::U64 | Self::I64 | Self::F64 | Self::String => 8,
            Self::Array => 12,
        }
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// `u8`.
    U8(u8),
    /// `i8`.
    I8(i8),
    /// `u16`.
    U16(u16),
    /// `i16`.
    I16(i16),
    /// `u32`.
    U32(u32),
    /// `i32`.
    I32(i32),
    /// `f32`.
    F32(f32),
    /// `bool`.
    Bool(bool),
    /// UTF-8 string.
    String(String),
    /// Array of values that all have type `elem_type`.
    Array {
        /// The element type (kept so that empty arrays still have one).
        elem_type: GgufValueType,
        /// The elements.
        items: Vec<GgufValue>,
    },
    /// `u64`.
    U64(u64),
    /// `i64`.
    I64(i64),
    /// `f64`.
    F64(f64),
}

impl GgufValue {
    /// The value's type tag.
    pub fn value_type(&self) -> GgufValueType {
        match self {
            Self::U8(_) => GgufValueType::U8,
            Self::I8(_) => GgufValueType::I8,
            Self::U16(_) => GgufValueType::U16,
            Self::I16(_) => GgufValueType::I16,
            Self::U32(_) => GgufValueType::U32,
            Self::I32(_) => GgufValueType::I32,
            Self::F32(_) => GgufValueType::F32,
            Self::Bool(_) => GgufValueType::Bool,
            Self::String(_) => GgufValueType::String,
            Self::Array { .. } => GgufValueType::Array,
            Self::U64(_) => GgufValueType::U64,
            Self::I64(_) => GgufValueType::I64,
            Self::F64(_) => GgufValueType::F64,
        }
    }

    /// The value as a signed 128-bit integer, if it is an integer of any width.
    pub fn as_integer(&self) -> Option<i128> {
        Some(match *self {
            Self::U8(v) => v.into(),
            Self::I8(v) => v.into(),
            Self::U16(v) => v.into(),
            Self::I16(v) => v.into(),
            Self::U32(v) => v.into(),
            Self::I32(v) => v.into(),
            Self::U64(v) => v.into(),
            Self::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// The value as a float, if it is `f32` or `f64` (an `f64` is narrowed).
    pub fn as_float(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => None,
        }
    }

    /// The string, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The bool, if this is a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The elements, if this is an array.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            Self::Array { items, .. } => Some(items),
            _ => None,
        }
    }
}

/// A ggml tensor element type, with its block geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types, missing_docs)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
}

impl GgmlType {
    /// Parses a ggml type id; `None` for ids unknown (or removed from ggml).
    pub fn from_u32(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            9 => Self::Q8_1,
            10 => Self::Q2_K,
            11 => Self::Q3_K,
            12 => Self::Q4_K,
            13 => Self::Q5_K,
            14 => Self::Q6_K,
            15 => Self::Q8_K,
            16 => Self::IQ2_XXS,
            17 => Self::IQ2_XS,
            18 => Self::IQ3_XXS,
            19 => Self::IQ1_S,
            20 => Self::IQ4_NL,
            21 => Self::IQ3_S,
            22 => Self::IQ2_S,
            23 => Self::IQ4_XS,
            24 => Self::I8,
            25 => Self::I16,
            26 => Self::I32,
            27 => Self::I64,
            28 => Self::F64,
            29 => Self::IQ1_M,
            30 => Self::BF16,
            34 => Self::TQ1_0,
            35 => Self::TQ2_0,
            39 => Self::MXFP4,
            _ => return None,
        })
    }

    /// The ggml type id.
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q8_1 => 9,
            Self::Q2_K => 10,
            Self::Q3_K => 11,
            Self::Q4_K => 12,
            Self::Q5_K => 13,
            Self::Q6_K => 14,
            Self::Q8_K => 15,
            Self::IQ2_XXS => 16,
            Self::IQ2_XS => 17,
            Self::IQ3_XXS => 18,
            Self::IQ1_S => 19,
            Self::IQ4_NL => 20,
            Self::IQ3_S => 21,
            Self::IQ2_S => 22,
            Self::IQ4_XS => 23,
            Self::I8 => 24,
            Self::I16 => 25,
            Self::I32 => 26,
            Self::I64 => 27,
            Self::F64 => 28,
            Self::IQ1_M => 29,
            Self::BF16 => 30,
            Self::TQ1_0 => 34,
            Self::TQ2_0 => 35,
            Self::MXFP4 => 39,
        }
    }

    /// Elements per block (1 for plain types).
    pub fn block_size(self) -> u64 {
        match self {
            Self::F32 | Self::F16 | Self::BF16 | Self::I8 | Self::I16 | Self::I32 | Self::I64 | Self::F64 => {
                1
            }
            Self::Q4_0
            | Self::Q4_1
            | Self::Q5_0
            | Self::Q5_1
            | Self::Q8_0
            | Self::Q8_1
            | Self::IQ4_NL
            | Self::MXFP4 => 32,
            Self::Q2_K
            | Self::Q3_K
            | Self::Q4_K
            | Self::Q5_K
            | Self::Q6_K
            | Self::Q8_K
            | Self::IQ2_XXS
            | Self::IQ2_XS
            | Self::IQ3_XXS
            | Self::IQ1_S
            | Self::IQ3_S
            | Self::IQ2_S
            | Self::IQ4_XS
            | Self::IQ1_M
            | Self::TQ1_0
            | Self::TQ2_0 => 256,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> u64 {
        match self {
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::I8 => 1,
            Self::I64 | Self::F64 => 8,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q8_0 => 34,
            Self::Q8_1 => 36,
            Self::Q2_K => 84,
            Self::Q3_K => 110,
            Self::Q4_K => 144,
            Self::Q5_K => 176,
            Self::Q6_K => 210,
            Self::Q8_K => 292,
            Self::IQ2_XXS => 66,
            Self::IQ2_XS => 74,
            Self::IQ3_XXS => 98,
            Self::IQ1_S => 50,
            Self::IQ4_NL => 18,
            Self::IQ3_S => 110,
            Self::IQ2_S => 82,
            Self::IQ4_XS => 136,
            Self::IQ1_M => 56,
            Self::TQ1_0 => 54,
            Self::TQ2_0 => 66,
            Self::MXFP4 => 17,
        }
    }

    /// The byte size of a row of `ne0` elements, or `None` if `ne0` is not a
    /// multiple of the block size or the size overflows.
    pub fn row_size(self, ne0: u64) -> Option<u64> {
        if !ne0.is_multiple_of(self.block_size()) {
            return None;
        }
        (ne0 / self.block_size()).checked_mul(self.type_size())
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One tensor's header entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensorInfo {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions, **`ne0` (the fastest-varying, contiguous one) first**.
    pub dims: Vec<u64>,
    /// Element type.
    pub ggml_type: GgmlType,
    /// Absolute byte range of the tensor's data in the file.
    pub data: Range<usize>,
}

impl GgufTensorInfo {
    /// Number of elements (product of the dims; checked at parse time).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// `ne0`, the row length (1 for a zero-dimensional tensor).
    pub fn ne0(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Number of rows: the product of every dim after `ne0`.
    pub fn n_rows(&self) -> u64 {
        self.dims.iter().skip(1).product()
    }

    /// Byte length of the tensor's data.
    pub fn n_bytes(&self) -> usize {
        self.data.len()
    }
}

/// A parsed GGUF header: metadata and tensor directory. Holds no tensor data;
/// use [`GgufFile::tensor_bytes`] with the same byte slice to get it.
#[derive(Debug, Clone)]
pub struct GgufFile {
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata in file order.
    metadata: Vec<(String, GgufValue)>,
    /// Key -> index into `metadata`.
    metadata_index: HashMap<String, usize>,
    /// Tensor directory in file order.
    tensors: Vec<GgufTensorInfo>,
    /// Name -> index into `tensors`.
    tensor_index: HashMap<String, usize>,
    /// Alignment of the data section.
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: usize,
    /// Length of the file this header was parsed from.
    pub file_len: usize,
}

fn err(reason: impl Into<String>) -> Error {
    Error::format(FORMAT, reason)
}

/// A cursor over the file bytes; every read is bounds-checked.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let n_usize = usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.remaining())
            .ok_or_else(|| {
                err(format!(
                    "truncated file: {what} needs {n} bytes at offset {} but only {} remain",
                    self.pos,
                    self.remaining()
                ))
            })?;
        let s = &self.bytes[self.pos..self.pos + n_usize];
        self.pos += n_usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count of items each at least `min_size` bytes long: rejected unless
    /// that many items could possibly fit in the remaining bytes.
    fn count(&mut self, min_size: u64, what: &str) -> Result<usize> {
        let at = self.pos;
        let n = self.u64(what)?;
        let needed = n.checked_mul(min_size);
        match needed {
            Some(needed) if needed <= self.remaining() as u64 => {
                usize::try_from(n).map_err(|_| err(format!("{what} {n} at offset {at} too large")))
            }
            _ => Err(err(format!(
                "{what} {n} at offset {at} cannot fit in the {} bytes that remain",
                self.remaining()
            ))),
        }
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let at = self.pos;
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| err(format!("{what} at offset {at} is not valid UTF-8")))
    }

    fn value(&mut self, ty: GgufValueType, depth: usize, what: &str) -> Result<GgufValue> {
        Ok(match ty {
            GgufValueType::U8 => GgufValue::U8(self.u8(what)?),
            GgufValueType::I8 => GgufValue::I8(self.u8(what)? as i8),
            GgufValueType::U16 => GgufValue::U16(self.u16(what)?),
            GgufValueType::I16 => GgufValue::I16(self.u16(what)? as i16),
            GgufValueType::U32 => GgufValue::U32(self.u32(what)?),
            GgufValueType::I32 => GgufValue::I32(self.u32(what)? as i32),
            GgufValueType::F32 => GgufValue::F32(f32::from_bits(self.u32(what)?)),
            GgufValueType::U64 => GgufValue::U64(self.u64(what)?),
            GgufValueType::I64 => GgufValue::I64(self.u64(what)? as i64),
            GgufValueType::F64 => GgufValue::F64(f64::from_bits(self.u64(what)?)),
            GgufValueType::Bool => {
                let at = self.pos;
                match self.u8(what)? {
                    0 => GgufValue::Bool(false),
                    1 => GgufValue::Bool(true),
                    b => return Err(err(format!("{what}: bool byte {b} at offset {at}"))),
                }
            }
            GgufValueType::String => GgufValue::String(self.string(what)?),
            GgufValueType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(err(format!(
                        "{what}: arrays nested deeper than {MAX_ARRAY_DEPTH} at offset {}",
                        self.pos
                    )));
                }
                let at = self.pos;
                let tag = self.u32(what)?;
                let elem_type = GgufValueType::from_u32(tag)
                    .ok_or_else(|| err(format!("{what}: unknown array element type {tag} at offset {at}")))?;
                let n = self.count(elem_type.min_size(), what)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem_type, depth + 1, what)?);
                }
                GgufValue::Array { elem_type, items }
            }
        })
    }
}

fn align_up(x: u64, alignment: u64) -> Option<u64> {
    // alignment is a nonzero power of two.
    x.checked_add(alignment - 1).map(|v| v & !(alignment - 1))
}

impl GgufFile {
    /// Parses the header of a GGUF file held entirely in `bytes` (typically a
    /// memory map) and checks that every tensor's data lies inside the file.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let mut c = Cursor { bytes, pos: 0 };
        let magic = c.array::<4>("magic")?;
        if magic != GGUF_MAGIC {
            return Err(err(format!(
                "bad magic {magic:02x?}, expected \"GGUF\" (47 47 55 46)"
            )));
        }
        let version = c.u32("version")?;
        match version {
            2 | 3 => {}
            1 => {
                return Err(Error::Unsupported {
                    what: "GGUF version",
                    name: "1 (re-convert the model with a current llama.cpp)".into(),
                });
            }
            v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
                return Err(Error::Unsupported {
                    what: "GGUF byte order",
                    name: "big-endian".into(),
                });
            }
            v => {
                return Err(Error::Unsupported {
                    what: "GGUF version",
                    name: v.to_string(),
                });
            }
        }
        // A tensor info is at least: name len 8 + n_dims 4 + type 4 + offset 8.
        let n_tensors = c.count(24, "tensor count")?;
        // A key-value is at least: key len 8 + type 4 + one byte of value.
        let n_kv = c.count(13, "metadata count")?;

        let mut metadata = Vec::with_capacity(n_kv);
        let mut metadata_index = HashMap::with_capacity(n_kv);
        for i in 0..n_kv {
            let key = c.string("metadata key")?;
            let at = c.pos;
            let tag = c.u32("metadata value type")?;
            let ty = GgufValueType::from_u32(tag).ok_or_else(|| {
                err(format!(
                    "metadata {key:?}: unknown value type {tag} at offset {at}"
                ))
            })?;
            let value = c.value(ty, 0, &format!("metadata {key:?}"))?;
            if metadata_index.insert(key.clone(), i).is_some() {
                return Err(err(format!("duplicate metadata key {key:?}")));
            }
            metadata.push((key, value));
        }

        let alignment = match metadata_index.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(&i) => {
                let v = &metadata[i].1;
                let a = v
                    .as_integer()
                    .and_then(|a| u64::try_from(a).ok())
                    .ok_or_else(|| err(format!("general.alignment is not an integer: {v:?}")))?;
                if a == 0 || !a.is_power_of_two() {
                    return Err(err(format!(
                        "general.alignment {a} is not a nonzero power of two"
                    )));
                }
                a
            }
        };

        struct Raw {
            name: String,
            dims: Vec<u64>,
            ggml_type: GgmlType,
            offset: u64,
            size: u64,
        }
        let mut raws = Vec::with_capacity(n_tensors);
        let mut tensor_index = HashMap::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let at = c.pos;
            let name_len = c.u64("tensor name length")?;
            if name_len > MAX_TENSOR_NAME as u64 {
                return Err(err(format!(
                    "tensor #{i} name length {name_len} at offset {at} exceeds {MAX_TENSOR_NAME}"
                )));
            }
            let name_bytes = c.take(name_len, "tensor name")?;
            let name = String::from_utf8(name_bytes.to_vec())
                .map_err(|_| err(format!("tensor #{i} name at offset {at} is not UTF-8")))?;
            let n_dims = c.u32("tensor n_dims")?;
            if n_dims as usize > MAX_DIMS {
                return Err(err(format!(
                    "tensor {name:?} has {n_dims} dims (at most {MAX_DIMS})"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            let mut n_elements: u64 = 1;
            for _ in 0..n_dims {
                let d = c.u64("tensor dim")?;
                // ggml stores dims as int64; anything beyond is corrupt.
                if d > i64::MAX as u64 {
                    return Err(err(format!("tensor {name:?} has dim {d} (negative as int64)")));
                }
                n_elements = n_elements.checked_mul(d).ok_or_else(|| {
                    err(format!(
                        "tensor {name:?}: element count overflows ({dims:?} x {d})"
                    ))
                })?;
                dims.push(d);
            }
            let type_at = c.pos;
            let type_id = c.u32("tensor type")?;
            let ggml_type = GgmlType::from_u32(type_id).ok_or_else(|| Error::Unsupported {
                what: "GGUF tensor type",
                name: format!("id {type_id} (tensor {name:?}, offset {type_at})"),
            })?;
            let offset = c.u64("tensor offset")?;
            if offset % alignment != 0 {
                return Err(err(format!(
                    "tensor {name:?}: data offset {offset} is not a multiple of the alignment {alignment}"
                )));
            }
            let ne0 = dims.first().copied().unwrap_or(1);
            let row = ggml_type.row_size(ne0).ok_or_else(|| {
                err(format!(
                    "tensor {name:?}: ne0 {ne0} is not a multiple of the {ggml_type} block size {}",
                    ggml_type.block_size()
                ))
            })?;
            let n_rows: u64 = n_elements.checked_div(ne0).unwrap_or(0);
            let size = row
                .checked_mul(n_rows)
                .ok_or_else(|| err(format!("tensor {name:?}: byte size overflows ({dims:?})")))?;
            if tensor_index.insert(name.clone(), i).is_some() {
                return Err(err(format!("duplicate tensor name {name:?}")));
            }
            raws.push(Raw {
                name,
                dims,
                ggml_type,
                offset,
                size,
            });
        }

        let header_end = c.pos as u64;
        let data_offset =
            align_up(header_end, alignment).ok_or_else(|| err("data section offset overflows"))?;
        let file_len = bytes.len() as u64;
        if n_tensors > 0 && data_offset > file_len {
            return Err(err(format!(
                "truncated file: data section starts at {data_offset} but the file has {file_len} bytes"
            )));
        }
        let data_len = file_len.saturating_sub(data_offset);
        let mut tensors = Vec::with_capacity(raws.len());
        for r in raws {
            let end = r
                .offset
                .checked_add(r.size)
                .filter(|&e| e <= data_len)
                .ok_or_else(|| {
                    err(format!(
                        "tensor {:?}: data [{}, +{}) lies outside the {data_len}-byte data section",
                        r.name, r.offset, r.size
                    ))
                })?;
            // Both fit in the file length, which is a usize.
            let start = (data_offset + r.offset) as usize;
            let end = (data_offset + end) as usize;
            tensors.push(GgufTensorInfo {
                name: r.name,
                dims: r.dims,
                ggml_type: r.ggml_type,
                data: start..end,
            });
        }

        Ok(Self {
            version,
            metadata,
            metadata_index,
            tensors,
            tensor_index,
            alignment,
            data_offset: data_offset.min(file_len) as usize,
            file_len: bytes.len(),
        })
    }

    /// All metadata, in file order.
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }

    /// All tensor infos, in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    /// A tensor's info by name.
    pub fn tensor(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The data of `info` inside `bytes`, which must be the same bytes the
    /// header was parsed from (checked by length).
    pub fn tensor_bytes<'a>(&self, bytes: &'a [u8], info: &GgufTensorInfo) -> Result<&'a [u8]> {
        if bytes.len() != self.file_len {
            return Err(err(format!(
                "tensor_bytes called with a {}-byte buffer, but the header was parsed from {} bytes",
                bytes.len(),
                self.file_len
            )));
        }
        bytes
            .get(info.data.clone())
            .ok_or_else(|| err(format!("tensor {:?}: data range out of bounds", info.name)))
    }

    /// A raw metadata value.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata_index.get(key).map(|&i| &self.metadata[i].1)
    }

    fn require(&self, key: &str) -> Result<&GgufValue> {
        self.get(key)
            .ok_or_else(|| err(format!("missing metadata key {key:?}")))
    }

    fn wrong_type(key: &str, want: &str, v: &GgufValue) -> Error {
        err(format!(
            "metadata {key:?} should be {want}, found {:?}",
            v.value_type()
        ))
    }

    fn int_as<T: TryFrom<i128>>(key: &str, want: &str, v: &GgufValue) -> Result<T> {
        v.as_integer()
            .ok_or_else(|| Self::wrong_type(key, want, v))?
            .try_into()
            .map_err(|_| err(format!("metadata {key:?} value {v:?} does not fit in {want}")))
    }

    /// An integer value of any width that fits in `u32`; missing is an error.
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        Self::int_as(key, "u32", self.require(key)?)
    }

    /// Like [`get_u32`](Self::get_u32) but `Ok(None)` when the key is absent.
    pub fn get_u32_opt(&self, key: &str) -> Result<Option<u32>> {
        self.get(key).map(|v| Self::int_as(key, "u32", v)).transpose()
    }

    /// An integer value of any width that fits in `u64`; missing is an error.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        Self::int_as(key, "u64", self.require(key)?)
    }

    /// Like [`get_u64`](Self::get_u64) but `Ok(None)` when the key is absent.
    pub fn get_u64_opt(&self, key: &str) -> Result<Option<u64>> {
        self.get(key).map(|v| Self::int_as(key, "u64", v)).transpose()
    }

    /// An integer value of any width that fits in `i32`; missing is an error.
    pub fn get_i32(&self, key: &str) -> Result<i32> {
        Self::int_as(key, "i32", self.require(key)?)
    }

    /// Like [`get_i32`](Self::get_i32) but `Ok(None)` when the key is absent.
    pub fn get_i32_opt(&self, key: &str) -> Result<Option<i32>> {
        self.get(key).map(|v| Self::int_as(key, "i32", v)).transpose()
    }

    /// An `f32` (or `f64`, narrowed) value; missing is an error.
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        let v = self.require(key)?;
        v.as_float()
            .map(|f| f as f32)
            .ok_or_else(|| Self::wrong_type(key, "f32", v))
    }

    /// Like [`get_f32`](Self::get_f32) but `Ok(None)` when the key is absent.
    pub fn get_f32_opt(&self, key: &str) -> Result<Option<f32>> {
        if self.get(key).is_none() {
            return Ok(None);
        }
        self.get_f32(key).map(Some)
    }

    /// A bool value; missing is an error.
    pub fn get_bool(&self, key: &str) -> Result<bool> {
        let v = self.require(key)?;
        v.as_bool().ok_or_else(|| Self::wrong_type(key, "bool", v))
    }

    /// Like [`get_bool`](Self::get_bool) but `Ok(None)` when the key is absent.
    pub fn get_bool_opt(&self, key: &str) -> Result<Option<bool>> {
        if self.get(key).is_none() {
            return Ok(None);
        }
        self.get_bool(key).map(Some)
    }

    /// A string value; missing is an error.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| Self::wrong_type(key, "a string", v))
    }

    /// Like [`get_str`](Self::get_str) but `Ok(None)` when the key is absent.
    pub fn get_str_opt(&self, key: &str) -> Result<Option<&str>> {
        if self.get(key).is_none() {
            return Ok(None);
        }
        self.get_str(key).map(Some)
    }

    fn get_array(&self, key: &str, want: &str) -> Result<&[GgufValue]> {
        let v = self.require(key)?;
        v.as_array().ok_or_else(|| Self::wrong_type(key, want, v))
    }

    /// An array of strings; missing is an error.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        self.get_array(key, "an array of strings")?
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| Self::wrong_type(key, "an array of strings", v))
            })
            .collect()
    }

    /// An array of integers (any width) that fit in `i32`; missing is an error.
    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>> {
        self.get_array(key, "an array of integers")?
            .iter()
            .map(|v| Self::int_as(key, "i32", v))
            .collect()
    }

    /// An array of integers (any width) that fit in `u32`; missing is an error.
    pub fn get_u32_array(&self, key: &str) -> Result<Vec<u32>> {
        self.get_array(key, "an array of integers")?
            .iter()
            .map(|v| Self::int_as(key, "u32", v))
            .collect()
    }

    /// An array of floats (`f32`/`f64`); missing is an error.
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>> {
        self.get_array(key, "an array of floats")?
            .iter()
            .map(|v| {
                v.as_float()
                    .map(|f| f as f32)
                    .ok_or_else(|| Self::wrong_type(key, "an array of floats", v))
            })
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod test_writer {
    //! A tiny GGUF writer for building test files.

    use super::{GgmlType, GgufValue};

    /// A tensor to write: name, dims (ne0 first), type and raw data.
    pub(crate) struct TensorSpec {
        pub(crate) name: String,
        pub(crate) dims: Vec<u64>,
        pub(crate) ggml_type: GgmlType,
        pub(crate) data: Vec<u8>,
    }

    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    fn put_value(out: &mut Vec<u8>, v: &GgufValue) {
        match v {
            GgufValue::U8(x) => out.push(*x),
            GgufValue::I8(x) => out.push(*x as u8),
            GgufValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
            GgufValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
            GgufValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
            GgufValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
            GgufValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
            GgufValue::Bool(x) => out.push(u8::from(*x)),
            GgufValue::String(s) => put_str(out, s),
            GgufValue::Array { elem_type, items } => {
                out.extend_from_slice(&elem_type.tag().to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for it in items {
                    put_value(out, it);
                }
            }
            GgufValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
            GgufValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
            GgufValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        }
    }

    /// Serializes a GGUF v3 file with the given alignment (32 if `None` and
    /// no `general.alignment` key is given).
    pub(crate) fn write_gguf(kvs: &[(&str, GgufValue)], tensors: &[TensorSpec]) -> Vec<u8> {
        let alignment = kvs
            .iter()
            .find(|(k, _)| *k == "general.alignment")
            .and_then(|(_, v)| v.as_integer())
            .map_or(32u64, |a| a as u64);
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
        for (k, v) in kvs {
            put_str(&mut out, k);
            out.extend_from_slice(&v.value_type().tag().to_le_bytes());
            put_value(&mut out, v);
        }
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for t in tensors {
            put_str(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ggml_type.id().to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offsets.push(offset);
            offset += (t.data.len() as u64).div_ceil(alignment) * alignment;
        }
        while !(out.len() as u64).is_multiple_of(alignment) {
            out.push(0);
        }
        let base = out.len();
        for (t, off) in tensors.iter().zip(offsets) {
            out.resize(base + off as usize, 0);
            out.extend_from_slice(&t.data);
        }
        out
    }

    /// F32 tensor spec from values.
    pub(crate) fn f32_tensor(name: &str, dims: &[u64], values: &[f32]) -> TensorSpec {
        TensorSpec {
            name: name.to_string(),
            dims: dims.to_vec(),
            ggml_type: GgmlType::F32,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// String array value.
    pub(crate) fn str_array(items: &[&str]) -> GgufValue {
        GgufValue::Array {
            elem_type: super::GgufValueType::String,
            items: items.iter().map(|s| GgufValue::String(s.to_string())).collect(),
        }
    }

    /// i32 array value.
    pub(crate) fn i32_array(items: &[i32]) -> GgufValue {
        GgufValue::Array {
            elem_type: super::GgufValueType::I32,
            items: items.iter().map(|&i| GgufValue::I32(i)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_writer::*;
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Vec<u8> {
        let kvs = vec![
            ("general.architecture", GgufValue::String("llama".into())),
            ("test.u8", GgufValue::U8(7)),
            ("test.i8", GgufValue::I8(-7)),
            ("test.u16", GgufValue::U16(65535)),
            ("test.i16", GgufValue::I16(-300)),
            ("test.u32", GgufValue::U32(123_456)),
            ("test.i32", GgufValue::I32(-5)),
            ("test.f32", GgufValue::F32(1.5)),
            ("test.bool", GgufValue::Bool(true)),
            ("test.u64", GgufValue::U64(1 << 40)),
            ("test.i64", GgufValue::I64(-(1 << 40))),
            ("test.f64", GgufValue::F64(0.25)),
            ("test.strs", str_array(&["a", "bc", ""])),
            ("test.ints", i32_array(&[1, -2, 3])),
            (
                "test.nested",
                GgufValue::Array {
                    elem_type: GgufValueType::Array,
                    items: vec![i32_array(&[4]), i32_array(&[])],
                },
            ),
        ];
        let tensors = vec![
            f32_tensor("a", &[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
            f32_tensor("b", &[5], &[9.0; 5]),
        ];
        write_gguf(&kvs, &tensors)
    }

    #[test]
    fn round_trip() {
        let bytes = sample();
        let g = GgufFile::parse(&bytes).expect("parse");
        assert_eq!(g.version, 3);
        assert_eq!(g.alignment, 32);
        assert_eq!(g.get_str("general.architecture").ok(), Some("llama"));
        assert_eq!(g.get_u32("test.u8").ok(), Some(7));
        assert_eq!(g.get_i32("test.i8").ok(), Some(-7));
        assert_eq!(g.get_u32("test.u16").ok(), Some(65535));
        assert_eq!(g.get_i32("test.i16").ok(), Some(-300));
        assert_eq!(g.get_u32("test.u32").ok(), Some(123_456));
        assert!(g.get_u32("test.i32").is_err(), "negative into u32");
        assert_eq!(g.get_f32("test.f32").ok(), Some(1.5));
        assert_eq!(g.get_bool("test.bool").ok(), Some(true));
        assert_eq!(g.get_u64("test.u64").ok(), Some(1 << 40));
        assert!(g.get_u32("test.u64").is_err(), "too big for u32");
        assert_eq!(g.get("test.i64"), Some(&GgufValue::I64(-(1 << 40))));
        assert_eq!(g.get_f32("test.f64").ok(), Some(0.25));
        assert_eq!(g.get_str_array("test.strs").ok(), Some(vec!["a", "bc", ""]));
        assert_eq!(g.get_i32_array("test.ints").ok(), Some(vec![1, -2, 3]));
        assert!(g.get_str("test.u32").is_err());
        assert!(g.get_str("missing").is_err());
        assert_eq!(g.get_str_opt("missing").ok(), Some(None));
        assert!(g.get_str_opt("test.u32").is_err());
        let nested = g.get("test.nested").and_then(GgufValue::as_array);
        assert_eq!(nested.map(<[_]>::len), Some(2));
        assert_eq!(g.metadata().len(), 15);

        assert_eq!(g.tensors().len(), 2);
        let a = g.tensor("a").expect("a");
        assert_eq!(a.dims, vec![3, 2]);
        assert_eq!(a.ggml_type, GgmlType::F32);
        assert_eq!(a.n_elements(), 6);
        assert_eq!(a.n_rows(), 2);
        assert_eq!(a.data.start, g.data_offset);
        assert_eq!(g.data_offset % 32, 0);
        let data = g.tensor_bytes(&bytes, a).expect("bytes");
        let vals: Vec<f32> = data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(vals, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let b = g.tensor("b").expect("b");
        assert_eq!(b.data.start, g.data_offset + 32);
        assert_eq!(b.n_bytes(), 20);
        assert!(g.tensor_bytes(&bytes[..bytes.len() - 1], b).is_err());
    }

    #[test]
    fn custom_alignment() {
        let kvs = vec![("general.alignment", GgufValue::U32(64))];
        let tensors = vec![f32_tensor("a", &[1], &[1.0]), f32_tensor("b", &[2], &[2.0, 3.0])];
        let bytes = write_gguf(&kvs, &tensors);
        let g = GgufFile::parse(&bytes).expect("parse");
        assert_eq!(g.alignment, 64);
        assert_eq!(g.data_offset % 64, 0);
        assert_eq!(g.tensor("b").map(|t| t.data.start), Some(g.data_offset + 64));

        for bad in [0u32, 3, 48] {
            let mut bytes = kv_header("general.alignment", 4);
            bytes.extend_from_slice(&bad.to_le_bytes());
            let e = GgufFile::parse(&bytes).expect_err("bad alignment");
            assert!(e.to_string().contains("alignment"), "{e}");
        }
        let mut bytes = kv_header("general.alignment", 8);
        bytes.extend_from_slice(&0u64.to_le_bytes());
        assert!(GgufFile::parse(&bytes).is_err(), "string alignment");
    }

    #[test]
    fn truncation_at_every_offset_is_an_error() {
        let bytes = sample();
        for n in 0..bytes.len() {
            assert!(
                GgufFile::parse(&bytes[..n]).is_err(),
                "prefix of {n} bytes parsed"
            );
        }
        assert!(GgufFile::parse(&bytes).is_ok());
    }

    /// Offsets inside `sample()` computed by walking the header.
    fn header_with(n_tensors: u64, n_kv: u64) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&n_tensors.to_le_bytes());
        b.extend_from_slice(&n_kv.to_le_bytes());
        b
    }

    fn kv_header(key: &str, tag: u32) -> Vec<u8> {
        let mut b = header_with(0, 1);
        b.extend_from_slice(&(key.len() as u64).to_le_bytes());
        b.extend_from_slice(key.as_bytes());
        b.extend_from_slice(&tag.to_le_bytes());
        b
    }

    #[test]
    fn huge_counts_and_lengths_are_errors() {
        // Tensor and KV counts.
        for (t, k) in [(1u64 << 60, 0u64), (0, 1 << 60), (u64::MAX, u64::MAX), (0, 1)] {
            let e = GgufFile::parse(&header_with(t, k)).expect_err("huge count");
            assert!(matches!(e, Error::Format { .. }), "{e}");
        }
        // Huge key length.
        let mut b = header_with(0, 1);
        b.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(GgufFile::parse(&b).is_err());
        // Huge string value length.
        let mut b = kv_header("k", 8);
        b.extend_from_slice(&(1u64 << 62).to_le_bytes());
        b.extend_from_slice(&[0u8; 64]);
        assert!(GgufFile::parse(&b).is_err());
        // Huge array count of u8 and of strings.
        for elem in [0u32, 8, 9] {
            let mut b = kv_header("k", 9);
            b.extend_from_slice(&elem.to_le_bytes());
            b.extend_from_slice(&(1u64 << 60).to_le_bytes());
            b.extend_from_slice(&[0u8; 64]);
            assert!(GgufFile::parse(&b).is_err());
        }
        // Unknown value type and array element type.
        let mut b = kv_header("k", 13);
        b.extend_from_slice(&[0u8; 16]);
        assert!(GgufFile::parse(&b).is_err());
        let mut b = kv_header("k", 9);
        b.extend_from_slice(&77u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        assert!(GgufFile::parse(&b).is_err());
        // Bad bool.
        let mut b = kv_header("k", 7);
        b.push(2);
        assert!(GgufFile::parse(&b).is_err());
        // Deeply nested arrays.
        let mut b = kv_header("k", 9);
        for _ in 0..100 {
            b.extend_from_slice(&9u32.to_le_bytes());
            b.extend_from_slice(&1u64.to_le_bytes());
        }
        b.extend_from_slice(&[0u8; 64]);
        let e = GgufFile::parse(&b).expect_err("deep");
        assert!(e.to_string().contains("nested"), "{e}");
        // Invalid UTF-8 key.
        let mut b = header_with(0, 1);
        b.extend_from_slice(&2u64.to_le_bytes());
        b.extend_from_slice(&[0xff, 0xfe]);
        b.extend_from_slice(&4u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        assert!(GgufFile::parse(&b).is_err());
        // Duplicate key.
        let kvs = [("a", GgufValue::U8(1)), ("a", GgufValue::U8(2))];
        assert!(GgufFile::parse(&write_gguf(&kvs, &[])).is_err());
        // Bad magic / version.
        let mut b = header_with(0, 0);
        b[0] = b'X';
        assert!(GgufFile::parse(&b).is_err());
        for v in [0u32, 1, 4, 3u32.swap_bytes()] {
            let mut b = header_with(0, 0);
            b[4..8].copy_from_slice(&v.to_le_bytes());
            assert!(GgufFile::parse(&b).is_err(), "version {v}");
        }
        let mut b = header_with(0, 0);
        b[4..8].copy_from_slice(&2u32.to_le_bytes());
        assert!(GgufFile::parse(&b).is_ok(), "v2 accepted");
    }

    /// A file with one tensor whose info fields are given raw.
    fn one_tensor(dims: &[u64], ty: u32, offset: u64, data_len: usize) -> Vec<u8> {
        let mut b = header_with(1, 0);
        b.extend_from_slice(&1u64.to_le_bytes());
        b.push(b't');
        b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            b.extend_from_slice(&d.to_le_bytes());
        }
        b.extend_from_slice(&ty.to_le_bytes());
        b.extend_from_slice(&offset.to_le_bytes());
        while !b.len().is_multiple_of(32) {
            b.push(0);
        }
        b.resize(b.len() + data_len, 0);
        b
    }

    #[test]
    fn tensor_info_checks() {
        assert!(GgufFile::parse(&one_tensor(&[4], 0, 0, 16)).is_ok());
        // Data one byte short.
        assert!(GgufFile::parse(&one_tensor(&[4], 0, 0, 15)).is_err());
        // Out-of-range / misaligned / overflowing offsets.
        assert!(GgufFile::parse(&one_tensor(&[4], 0, 32, 16)).is_err());
        assert!(GgufFile::parse(&one_tensor(&[4], 0, 8, 64)).is_err());
        assert!(GgufFile::parse(&one_tensor(&[4], 0, u64::MAX - 31, 64)).is_err());
        // Huge dims, overflowing products, too many dims, negative dims.
        assert!(GgufFile::parse(&one_tensor(&[1 << 40, 1 << 40], 0, 0, 64)).is_err());
        assert!(GgufFile::parse(&one_tensor(&[1 << 62], 0, 0, 64)).is_err());
        assert!(GgufFile::parse(&one_tensor(&[u64::MAX], 0, 0, 64)).is_err());
        assert!(GgufFile::parse(&one_tensor(&[1, 1, 1, 1, 1], 0, 0, 64)).is_err());
        assert!(GgufFile::parse(&one_tensor(&[1 << 32, 1 << 32, 1 << 32], 0, 0, 64)).is_err());
        // ne0 not a multiple of the block size.
        assert!(GgufFile::parse(&one_tensor(&[16], 2, 0, 64)).is_err());
        assert!(GgufFile::parse(&one_tensor(&[32], 2, 0, 18)).is_ok());
        // Unknown type.
        let e = GgufFile::parse(&one_tensor(&[4], 4, 0, 64)).expect_err("type 4");
        assert!(matches!(e, Error::Unsupported { .. }), "{e}");
        // Zero-sized tensors are fine.
        assert!(GgufFile::parse(&one_tensor(&[0, 5], 0, 0, 0)).is_ok());
        // Duplicate tensor names.
        let t = [f32_tensor("x", &[1], &[1.0]), f32_tensor("x", &[1], &[1.0])];
        assert!(GgufFile::parse(&write_gguf(&[], &t)).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = GgufFile::parse(&bytes);
            let mut with_magic = b"GGUF\x03\0\0\0".to_vec();
            with_magic.extend_from_slice(&bytes);
            let _ = GgufFile::parse(&with_magic);
        }

        #[test]
        fn mutations_never_panic(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = sample();
            for (i, v) in edits {
                let i = i.index(bytes.len());
                bytes[i] = v;
            }
            if let Ok(g) = GgufFile::parse(&bytes) {
                for t in g.tensors() {
                    prop_assert!(g.tensor_bytes(&bytes, t).is_ok());
                }
            }
            let n = cut.index(bytes.len() + 1);
            let _ = GgufFile::parse(&bytes[..n]);
        }
    }
}
