//! The bitsandbytes 4-bit safetensors layout, as transformers saves a `Linear4bit`
//! (bitsandbytes `QuantState.as_dict(packed=True)`). For a linear with prefix `p`:
//!
//! | key | dtype, shape |
//! | --- | --- |
//! | `p.weight` | U8 `[(n+1)/2, 1]` packed codes |
//! | `p.weight.absmax` | F32 `[blocks]`, or U8 `[blocks]` when double-quantized |
//! | `p.weight.quant_map` | F32 `[16]` (the NF4 code) |
//! | `p.weight.nested_absmax` | F32 `[ceil(blocks/256)]` (double quant only) |
//! | `p.weight.nested_quant_map` | F32 `[256]` (double quant only) |
//! | `p.weight.quant_state.bitsandbytes__nf4` | U8 bytes of a JSON object (below) |
//!
//! JSON: `{"quant_type":"nf4","blocksize":64,"dtype":"bfloat16","shape":[out,in]}` plus
//! `"nested_blocksize":256,"nested_dtype":"float32","nested_offset":<f32>` with double quant.

use super::dynamic_map::DYNAMIC_MAP_SIGNED;
use super::nf4::{Absmax, Nf4Tensor, NESTED_BLOCKSIZE, NF4_CODE};
use crate::model::load::{LoadError, WeightStore};
use safetensors::Dtype;
use serde::{Deserialize, Serialize};

/// Suffix of the JSON quant-state tensor.
pub const QUANT_STATE_SUFFIX: &str = "weight.quant_state.bitsandbytes__nf4";

/// The JSON part of a bitsandbytes quant state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantStateJson {
    /// "nf4" (fp4 is refused).
    pub quant_type: String,
    /// Elements per absmax block.
    pub blocksize: usize,
    /// dtype of the original weight / dequantized output, e.g. "bfloat16".
    pub dtype: String,
    /// Logical weight shape.
    pub shape: Vec<usize>,
    /// 256 with double quantization.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nested_blocksize: Option<usize>,
    /// "float32" with double quantization.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nested_dtype: Option<String>,
    /// `mean(absmax)` with double quantization.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nested_offset: Option<f64>,
}

/// True when the checkpoint stores `prefix` (e.g. `model.layers.0.mlp.up_proj`) as bnb NF4.
pub fn is_nf4(store: &WeightStore, prefix: &str) -> bool {
    store.contains(&format!("{prefix}.{QUANT_STATE_SUFFIX}"))
}

fn bad(name: &str, problem: impl Into<String>) -> LoadError {
    LoadError::Quant { name: name.to_owned(), problem: problem.into() }
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// Reads the NF4 weight of linear `prefix`, checking it against `expected` `[out, in]`.
pub fn read_nf4(store: &WeightStore, prefix: &str, expected: [usize; 2]) -> Result<Nf4Tensor, LoadError> {
    let state_name = format!("{prefix}.{QUANT_STATE_SUFFIX}");
    let (_, _, json) = store.raw(&state_name)?;
    let state: QuantStateJson = serde_json::from_slice(&json).map_err(|e| bad(&state_name, format!("quant state JSON: {e}")))?;
    if state.quant_type != "nf4" {
        return Err(bad(&state_name, format!("quant_type \"{}\" is not supported; quantize with nf4", state.quant_type)));
    }
    if state.shape != expected {
        return Err(LoadError::Shape { name: format!("{prefix}.weight"), found: state.shape, expected: expected.to_vec() });
    }
    let weight_name = format!("{prefix}.weight");
    let (dt, _, packed) = store.raw(&weight_name)?;
    if dt != Dtype::U8 {
        return Err(bad(&weight_name, format!("packed NF4 weight must be U8, found {dt:?}")));
    }
    let map_name = format!("{prefix}.weight.quant_map");
    if store.contains(&map_name) {
        let (_, _, map) = store.raw(&map_name)?;
        if f32s(&map) != NF4_CODE {
            return Err(bad(&map_name, "quant_map is not the NF4 code"));
        }
    }
    let absmax_name = format!("{prefix}.weight.absmax");
    let (adt, _, absmax_bytes) = store.raw(&absmax_name)?;
    let absmax = match (adt, state.nested_offset) {
        (Dtype::F32, None) => Absmax::F32(f32s(&absmax_bytes)),
        (Dtype::U8, Some(offset)) => {
            if state.nested_blocksize != Some(NESTED_BLOCKSIZE) {
                return Err(bad(&state_name, format!("nested_blocksize {:?}, expected 256", state.nested_blocksize)));
            }
            let (_, _, nested) = store.raw(&format!("{prefix}.weight.nested_absmax"))?;
            let map_name = format!("{prefix}.weight.nested_quant_map");
            if store.contains(&map_name) {
                let (_, _, map) = store.raw(&map_name)?;
                if f32s(&map) != DYNAMIC_MAP_SIGNED {
                    return Err(bad(&map_name, "nested_quant_map is not bitsandbytes' signed dynamic map"));
                }
            }
            Absmax::Double { codes: absmax_bytes, nested_absmax: f32s(&nested), offset: offset as f32 }
        }
        (dt, off) => {
            return Err(bad(&absmax_name, format!("absmax dtype {dt:?} does not fit nested_offset {off:?}")));
        }
    };
    let t = Nf4Tensor { shape: state.shape, blocksize: state.blocksize, packed, absmax };
    t.validate().map_err(|e| bad(&weight_name, e.to_string()))?;
    Ok(t)
}

/// One tensor to write: dtype, shape, little-endian bytes.
pub type OwnedTensor = (Dtype, Vec<usize>, Vec<u8>);

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The entries (name, tensor) that store `t` for linear `prefix`; `dtype` names the original
/// weight dtype for transformers ("bfloat16", "float16", "float32").
pub fn nf4_entries(prefix: &str, t: &Nf4Tensor, dtype: &str) -> Vec<(String, OwnedTensor)> {
    let mut out = vec![(format!("{prefix}.weight"), (Dtype::U8, vec![t.packed.len(), 1], t.packed.clone()))];
    out.push((format!("{prefix}.weight.quant_map"), (Dtype::F32, vec![16], f32_bytes(&NF4_CODE))));
    let mut state = QuantStateJson {
        quant_type: "nf4".into(),
        blocksize: t.blocksize,
        dtype: dtype.into(),
        shape: t.shape.clone(),
        nested_blocksize: None,
        nested_dtype: None,
        nested_offset: None,
    };
    match &t.absmax {
        Absmax::F32(a) => out.push((format!("{prefix}.weight.absmax"), (Dtype::F32, vec![a.len()], f32_bytes(a)))),
        Absmax::Double { codes, nested_absmax, offset } => {
            out.push((format!("{prefix}.weight.absmax"), (Dtype::U8, vec![codes.len()], codes.clone())));
            out.push((format!("{prefix}.weight.nested_absmax"), (Dtype::F32, vec![nested_absmax.len()], f32_bytes(nested_absmax))));
            out.push((format!("{prefix}.weight.nested_quant_map"), (Dtype::F32, vec![256], f32_bytes(&DYNAMIC_MAP_SIGNED))));
            state.nested_blocksize = Some(NESTED_BLOCKSIZE);
            state.nested_dtype = Some("float32".into());
            state.nested_offset = Some(*offset as f64);
        }
    }
    let json = serde_json::to_vec(&state).expect("quant state serializes");
    out.push((format!("{prefix}.{QUANT_STATE_SUFFIX}"), (Dtype::U8, vec![json.len()], json)));
    out
}
