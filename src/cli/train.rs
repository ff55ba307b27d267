//! `medqlora train RECIPE.toml [--output-dir DIR] [--resume [latest|PATH]] [--device ...]
//! [--devices 0,1,...]`.

use crate::backend::{ComputeDtype, DeviceSpec};
use crate::train::{train, Recipe, ResumeFrom};
use std::path::PathBuf;

/// Arguments of `medqlora train`.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// The recipe (TOML; see recipes/).
    pub recipe: PathBuf,
    /// Run folder for checkpoints, TensorBoard events and the adapter (overrides the recipe's
    /// `output_dir`).
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    /// Continue from a checkpoint: `latest` (the run folder's newest) or a checkpoint folder.
    #[arg(long, num_args = 0..=1, default_missing_value = "latest")]
    pub resume: Option<String>,
    /// Overrides the recipe's `[hardware] device` (cpu, cuda, cuda:N).
    #[arg(long)]
    pub device: Option<DeviceSpec>,
    /// Overrides the recipe's `[hardware] dtype`.
    #[arg(long, value_enum)]
    pub dtype: Option<ComputeDtype>,
    /// Overrides the recipe's `[hardware] devices` (data parallelism), e.g. `--devices 0,1`;
    /// rank 0 runs on the first.
    #[arg(long, value_delimiter = ',')]
    pub devices: Option<Vec<usize>>,
    /// Overrides the recipe's `[train] max_steps`.
    #[arg(long)]
    pub max_steps: Option<usize>,
}

/// Runs the recipe and prints a one-line summary.
pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let mut recipe = Recipe::from_file(&args.recipe)?;
    if let Some(dir) = args.output_dir {
        recipe.output_dir = dir;
    }
    if let Some(d) = args.device {
        recipe.hardware.device = d;
    }
    if let Some(d) = args.dtype {
        recipe.hardware.dtype = d;
    }
    if let Some(d) = args.devices {
        recipe.hardware.devices = Some(d);
    }
    if let Some(s) = args.max_steps {
        recipe.train.max_steps = s;
    }
    recipe.validate(&args.recipe)?;
    let resume = args.resume.map(|r| if r == "latest" { ResumeFrom::Latest } else { ResumeFrom::Path(r.into()) });
    eprintln!("recipe {} -> {} on {} ({:?})", args.recipe.display(), recipe.output_dir.display(), recipe.hardware.device, recipe.hardware.dtype);
    let s = train(&recipe, resume)?;
    let fmt = |l: Option<f64>| l.map_or("-".to_owned(), |l| format!("{l:.4}"));
    println!(
        "{} {}: {} steps, train loss {} -> {}, eval loss {} -> {}, {:.0} tok/s, {:.1}s; adapter {}{}",
        if s.interrupted { "interrupted" } else { "trained" },
        recipe.name,
        s.steps,
        fmt(s.first_loss),
        fmt(s.last_loss),
        fmt(s.initial_eval_loss),
        fmt(s.eval_loss),
        s.tokens_per_sec,
        s.seconds,
        s.adapter_dir.display(),
        s.checkpoint.map(|c| format!(", checkpoint {}", c.display())).unwrap_or_default(),
    );
    Ok(())
}
