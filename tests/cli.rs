//! The `medqlora` binary end to end: bad input gets a clear message and a non-zero exit;
//! with the real model present, `generate --chat` streams transformers' greedy answer.

mod common;

use std::process::Command;

fn medqlora(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_medqlora")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn bad_input_is_named_with_the_fix() {
    let (ok, _, err) = medqlora(&["generate", "--model", "/no/such/model", "--prompt", "hi"]);
    assert!(!ok);
    assert!(err.contains("/no/such/model") && err.contains("--model"), "{err}");

    let tiny = common::fixture("qwen2_tiny");
    let tiny = tiny.to_str().unwrap();
    let (ok, _, err) = medqlora(&["generate", "--model", tiny, "--prompt", "hi"]);
    assert!(!ok);
    assert!(err.contains("tokenizer.json"), "a folder without a tokenizer must say so: {err}");

    let (ok, _, err) = medqlora(&["generate", "--model", tiny, "--prompt", "hi", "--device", "tpu"]);
    assert!(!ok && err.contains("cpu, cuda or cuda:N"), "{err}");

    let (ok, _, err) = medqlora(&["generate", "--model", tiny, "--prompt", "hi", "--dtype", "bf16"]);
    assert!(!ok && err.contains("bf16"), "{err}");

    let (ok, _, err) = medqlora(&["generate", "--model", tiny, "--prompt-file", "/no/such/prompt.txt"]);
    assert!(!ok && err.contains("/no/such/prompt.txt"), "{err}");

    let (ok, _, err) = medqlora(&["generate", "--model", tiny, "--prompt", "hi", "--top-p", "0"]);
    assert!(!ok && err.contains("--top-p"), "{err}");

    // The cause once, though the library's message already names it (anyhow's chain repeats it).
    let (ok, _, err) = medqlora(&["train", "/no/such/recipe.toml"]);
    let cause = std::fs::read("/no/such/recipe.toml").unwrap_err().to_string();
    assert!(!ok && err.contains("/no/such/recipe.toml") && err.matches(&cause).count() == 1, "{err}");

    #[cfg(not(feature = "cuda"))]
    {
        let (ok, _, err) = medqlora(&["generate", "--model", tiny, "--prompt", "hi", "--device", "cuda"]);
        assert!(!ok && err.contains("--features cuda"), "{err}");
    }
}

#[test]
fn bench_generate_reports_speed_on_the_tiny_model() {
    let tiny = common::fixture("qwen2_tiny");
    let (ok, out, err) =
        medqlora(&["bench", "generate", "--model", tiny.to_str().unwrap(), "--prompt-tokens", "8", "--new-tokens", "4", "--runs", "1"]);
    assert!(ok, "{err}");
    assert!(out.contains("prefill") && out.contains("decode") && out.contains("tok/s"), "{out}");
}

#[test]
fn generate_chat_streams_the_greedy_answer() {
    let Some(dir) = common::real_model_dir() else { return };
    let (ok, out, err) = medqlora(&[
        "generate", "--model", dir.to_str().unwrap(), "--chat", "--max-new-tokens", "8",
        "--prompt", "Write a Python function that returns the square of a number.",
    ]);
    assert!(ok, "{err}");
    // transformers' greedy answer starts the same way (tests/fixtures/qwen25_05b_greedy.json).
    assert!(out.starts_with("Here's a simple Python function"), "{out}");
    assert!(err.contains("decode") && err.contains("tok/s") && err.contains("max-new-tokens"), "{err}");
}
