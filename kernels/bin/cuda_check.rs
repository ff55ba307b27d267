//! Compiles every kernel for the H200 (sm_90a) without a GPU and prints what ptxas reports:
//! `cuda_check --nvrtc LIBNVRTC --include CUDA_INCLUDE [--out DIR] [--only TEXT]`.
//! `tools/cuda-check.sh` fetches NVRTC and the headers and runs it. Exits 1 when a kernel does
//! not compile or spills registers (other than `KNOWN_SPILLS`), 2 on bad arguments, 3 when NVRTC or a Vulkan adapter is
//! missing (see `medqlora_kernels::cuda_check`).

use medqlora_kernels::cuda_check::{cubes_per_sm, known_spill, to_cuda, variants, Nvrtc, Resources};
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: cuda_check --nvrtc LIBNVRTC --include CUDA_INCLUDE [--out DIR] [--only TEXT]";

struct Args {
    nvrtc: PathBuf,
    include: PathBuf,
    out: Option<PathBuf>,
    only: Option<String>,
}

fn args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let (mut nvrtc, mut include, mut out, mut only) = (None, None, None, None);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value; {USAGE}"));
        match flag.as_str() {
            "--nvrtc" => nvrtc = Some(PathBuf::from(value()?)),
            "--include" => include = Some(PathBuf::from(value()?)),
            "--out" => out = Some(PathBuf::from(value()?)),
            "--only" => only = Some(value()?),
            other => return Err(format!("unknown argument {other}; {USAGE}")),
        }
    }
    Ok(Args { nvrtc: nvrtc.ok_or(USAGE)?, include: include.ok_or(USAGE)?, out, only })
}

fn main() -> ExitCode {
    let args = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let nvrtc = match Nvrtc::open(&args.nvrtc) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(3);
        }
    };
    if let Some(out) = &args.out {
        if let Err(e) = std::fs::create_dir_all(out) {
            eprintln!("cannot create {}: {e}", out.display());
            return ExitCode::from(2);
        }
    }
    // Any Vulkan device serves for expansion (see the module docs); lavapipe on a CPU.
    let client = match std::panic::catch_unwind(|| {
        use cubecl::Runtime;
        medqlora_kernels::cuda_check::CudaTargets::client(&Default::default())
    }) {
        Ok(c) => c,
        Err(_) => {
            eprintln!("no wgpu adapter to expand the kernels with (install a Vulkan driver; on a CPU, Mesa's lavapipe: apt-get install mesa-vulkan-drivers)");
            return ExitCode::from(3);
        }
    };
    let mut failed = 0;
    println!("| kernel | threads | registers | spill st/ld B | shared B | cubes/SM (limit) |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for v in variants(&client) {
        if args.only.as_ref().is_some_and(|o| !v.name.contains(o.as_str())) {
            continue;
        }
        let src = match to_cuda(v) {
            Ok(s) => s,
            Err(e) => {
                println!("| {e} |");
                failed += 1;
                continue;
            }
        };
        if let Some(out) = &args.out {
            let file = out.join(format!("{}.cu", src.name.replace(' ', "_")));
            if let Err(e) = std::fs::write(&file, &src.source) {
                eprintln!("cannot write {}: {e}", file.display());
            }
        }
        match nvrtc.compile(&src, &args.include) {
            Ok((true, log)) => match Resources::parse(&log) {
                Some(r) => {
                    let (cubes, limit) = cubes_per_sm(src.threads, r.registers, src.shared_bytes);
                    let spills = r.spill_stores + r.spill_loads > 0;
                    let known = known_spill(&src.name);
                    // ptxas' performance advisories (e.g. `wgmma` serialized for want of
                    // registers) fail the check like a spill.
                    let advisory = log.lines().find(|l| l.contains("Performance Loss") || l.contains("Performance Advisory")).map(str::trim);
                    failed += (spills && known.is_none() || advisory.is_some()) as usize;
                    let mut mark = match (spills, known) {
                        (false, _) => String::new(),
                        (true, None) => " **spills**".into(),
                        (true, Some(why)) => format!(" (accepted: {why})"),
                    };
                    if let Some(a) = advisory {
                        mark.push_str(&format!(" **{a}**"));
                    }
                    println!("| {} | {} | {} | {}/{}{mark} | {} | {cubes} ({limit}) |", src.name, src.threads, r.registers, r.spill_stores, r.spill_loads, src.shared_bytes);
                }
                None => println!("| {} | {} | no ptxas report in the log | | {} | |", src.name, src.threads, src.shared_bytes),
            },
            Ok((false, log)) => {
                failed += 1;
                let errors: Vec<&str> = log.lines().filter(|l| l.contains("error")).take(5).collect();
                println!("| {} | NVRTC error | {} | | | |", src.name, errors.join(" / "));
            }
            Err(e) => {
                failed += 1;
                println!("| {} | {e} | | | | |", src.name);
            }
        }
    }
    if failed > 0 {
        eprintln!("{failed} kernel variant(s) failed to compile or spill registers");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
