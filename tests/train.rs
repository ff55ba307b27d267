//! `medqlora train` end to end on the tiny random model (CPU): the shipped smoke recipe,
//! exact resume after SIGKILL, refusal of damaged checkpoints, Ctrl-C, recipe errors.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_medqlora"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("medqlora-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn ok(out: Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "medqlora failed ({}):\n{text}", out.status);
    text
}

/// A small recipe: 20 steps, checkpoints every 10, dropout on (so RNG replay matters).
fn small_recipe(dir: &Path) -> PathBuf {
    let path = dir.join("recipe.toml");
    std::fs::write(
        &path,
        format!(
            r#"
name = "resume-test"
output_dir = "unused"
seed = 3
{model_and_lora}[data]
source = {{ kind = "synth", kinds = ["lab_panel"], train_per_kind = 12, eval_per_kind = 2, seed = 5 }}
max_seq_len = 1024
[train]
max_steps = 20
micro_batch_size = 2
grad_accum = 2
lr = 1e-2
warmup_steps = 3
save_every = 10
keep_last = 5
"#,
            model_and_lora = common::TINY_MODEL_AND_LORA
        ),
    )
    .unwrap();
    path
}

fn state(ckpt: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(ckpt.join("trainer_state.json")).unwrap()).unwrap()
}

#[test]
fn smoke_recipe_trains_logs_and_checkpoints() {
    let out_dir = scratch("smoke");
    let text = ok(bin().args(["train", "recipes/tiny-smoke.toml", "--output-dir"]).arg(&out_dir).current_dir(common::root()).output().unwrap());
    println!("{text}");
    assert!(text.contains("trainable params:"), "prints trainable/total parameters");
    let ck = out_dir.join("checkpoints").join("step-000030");
    assert!(ck.join("adapter_model.safetensors").exists() && ck.join("checksums.json").exists());
    assert!(out_dir.join("adapter").join("adapter_config.json").exists(), "the final adapter is exported");
    let events: Vec<_> = std::fs::read_dir(out_dir.join("tb")).unwrap().flatten().collect();
    assert!(events.iter().any(|e| e.file_name().to_string_lossy().starts_with("events.out.tfevents")), "TensorBoard events written");
    // Stock TensorBoard reads the curves (tools/check_tensorboard.py uses its EventAccumulator).
    let has_tb = Command::new("python3").args(["-c", "import tensorboard"]).output().is_ok_and(|o| o.status.success());
    if has_tb {
        let out = ok(Command::new("python3").arg(common::root().join("tools/check_tensorboard.py")).arg(&out_dir).output().unwrap());
        println!("{out}");
        assert!(out.contains("train/loss: 30 points") && out.contains("eval/loss: 3 points"), "{out}");
    } else {
        eprintln!("SKIPPED: TensorBoard read-back (python3 has no tensorboard package; .ci/run installs it with pip)");
    }
    // metrics.jsonl: every step's tokens and seconds, consistent with its tokens/s.
    let steps = common::logged_steps(&out_dir);
    assert_eq!(steps.len(), 30);
    for m in &steps {
        let (tokens, secs, tps) = (m["tokens"].as_f64().unwrap(), m["seconds"].as_f64().unwrap(), m["tokens_per_sec"].as_f64().unwrap());
        assert!(tokens > 0.0 && secs > 0.0 && (tokens / secs - tps).abs() <= 1e-6 * tps, "{m}");
        assert!(m["peak_memory_bytes"].is_null(), "no device memory figure on the CPU: {m}");
    }
    // It learns: the last 5 steps' mean loss is well below the first 5 steps'.
    let losses: Vec<f64> = state(&ck)["losses"].as_array().unwrap().iter().map(|p| p[1].as_f64().unwrap()).collect();
    assert_eq!(losses.len(), 30);
    let head: f64 = losses[..5].iter().sum::<f64>() / 5.0;
    let tail: f64 = losses[25..].iter().sum::<f64>() / 5.0;
    assert!(tail < 0.8 * head, "loss {head:.3} -> {tail:.3} did not drop by 20%");
    let line = text.lines().find(|l| l.starts_with("trained tiny-smoke")).expect("one-line summary");
    assert!(line.contains("30 steps"), "{line}");
}

#[test]
fn sigkill_then_resume_is_bit_identical() {
    let dir = scratch("resume");
    let recipe = small_recipe(&dir);
    let straight = dir.join("straight");
    ok(bin().arg("train").arg(&recipe).arg("--output-dir").arg(&straight).output().unwrap());

    let killed = dir.join("killed");
    let mut child = bin().arg("train").arg(&recipe).arg("--output-dir").arg(&killed).stderr(std::process::Stdio::null()).spawn().unwrap();
    let first = killed.join("checkpoints").join("step-000010");
    let start = Instant::now();
    while !first.exists() {
        assert!(start.elapsed() < Duration::from_secs(300), "no checkpoint at step 10");
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before it could be killed");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success(), "the process was killed, not finished");
    assert!(!killed.join("checkpoints").join("step-000020").exists(), "killed before the end");

    ok(bin().arg("train").arg(&recipe).arg("--output-dir").arg(&killed).arg("--resume").output().unwrap());
    let (a, b) = (straight.join("checkpoints").join("step-000020"), killed.join("checkpoints").join("step-000020"));
    let (sa, sb) = (state(&a), state(&b));
    assert_eq!(sa["losses"], sb["losses"], "per-step losses identical");
    assert_eq!(sa["cursor"], sb["cursor"]);
    for f in ["adapter_model.safetensors", "optimizer.safetensors"] {
        assert!(std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(), "{f} differs after resume");
    }
    println!("20 straight == 10 + SIGKILL + resume 10: losses {:?}", sa["losses"]);

    // A damaged checkpoint is refused, naming the file; nothing is trained or overwritten.
    let bad = dir.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    let copy = |name: &str| {
        let to = bad.join(name);
        std::fs::create_dir_all(&to).unwrap();
        for f in std::fs::read_dir(&first).unwrap().flatten() {
            std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
        }
        to
    };
    let truncated = copy("truncated");
    let bytes = std::fs::read(truncated.join("optimizer.safetensors")).unwrap();
    std::fs::write(truncated.join("optimizer.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let altered = copy("altered");
    let mut bytes = std::fs::read(altered.join("adapter_model.safetensors")).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x40;
    std::fs::write(altered.join("adapter_model.safetensors"), &bytes).unwrap();
    for (ck, file) in [(&truncated, "optimizer.safetensors"), (&altered, "adapter_model.safetensors")] {
        let out = bin().arg("train").arg(&recipe).arg("--output-dir").arg(dir.join("never")).arg("--resume").arg(ck).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains(file) && err.contains("checksum"), "{err}");
        assert!(!dir.join("never").join("checkpoints").exists(), "nothing written for a refused resume");
    }
}

#[test]
fn ctrl_c_writes_a_checkpoint_and_exits_0() {
    let dir = scratch("sigint");
    let recipe = small_recipe(&dir);
    let out = dir.join("run");
    let mut child = bin().arg("train").arg(&recipe).arg("--output-dir").arg(&out).arg("--max-steps").arg("100000").spawn().unwrap();
    // Wait until training has started (metrics for step 1), then interrupt.
    let start = Instant::now();
    while std::fs::read_to_string(out.join("metrics.jsonl")).map_or(true, |t| !t.contains("\"kind\":\"train\"")) {
        assert!(start.elapsed() < Duration::from_secs(300), "training never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let status = child.wait().unwrap();
    assert!(status.success(), "Ctrl-C exits 0, got {status}");
    let cks = std::fs::read_dir(out.join("checkpoints")).unwrap().flatten().count();
    assert!(cks >= 1, "a checkpoint was written on Ctrl-C");
}

#[test]
fn recipe_errors_name_the_key() {
    let dir = scratch("badrecipe");
    let good = std::fs::read_to_string(small_recipe(&dir)).unwrap();
    for (edit, expect) in [
        (good.replace("lr = 1e-2", "lr = 1e-2\nlearning_rate = 3"), "learning_rate"),
        (good.replace("r = 4", "r = 0"), "lora.r"),
        (good.replace("kinds = [\"lab_panel\"]", "kinds = [\"x_ray\"]"), "x_ray"),
        (good.replace("source = \"tiny_random\"", "source = \"tiny\""), "tiny"),
        (good.replace("warmup_steps = 3", "warmup_steps = 30"), "train.warmup_steps"),
    ] {
        let path = dir.join("edited.toml");
        std::fs::write(&path, edit).unwrap();
        let out = bin().arg("train").arg(&path).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(expect) && err.contains("edited.toml"), "expected an error naming {expect}:\n{err}");
    }
    // `--devices` overrides the recipe's `[hardware] devices` and is validated like it.
    std::fs::write(dir.join("edited.toml"), &good).unwrap();
    let out = bin().arg("train").arg(dir.join("edited.toml")).args(["--devices", "0,0"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("hardware.devices") && err.contains("device 0 twice"), "{err}");
    // Bad data stops the run before training starts, naming file:line; nothing is written.
    let data = dir.join("bad.jsonl");
    std::fs::write(&data, "{\"id\": \"a\", \"doc_type\": \"lab_panel\", \"text\": \"Na 140\", \"target\": {\"sodium\": 140}}\n{not json\n").unwrap();
    let jsonl = good.replace(
        "source = { kind = \"synth\", kinds = [\"lab_panel\"], train_per_kind = 12, eval_per_kind = 2, seed = 5 }",
        &format!("source = {{ kind = \"jsonl\", train = \"{}\" }}", data.display()),
    );
    std::fs::write(dir.join("edited.toml"), jsonl).unwrap();
    let run = dir.join("bad-data-run");
    let out = bin().arg("train").arg(dir.join("edited.toml")).arg("--output-dir").arg(&run).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("bad.jsonl:2"), "{err}");
    assert!(!run.join("checkpoints").exists(), "no checkpoint for a run stopped by bad data");
    let out = bin().args(["train", "/nonexistent/recipe.toml"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/recipe.toml"));
}

/// `train.optimizer = "adamw_8bit"`: the moments are stored as u8 codes plus block scales
/// (bitsandbytes' layout), a resume continues bit for bit, and a recipe that switches the
/// optimizer cannot resume the run.
#[test]
fn eight_bit_adamw_checkpoints_and_resumes_exactly() {
    let dir = scratch("adamw8");
    // Adapter tensors of >= 4,096 elements (smaller ones keep f32 moments, as in bitsandbytes).
    let recipe = std::fs::read_to_string(small_recipe(&dir))
        .unwrap()
        .replace("hidden_size = 32\nintermediate_size = 64", "hidden_size = 64\nintermediate_size = 128")
        .replace("r = 4", "r = 64")
        .replace("max_steps = 20", "max_steps = 8\noptimizer = \"adamw_8bit\"")
        .replace("save_every = 10", "save_every = 4");
    let path = dir.join("adamw8.toml");
    std::fs::write(&path, &recipe).unwrap();
    let straight = dir.join("straight");
    let text = ok(bin().arg("train").arg(&path).arg("--output-dir").arg(&straight).output().unwrap());
    let ck4 = straight.join("checkpoints").join("step-000004");
    let bytes = std::fs::read(ck4.join("optimizer.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let names = st.names();
    let q8: Vec<_> = names.iter().filter(|n| n.starts_with("m8.")).collect();
    assert!(!q8.is_empty(), "8-bit first moments saved: {names:?}");
    for n in &q8 {
        assert_eq!(st.tensor(n).unwrap().dtype(), safetensors::Dtype::U8, "{n}");
        let name = n.strip_prefix("m8.").unwrap();
        assert!(names.iter().any(|k| *k == format!("v8_absmax.{name}")) && !names.iter().any(|k| *k == format!("m.{name}")), "{name}");
    }
    // v_proj's B is [32, 64]: under 4,096 elements, so it keeps f32 moments beside the others.
    assert!(names.iter().any(|n| n.starts_with("m.") && n.contains("v_proj.lora_B")), "small tensors keep f32 moments: {names:?}");
    println!("{}", text.lines().last().unwrap_or_default());

    // Resume from the step-4 checkpoint in a fresh run folder: steps 5-8 equal the straight run.
    let resumed = dir.join("resumed");
    std::fs::create_dir_all(resumed.join("checkpoints")).unwrap();
    let copy = resumed.join("checkpoints").join("step-000004");
    std::fs::create_dir_all(&copy).unwrap();
    for f in std::fs::read_dir(&ck4).unwrap().flatten() {
        std::fs::copy(f.path(), copy.join(f.file_name())).unwrap();
    }
    ok(bin().arg("train").arg(&path).arg("--output-dir").arg(&resumed).arg("--resume").output().unwrap());
    let (a, b) = (straight.join("checkpoints").join("step-000008"), resumed.join("checkpoints").join("step-000008"));
    assert_eq!(state(&a)["losses"], state(&b)["losses"], "per-step losses identical");
    for f in ["adapter_model.safetensors", "optimizer.safetensors"] {
        assert!(std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(), "{f} differs after resume");
    }

    // The same run with f32 moments: 8-bit moments follow its loss curve closely ...
    let f32_recipe = dir.join("adamw.toml");
    std::fs::write(&f32_recipe, recipe.replace("optimizer = \"adamw_8bit\"", "optimizer = \"adamw\"")).unwrap();
    let f32_run = dir.join("f32");
    ok(bin().arg("train").arg(&f32_recipe).arg("--output-dir").arg(&f32_run).output().unwrap());
    let curve = |run: &Path| -> Vec<f64> {
        state(&run.join("checkpoints").join("step-000008"))["losses"].as_array().unwrap().iter().map(|p| p[1].as_f64().unwrap()).collect()
    };
    let (c8, c32) = (curve(&straight), curve(&f32_run));
    println!("losses, 8-bit moments: {c8:.6?}\nlosses, f32 moments:   {c32:.6?}");
    assert_eq!(c8[0], c32[0], "the first step's loss comes before any update");
    assert!(c8 != c32, "the moments' rounding changes the trajectory (else 8-bit was not used)");
    for (step, (a, b)) in c8.iter().zip(&c32).enumerate() {
        assert!((a - b).abs() <= 0.05 * b, "step {}: 8-bit loss {a:.4} vs f32 {b:.4}", step + 1);
    }
    assert!(c8[7] < 0.95 * c8[0], "8-bit AdamW lowers the loss: {:.4} -> {:.4}", c8[0], c8[7]);
    // ... and cannot continue a run from 8-bit ones.
    let out = bin().arg("train").arg(&f32_recipe).arg("--output-dir").arg(dir.join("never")).arg("--resume").arg(&ck4).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("train.optimizer") && err.contains("adamw_8bit"), "{err}");
}
