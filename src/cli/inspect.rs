//! `medqlora inspect`: parameter counts and resident weight bytes of a model, from its
//! `config.json` alone (no weights needed): bf16 vs NF4 as `quantize` would store it.

use super::quantize::human;
use crate::model::inventory::{tensor_bytes, text_tensors, vision_config, vision_tensors, TensorSpec, WeightFormat};
use crate::model::TextConfig;
use std::path::PathBuf;

/// Report a model's size in bf16 and NF4 from its config.json.
#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// Model folder (only config.json is read) or a config.json file.
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub nf4: super::Nf4Args,
}

/// Entry point of `medqlora inspect`.
pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    let path = if args.model.is_dir() { args.model.join("config.json") } else { args.model.clone() };
    let text = TextConfig::from_file(&path)?;
    let vision = vision_config(&path)?;
    let nf4 = WeightFormat::Nf4 { blocksize: args.nf4.blocksize, double_quant: !args.nf4.no_double_quant, skip: args.nf4.skip.clone() };
    let mut parts: Vec<(&str, Vec<TensorSpec>)> = vec![("language model", text_tensors(&text))];
    if let Some(v) = &vision {
        parts.push(("vision tower + merger", vision_tensors(v)));
    }
    println!("{:<24} {:>16} {:>12} {:>12}", "part", "parameters", "bf16", "nf4");
    let (mut p, mut b, mut q) = (0, 0, 0);
    for (name, tensors) in &parts {
        let params: usize = tensors.iter().map(TensorSpec::numel).sum();
        let bf16: usize = tensors.iter().map(|t| tensor_bytes(t, &WeightFormat::Bf16)).sum();
        let nf4b: usize = tensors.iter().map(|t| tensor_bytes(t, &nf4)).sum();
        println!("{name:<24} {params:>16} {:>12} {:>12}", human(bf16), human(nf4b));
        (p, b, q) = (p + params, b + bf16, q + nf4b);
    }
    println!("{:<24} {p:>16} {:>12} {:>12}", "total", human(b), human(q));
    println!(
        "{}: {p} parameters; weights {} in bf16 -> {} in NF4 (blocksize {}, double quant {}, dense: {})",
        path.display(),
        human(b),
        human(q),
        args.nf4.blocksize,
        !args.nf4.no_double_quant,
        args.nf4.skip.join(",")
    );
    Ok(())
}
