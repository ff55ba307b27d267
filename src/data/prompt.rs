//! Chat formatting of a record and its tokenization with the training loss mask.
//!
//! ```text
//! <|im_start|>system\n{EXTRACTION_SYSTEM}<|im_end|>\n
//! <|im_start|>user\n{document}\n\n{instruction}<|im_end|>\n
//! <|im_start|>assistant\n{compact JSON answer}<|im_end|>\n
//! ```
//!
//! The document is the record's text, or [`IMAGE_PLACEHOLDER`] when the record has an image
//! (the image wins when a record has both; the VL processor expands the placeholder). The
//! answer is [`target_text`]: compact JSON, keys in the doc_type's order. Only the answer's
//! tokens and its `<|im_end|>` are trained on (`loss_mask`); the final newline is template.

use super::record::Record;
use super::schema::{canonical_json, default_instruction};
use super::DataError;
use crate::chat::{ChatTemplate, Message, Role};
use crate::tokenizer::Tokenizer;

/// The system turn of every extraction prompt.
pub const EXTRACTION_SYSTEM: &str =
    "You are a clinical information extraction assistant. Read the document and answer with one compact JSON object only.";

/// Where an image goes in the user turn (Qwen2.5-VL's vision tokens, one `image_pad` before
/// expansion by the processor).
pub const IMAGE_PLACEHOLDER: &str = "<|vision_start|><|image_pad|><|vision_end|>";

/// Marks a document cut to fit the token budget.
pub const TRUNCATION_MARK: &str = " [...]";

/// Token ids of one training example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Prompt followed by the answer, `<|im_end|>` and the closing newline.
    pub input_ids: Vec<u32>,
    /// `loss_mask[i]`: token `i` is an assistant token to be predicted (the answer JSON and
    /// its `<|im_end|>`); false for system/user/template tokens.
    pub loss_mask: Vec<bool>,
}

/// The instruction actually used for `rec` (its own, or the doc_type default).
pub fn instruction(rec: &Record) -> String {
    rec.instruction.clone().unwrap_or_else(|| default_instruction(&rec.doc_type, &rec.target))
}

fn render_prompt(template: &ChatTemplate, rec: &Record, document: &str) -> String {
    let user = format!("{document}\n\n{}", instruction(rec));
    template.render(&[Message::new(Role::System, EXTRACTION_SYSTEM), Message::new(Role::User, user)], true)
}

fn document(rec: &Record) -> &str {
    match (&rec.image, &rec.text) {
        (Some(_), _) => IMAGE_PLACEHOLDER,
        (None, Some(t)) => t.trim_end(),
        (None, None) => "",
    }
}

/// Chat text up to and including `<|im_start|>assistant\n` (what eval feeds to generation).
pub fn prompt_text(template: &ChatTemplate, rec: &Record) -> String {
    render_prompt(template, rec, document(rec))
}

/// The assistant answer: compact JSON, keys in the doc_type's fixed order.
pub fn target_text(rec: &Record) -> String {
    canonical_json(&rec.target, &rec.doc_type)
}

/// Tokenizes prompt + answer with the loss mask. When the whole does not fit `max_len`
/// tokens, the document text is cut from its end (at a character boundary, marked with
/// [`TRUNCATION_MARK`]) so the answer is never cut; a record that cannot fit even with an
/// empty document (or an image record that does not fit) is [`DataError::TooLong`].
pub fn encode_record(tok: &Tokenizer, template: &ChatTemplate, rec: &Record, max_len: usize) -> Result<Encoded, DataError> {
    let enc = |s: &str| tok.encode(s).map_err(|e| DataError::Tokenize { id: rec.id.clone(), problem: e.to_string() });
    let im_end = tok.token_id("<|im_end|>").ok_or(DataError::MissingToken { token: "<|im_end|>" })?;
    let mut answer = enc(&target_text(rec))?;
    answer.push(im_end);
    let tail = enc("\n")?;
    let fixed = answer.len() + tail.len();
    let doc = document(rec);
    let mut prompt = enc(&render_prompt(template, rec, doc))?;
    if prompt.len() + fixed > max_len {
        let too_long = |needed| DataError::TooLong { id: rec.id.clone(), needed, max_len };
        let empty = enc(&render_prompt(template, rec, TRUNCATION_MARK.trim_start()))?;
        if rec.image.is_some() || empty.len() + fixed > max_len {
            return Err(too_long(empty.len().min(prompt.len()) + fixed));
        }
        // Longest document prefix (in characters) whose prompt fits; token counts grow with
        // the prefix, so a binary search over character boundaries finds it.
        let bounds: Vec<usize> = doc.char_indices().map(|(i, _)| i).collect();
        // Prefix k = doc[..bounds[k]]; k = 0 (empty) fits, the whole document does not.
        let (mut lo, mut hi) = (0usize, bounds.len().saturating_sub(1));
        let mut best = empty;
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            let cut = format!("{}{TRUNCATION_MARK}", doc[..bounds[mid]].trim_end());
            let ids = enc(&render_prompt(template, rec, &cut))?;
            if ids.len() + fixed <= max_len {
                lo = mid;
                best = ids;
            } else {
                hi = mid - 1;
            }
        }
        prompt = best;
    }
    let mut loss_mask = vec![false; prompt.len()];
    loss_mask.extend(std::iter::repeat_n(true, answer.len()));
    loss_mask.extend(std::iter::repeat_n(false, tail.len()));
    let mut input_ids = prompt;
    input_ids.extend(answer);
    input_ids.extend(tail);
    Ok(Encoded { input_ids, loss_mask })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_document_then_instruction() {
        let t = ChatTemplate { default_system: "unused".into() };
        let mut rec = Record {
            id: "r1".into(),
            doc_type: "x".into(),
            text: Some("BP 120/80\n".into()),
            image: None,
            instruction: Some("Return bp.".into()),
            target: json!({"bp": "120/80"}),
        };
        assert_eq!(
            prompt_text(&t, &rec),
            format!("<|im_start|>system\n{EXTRACTION_SYSTEM}<|im_end|>\n<|im_start|>user\nBP 120/80\n\nReturn bp.<|im_end|>\n<|im_start|>assistant\n")
        );
        assert_eq!(target_text(&rec), r#"{"bp":"120/80"}"#);
        rec.image = Some("a.png".into());
        assert!(prompt_text(&t, &rec).contains(&format!("user\n{IMAGE_PLACEHOLDER}\n\nReturn bp.")));
    }
}
