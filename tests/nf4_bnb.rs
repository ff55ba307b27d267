//! NF4 bit-exactness against bitsandbytes 0.50.2 (fixture from tools/make_fixtures_nf4.py):
//! identical packed bytes, absmax (f32 or double-quantized u8), nested absmax, and identical
//! dequantized values, for sizes that are not multiples of 64 or 256 and several block sizes.

mod common;

use medqlora::quant::dynamic_map::DYNAMIC_MAP_SIGNED;
use medqlora::quant::nf4::{self, Absmax, NF4_CODE};

#[derive(serde::Deserialize)]
struct Case {
    shape: Vec<usize>,
    dtype: String,
    blocksize: usize,
    double_quant: bool,
}

fn bf16_round(v: f32) -> f32 {
    half::bf16::from_f32(v).to_f32()
}

#[test]
fn quantize_and_dequantize_match_bitsandbytes_bit_for_bit() {
    let path = common::fixture("nf4_bnb.safetensors");
    let meta = common::metadata(path.clone());
    let cases: Vec<Case> = serde_json::from_str(&meta["cases"]).unwrap();
    let r = common::reference(path);
    println!("fixture made by bitsandbytes {} on {}", meta["bitsandbytes"], meta["made_on"]);
    assert!(cases.len() >= 8);
    for (i, c) in cases.iter().enumerate() {
        let get = |k: &str| r[&format!("c{i}.{k}")].clone();
        let f32s = |k: &str| get(k).to_vec::<f32>().unwrap();
        let x = f32s("input");
        let label = format!("case {i} {:?} {} blocksize {} dq {}", c.shape, c.dtype, c.blocksize, c.double_quant);
        assert_eq!(f32s("quant_map"), NF4_CODE.to_vec(), "{label}: NF4 code table");
        let mut ours = nf4::quantize(&x, &c.shape, c.blocksize, c.double_quant).unwrap();
        assert_eq!(ours.packed, get("packed").to_vec::<u8>().unwrap(), "{label}: packed bytes");
        match &ours.absmax {
            Absmax::F32(a) => {
                assert!(!c.double_quant);
                assert_eq!(a, &f32s("absmax"), "{label}: absmax");
            }
            Absmax::Double { offset, .. } => {
                assert_eq!(f32s("nested_quant_map"), DYNAMIC_MAP_SIGNED.to_vec(), "{label}: dynamic map");
                let theirs = f32s("offset")[0];
                let rel = ((offset - theirs) / theirs).abs();
                assert!(rel <= 2.0 * f32::EPSILON, "{label}: offset {offset} vs {theirs}");
                if *offset != theirs {
                    println!("{label}: offset differs in the last bit ({offset} vs {theirs}); using theirs below");
                }
                // The offset is a float reduction whose order is the library's; given the same
                // offset, every downstream byte must agree.
                let plain = nf4::quantize(&x, &c.shape, c.blocksize, false).unwrap();
                let Absmax::F32(a) = plain.absmax else { unreachable!() };
                ours.absmax = nf4::double_quantize_with_offset(&a, theirs);
                let Absmax::Double { codes, nested_absmax, .. } = &ours.absmax else { unreachable!() };
                assert_eq!(codes, &get("absmax").to_vec::<u8>().unwrap(), "{label}: double-quantized absmax");
                assert_eq!(nested_absmax, &f32s("nested_absmax"), "{label}: nested absmax");
            }
        }
        ours.validate().unwrap();
        let mut deq = ours.dequantize();
        if c.dtype == "bfloat16" {
            deq.iter_mut().for_each(|v| *v = bf16_round(*v));
        }
        let want = f32s("dequant");
        let bad = deq.iter().zip(&want).filter(|(a, b)| a.to_bits() != b.to_bits() && !(**a == 0.0 && **b == 0.0)).count();
        assert_eq!(bad, 0, "{label}: {bad} dequantized values differ");
        println!("{label}: identical ({} bytes packed)", ours.packed.len());
    }
}
