//! `medqlora quantize`: a Hugging Face checkpoint -> bitsandbytes NF4 checkpoint.

use crate::quant::convert::{convert, ConvertOptions};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::time::Instant;

/// Quantize a checkpoint's linear weights to NF4 (bitsandbytes layout, loadable by transformers).
#[derive(clap::Args, Debug)]
pub struct QuantizeArgs {
    /// Input Hugging Face checkpoint folder.
    #[arg(long)]
    pub model: PathBuf,
    /// Output folder (weights, config with quantization_config, tokenizer files).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub nf4: super::Nf4Args,
    /// Overwrite a non-empty output folder.
    #[arg(long)]
    pub force: bool,
}

/// Entry point of `medqlora quantize`.
pub fn run(args: QuantizeArgs) -> anyhow::Result<()> {
    super::model_dir(&args.model)?;
    anyhow::ensure!(args.model != args.out, "--out must differ from --model (the input is read while the output is written)");
    let opts = ConvertOptions { blocksize: args.nf4.blocksize, double_quant: !args.nf4.no_double_quant, skip: args.nf4.skip.clone() };
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} {pos} tensors quantized [{elapsed}] {msg}").expect("template"));
    let start = Instant::now();
    let groups = convert(&args.model, &args.out, &opts, args.force, &|name| {
        bar.inc(1);
        bar.set_message(name.to_owned());
    })?;
    bar.finish_and_clear();
    println!("{:<28} {:>8} {:>10} {:>12} {:>12}", "module group", "tensors", "quantized", "before", "after");
    let (mut before, mut after) = (0, 0);
    for (group, g) in &groups {
        println!("{group:<28} {:>8} {:>10} {:>12} {:>12}", g.tensors, g.quantized, human(g.before), human(g.after));
        before += g.before;
        after += g.after;
    }
    println!(
        "quantized {} -> {} in {:.1}s: {} -> {} ({:.2}x smaller; NF4 blocksize {}, double quant {})",
        args.model.display(),
        args.out.display(),
        start.elapsed().as_secs_f64(),
        human(before),
        human(after),
        before as f64 / after.max(1) as f64,
        opts.blocksize,
        opts.double_quant
    );
    Ok(())
}

/// Bytes as "1.23 GB" / "4.5 MB" / "512 B".
pub fn human(bytes: usize) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{bytes} B")
    }
}
