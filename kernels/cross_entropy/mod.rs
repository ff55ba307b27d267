//! The language-model loss over the vocabulary, one cube per token row: for logits `x[rows,
//! vocab]` and next tokens `t[rows]`, the forward gives each row's log-sum-exp
//! `lse = max + log(sum(exp(x - max)))` and negative log-likelihood `lse - x[t]`; the backward
//! gives `dx = (exp(x - lse) - onehot(t)) g` for the row losses' gradient `g` (f32 on the
//! device, so no host round trip). f32 math inside whatever the storage dtype, as
//! transformers' `ForCausalLMLoss` upcasts the logits to f32 before `cross_entropy`.
//!
//! As Burn tensor ops (a cast to f32, `log_softmax`'s max, subtraction, exponential, sum and
//! log, the gather, and autodiff's scatter, exponential, product and cast back) the head of a
//! 7B step at 2,048 tokens spent 19.4 ms in f32 element-wise kernels over `[rows, 152,064]`
//! (H100, BENCHMARKS.md). Here the forward reads the logits once (the max and the sum are
//! taken online, one exponential per element) and keeps only `lse` for the backward, which
//! reads them once more and writes the gradient once.
//!
//! A target outside `[0, vocab)` gives a NaN loss for its row (the trainer stops on a
//! non-finite loss and says so) and a gradient without the one-hot term.

pub mod reference;

#[cfg(feature = "launch")]
pub(crate) mod kernel;
#[cfg(feature = "launch")]
pub use kernel::{cross_entropy_backward, cross_entropy_backward_into, cross_entropy_forward, cross_entropy_forward_into};

#[cfg(test)]
mod tests;
