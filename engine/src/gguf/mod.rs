//! GGUF support: a bounds-checked reader, dequantization, and import of a
//! llama GGUF file as a Hugging Face model directory (weights, config and a
//! rebuilt `tokenizer.json`).

pub mod dequant;
pub mod import;
pub mod reader;
pub mod tokenizer;

pub use dequant::{dequantize, dequantize_into};
pub use import::{ImportDtype, import_gguf, permute_qk_rows, unpermute_qk_rows};
pub use reader::{GgmlType, GgufFile, GgufTensorInfo, GgufValue, GgufValueType};
pub use tokenizer::{BpeParts, GgufTokenizer, byte_char, tokenizer_from_gguf, tokenizer_from_parts};
