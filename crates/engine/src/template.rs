//! Chat rendering. Until models' own Jinja templates are supported, every
//! model gets this documented fallback (Zephyr style):
//!
//! ```text
//! <|system|>\n{content}</s>\n<|user|>\n{content}</s>\n<|assistant|>\n
//! ```
//!
//! The model's BOS token id, if it has one, is prepended by the caller.

use sharenet_proto::ChatMessage;

pub(crate) fn render_fallback(messages: &[ChatMessage], eos: &str) -> String {
    let mut out = String::new();
    for m in messages {
        out.push_str("<|");
        out.push_str(&m.role);
        out.push_str("|>\n");
        out.push_str(&m.content);
        out.push_str(eos);
        out.push('\n');
    }
    out.push_str("<|assistant|>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_roles_in_order() {
        let msgs = vec![
            ChatMessage {
                role: "system".into(),
                content: "be brief".into(),
            },
            ChatMessage {
                role: "user".into(),
                content: "hi".into(),
            },
        ];
        assert_eq!(
            render_fallback(&msgs, "</s>"),
            "<|system|>\nbe brief</s>\n<|user|>\nhi</s>\n<|assistant|>\n"
        );
    }
}
