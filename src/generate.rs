//! Autoregressive generation with a KV cache: greedy by default, or temperature + top-p
//! sampling from a seeded RNG (same seed, same tokens).

use crate::model::{KvCache, PositionIds, Qwen2ForCausalLM};
use burn::tensor::{backend::Backend, Bool, Int, Tensor, TensorData};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::time::Instant;

/// How to pick the next token.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingConfig {
    /// Stop after this many new tokens.
    pub max_new_tokens: usize,
    /// 0 means greedy (argmax); otherwise logits are divided by it before sampling.
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches `top_p`.
    pub top_p: f32,
    /// Seed of the sampling RNG.
    pub seed: u64,
    /// Token ids that end generation (not included in the output).
    pub stop_ids: Vec<u32>,
}

impl SamplingConfig {
    /// Greedy decoding of up to `max_new_tokens`.
    pub fn greedy(max_new_tokens: usize, stop_ids: Vec<u32>) -> Self {
        Self { max_new_tokens, temperature: 0.0, top_p: 1.0, seed: 0, stop_ids }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A stop token was produced.
    StopToken,
    /// `max_new_tokens` reached.
    Length,
}

/// The generated ids and timings.
#[derive(Debug, Clone)]
pub struct Generation {
    /// New token ids (stop token excluded).
    pub tokens: Vec<u32>,
    /// Why it ended.
    pub stop: StopReason,
    /// Prompt length in tokens.
    pub prompt_tokens: usize,
    /// Seconds for the prompt forward (prefill), including the first token's pick.
    pub prefill_secs: f64,
    /// Seconds for the remaining tokens (decode).
    pub decode_secs: f64,
}

impl Generation {
    /// Prompt tokens processed per second during prefill.
    pub fn prefill_tokens_per_sec(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_secs.max(1e-9)
    }

    /// New tokens per second after the first (decode speed).
    pub fn decode_tokens_per_sec(&self) -> f64 {
        self.tokens.len().saturating_sub(1) as f64 / self.decode_secs.max(1e-9)
    }
}

/// Picks a token from `[vocab]` logits on the host.
pub fn sample(logits: &[f32], temperature: f32, top_p: f32, rng: &mut StdRng) -> u32 {
    if temperature <= 0.0 {
        return argmax(logits);
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, (((l - max) / temperature) as f64).exp()))
        .collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept = 0;
    let mut cum = 0.0;
    for p in &probs {
        cum += p.1 / total;
        kept += 1;
        if cum >= top_p as f64 {
            break;
        }
    }
    let probs = &probs[..kept];
    let mass: f64 = probs.iter().map(|p| p.1).sum();
    let mut r = rng.random::<f64>() * mass;
    for p in probs {
        r -= p.1;
        if r <= 0.0 {
            return p.0;
        }
    }
    probs[kept - 1].0
}

/// Index of the largest logit (first one on ties, like torch.argmax).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

fn pick<B: Backend>(logits: Tensor<B, 2>, cfg: &SamplingConfig, rng: &mut StdRng) -> u32 {
    if cfg.temperature <= 0.0 {
        // Greedy: reduce on the device and bring back one integer.
        let id = logits.argmax(1).into_data().convert::<i64>();
        return id.as_slice::<i64>().expect("argmax returns integers")[0] as u32;
    }
    let data = logits.into_data().convert::<f32>();
    sample(data.as_slice::<f32>().expect("converted to f32"), cfg.temperature, cfg.top_p, rng)
}

/// Generates after `prompt` (batch of one); `on_token` sees each new id as it is picked.
pub fn generate<B: Backend>(
    model: &Qwen2ForCausalLM<B>,
    prompt: &[u32],
    cfg: &SamplingConfig,
    mut on_token: impl FnMut(u32),
) -> Generation {
    let device = model.device();
    let ids = |toks: &[u32]| {
        let v: Vec<i64> = toks.iter().map(|&t| t as i64).collect();
        Tensor::<B, 2, Int>::from_data(TensorData::new(v, [1, toks.len()]), &device)
    };
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut cache = model.new_cache();
    let mut tokens = Vec::new();
    let start = Instant::now();
    let mut next = pick(model.forward_cached(ids(prompt), &mut cache), cfg, &mut rng);
    let prefill_secs = start.elapsed().as_secs_f64();
    let decode_start = Instant::now();
    let mut stop = StopReason::Length;
    while tokens.len() < cfg.max_new_tokens {
        if cfg.stop_ids.contains(&next) {
            stop = StopReason::StopToken;
            break;
        }
        tokens.push(next);
        on_token(next);
        if tokens.len() == cfg.max_new_tokens {
            break;
        }
        next = pick(model.forward_cached(ids(&[next]), &mut cache), cfg, &mut rng);
    }
    Generation { tokens, stop, prompt_tokens: prompt.len(), prefill_secs, decode_secs: decode_start.elapsed().as_secs_f64() }
}

/// Picks one token per row of `[batch, vocab]` logits.
fn pick_rows<B: Backend>(logits: Tensor<B, 2>, cfg: &SamplingConfig, rng: &mut StdRng) -> Vec<u32> {
    let [b, v] = logits.dims();
    if cfg.temperature <= 0.0 {
        let ids = logits.argmax(1).into_data().convert::<i64>();
        return ids.as_slice::<i64>().expect("argmax returns integers").iter().map(|&i| i as u32).collect();
    }
    let data = logits.into_data().convert::<f32>();
    let all = data.as_slice::<f32>().expect("converted to f32");
    (0..b).map(|r| sample(&all[r * v..(r + 1) * v], cfg.temperature, cfg.top_p, rng)).collect()
}

/// Incremental decoding of several prompts at once: one forward per step for the whole
/// batch, logits out, so callers pick tokens their own way (greedy, sampling, or teacher
/// forcing in the tests).
///
/// Each prompt is prefilled alone (batch 1, the plain causal path that training runs), so no
/// padding is computed and no padding mask reaches the long prefill attention; the per-row
/// caches are then stacked, left-padded with zero keys/values to the longest prompt, and the
/// decode steps mask those padding keys. Row `i`'s positions start at 0 at its first token,
/// so it computes what a batch of one computes for `prompts[i]` alone.
pub struct BatchDecoder<'m, B: Backend> {
    model: &'m Qwen2ForCausalLM<B>,
    cache: KvCache<B>,
    /// Left padding of each row.
    pads: Vec<usize>,
    /// Padded prompt length.
    longest: usize,
    /// Tokens fed after the prompt so far.
    fed: usize,
}

impl<'m, B: Backend> BatchDecoder<'m, B> {
    /// Runs the prompts (prefill). Returns the decoder and the logits of each row's last
    /// prompt token, `[batch, vocab]`. An empty prompt is run as one filler token (its logits
    /// are meaningless); `prompts` must not be empty.
    pub fn prefill(model: &'m Qwen2ForCausalLM<B>, prompts: &[Vec<u32>]) -> (Self, Tensor<B, 2>) {
        let device = model.device();
        let filler = prompts.iter().find_map(|p| p.first().copied()).unwrap_or(0);
        let mut caches = Vec::with_capacity(prompts.len());
        let mut logits = Vec::with_capacity(prompts.len());
        let mut lens = Vec::with_capacity(prompts.len());
        for p in prompts {
            let ids: Vec<i64> = if p.is_empty() { vec![filler as i64] } else { p.iter().map(|&t| t as i64).collect() };
            let n = ids.len();
            let mut cache = model.new_cache();
            logits.push(model.forward_cached(Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, n]), &device), &mut cache));
            caches.push(cache);
            lens.push(n);
        }
        let longest = lens.iter().copied().max().unwrap_or(1);
        let pads = lens.iter().map(|&n| longest - n).collect();
        let dec = Self { model, cache: KvCache::left_padded(caches, longest), pads, longest, fed: 0 };
        (dec, Tensor::cat(logits, 0))
    }

    /// Feeds one token per row (finished rows may feed anything) and returns the next
    /// logits, `[batch, vocab]`.
    pub fn step(&mut self, tokens: &[u32]) -> Tensor<B, 2> {
        let b = self.pads.len();
        assert_eq!(tokens.len(), b, "one token per row");
        self.fed += 1;
        let (longest, fed) = (self.longest, self.fed);
        let rows: Vec<Vec<i64>> = self.pads.iter().map(|&pad| vec![(longest - pad + fed - 1) as i64]).collect();
        let total = longest + fed;
        let mask: Vec<bool> = self.pads.iter().flat_map(|&pad| (0..total).map(move |k| k < pad)).collect();
        let model = self.model;
        let device = model.device();
        let mask = Tensor::<B, 5, Bool>::from_data(TensorData::new(mask, [b, 1, 1, 1, total]), &device);
        let pos = PositionIds { rows: [rows.clone(), rows.clone(), rows] };
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(tokens.iter().map(|&t| t as i64).collect(), [b, 1]), &device);
        let (h, _) = model.decode_masked(model.embed(ids), Some(&pos), Some(&mut self.cache), false, Some(&mask));
        model.project(h).reshape([b, model.config.vocab_size])
    }
}

/// Generates after several prompts at once with a [`BatchDecoder`]. Rows stop on their own
/// (stop token or `max_new_tokens`); finished rows keep being fed (their picks ignored) until
/// every row is done. With sampling, one RNG serves the rows in order. An empty prompt yields
/// an empty generation. Timings are the batch's, shared by every row.
pub fn generate_batch<B: Backend>(model: &Qwen2ForCausalLM<B>, prompts: &[Vec<u32>], cfg: &SamplingConfig) -> Vec<Generation> {
    if prompts.is_empty() {
        return Vec::new();
    }
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let start = Instant::now();
    let (mut decoder, logits) = BatchDecoder::prefill(model, prompts);
    let mut next = pick_rows(logits, cfg, &mut rng);
    let prefill_secs = start.elapsed().as_secs_f64();
    let decode_start = Instant::now();
    let mut out: Vec<Generation> = prompts
        .iter()
        .map(|p| Generation { tokens: Vec::new(), stop: StopReason::Length, prompt_tokens: p.len(), prefill_secs, decode_secs: 0.0 })
        .collect();
    let mut done: Vec<bool> = prompts.iter().map(|p| p.is_empty() || cfg.max_new_tokens == 0).collect();
    loop {
        for (r, g) in out.iter_mut().enumerate() {
            if done[r] {
                continue;
            }
            if cfg.stop_ids.contains(&next[r]) {
                g.stop = StopReason::StopToken;
                done[r] = true;
            } else {
                g.tokens.push(next[r]);
                done[r] = g.tokens.len() == cfg.max_new_tokens;
            }
        }
        if done.iter().all(|&d| d) {
            break;
        }
        next = pick_rows(decoder.step(&next), cfg, &mut rng);
    }
    let decode_secs = decode_start.elapsed().as_secs_f64();
    for g in &mut out {
        g.decode_secs = decode_secs;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_top_p() {
        let logits = [0.1f32, 3.0, 2.9, -1.0];
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(sample(&logits, 0.0, 1.0, &mut rng), 1);
        assert_eq!(argmax(&[1.0, 5.0, 5.0]), 1, "ties go to the first index");
        // top_p small enough keeps only the best token.
        for _ in 0..50 {
            assert_eq!(sample(&logits, 1.0, 0.1, &mut rng), 1);
        }
        // With top_p = 1 and a high temperature every token shows up eventually.
        let mut seen = [false; 4];
        for _ in 0..2000 {
            seen[sample(&logits, 5.0, 1.0, &mut rng) as usize] = true;
        }
        assert!(seen.iter().all(|&s| s), "{seen:?}");
        // Same seed, same sequence.
        let draw = |seed| {
            let mut r = StdRng::seed_from_u64(seed);
            (0..20).map(|_| sample(&logits, 1.0, 0.95, &mut r)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
    }
}
