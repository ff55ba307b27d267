//! The Qwen ChatML template (`<|im_start|>role\ncontent<|im_end|>\n`), in Rust.
//!
//! Matches the Jinja `chat_template` shipped in Qwen2.5 / Qwen2.5-VL `tokenizer_config.json`
//! for conversations without tools: a system turn is always present (the checkpoint's default
//! when the caller gives none), and `add_generation_prompt` opens an assistant turn.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// Who speaks a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions for the assistant.
    System,
    /// The user's turn.
    User,
    /// The model's turn.
    Assistant,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Speaker.
    pub role: Role,
    /// Text of the turn.
    pub content: String,
}

impl Message {
    /// A turn with the given role and text.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self { role, content: content.into() }
    }
}

/// Qwen2.5 (text) default system prompt.
pub const QWEN25_DEFAULT_SYSTEM: &str = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";
/// Qwen2.5-VL default system prompt.
pub const QWEN25_VL_DEFAULT_SYSTEM: &str = "You are a helpful assistant.";

/// The ChatML template with the checkpoint's default system prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatTemplate {
    /// Used when the conversation does not start with a system turn.
    pub default_system: String,
}

impl ChatTemplate {
    /// Reads the default system prompt out of `<dir>/tokenizer_config.json`'s `chat_template`;
    /// without one (or without that file) the Qwen2.5-VL default is used.
    pub fn from_model_dir(dir: &Path) -> Self {
        let template = std::fs::read_to_string(dir.join("tokenizer_config.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("chat_template").and_then(|t| t.as_str()).map(str::to_owned))
            .unwrap_or_default();
        let default_system = if template.contains(QWEN25_DEFAULT_SYSTEM) {
            QWEN25_DEFAULT_SYSTEM
        } else {
            QWEN25_VL_DEFAULT_SYSTEM
        };
        Self { default_system: default_system.to_owned() }
    }

    /// Renders the conversation; with `add_generation_prompt` the text ends inside an open
    /// assistant turn (`<|im_start|>assistant\n`).
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> String {
        let mut out = String::new();
        if messages.first().is_none_or(|m| m.role != Role::System) {
            push_turn(&mut out, Role::System, &self.default_system);
        }
        for m in messages {
            push_turn(&mut out, m.role, &m.content);
        }
        if add_generation_prompt {
            out.push_str("<|im_start|>assistant\n");
        }
        out
    }

    /// `system` (or the default) + one user turn + the generation prompt.
    pub fn user_prompt(&self, system: Option<&str>, user: &str) -> String {
        let mut messages = Vec::new();
        if let Some(s) = system {
            messages.push(Message::new(Role::System, s));
        }
        messages.push(Message::new(Role::User, user));
        self.render(&messages, true)
    }
}

fn push_turn(out: &mut String, role: Role, content: &str) {
    out.push_str("<|im_start|>");
    out.push_str(role.as_str());
    out.push('\n');
    out.push_str(content);
    out.push_str("<|im_end|>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_the_jinja_template() {
        let t = ChatTemplate { default_system: QWEN25_DEFAULT_SYSTEM.into() };
        assert_eq!(
            t.user_prompt(None, "Hi"),
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n\
             <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let convo = [
            Message::new(Role::System, "Extract JSON."),
            Message::new(Role::User, "BP 120/80"),
            Message::new(Role::Assistant, "{\"bp\":\"120/80\"}"),
        ];
        assert_eq!(
            t.render(&convo, false),
            "<|im_start|>system\nExtract JSON.<|im_end|>\n<|im_start|>user\nBP 120/80<|im_end|>\n\
             <|im_start|>assistant\n{\"bp\":\"120/80\"}<|im_end|>\n"
        );
    }

    #[test]
    fn default_system_comes_from_the_checkpoint() {
        let dir = std::env::temp_dir().join(format!("medqlora-chat-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tokenizer_config.json"), r#"{"chat_template":"{% if x %}You are a helpful assistant.{% endif %}"}"#).unwrap();
        assert_eq!(ChatTemplate::from_model_dir(&dir).default_system, QWEN25_VL_DEFAULT_SYSTEM);
        std::fs::write(dir.join("tokenizer_config.json"), format!(r#"{{"chat_template":"{QWEN25_DEFAULT_SYSTEM}"}}"#)).unwrap();
        assert_eq!(ChatTemplate::from_model_dir(&dir).default_system, QWEN25_DEFAULT_SYSTEM);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
