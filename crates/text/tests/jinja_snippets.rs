//! One jinja2 feature per snippet, each rendered by transformers (`render_jinja_template`)
//! into `fixtures/chat_templates/snippets.json` by `scripts/make_template_fixtures.py`.
//!
//! Every snippet must match byte for byte, except the few listed in `KNOWN_DIFFERENCES`,
//! which must still differ: when one starts matching, the list is stale and the test says so.

use std::path::Path;

use moestream_text::{ChatTemplate, RenderRequest, TemplateError, TemplateSource};
use serde_json::Value;

/// Snippets where minijinja's semantics cannot be changed from outside, with the reason.
const KNOWN_DIFFERENCES: &[(&str, &str)] = &[(
    "snippet_18",
    "jinja2 `items`/`dictsort` yield Python tuples, printed `('a', 1)`; minijinja has no \
         tuples, so they print as lists",
)];

fn render(template: &str, context: &Value) -> Result<String, TemplateError> {
    let chat = ChatTemplate::from_sources(
        vec![TemplateSource {
            name: "default".into(),
            origin: "snippet".into(),
            source: template.into(),
        }],
        Vec::new(),
    )?;
    let messages = context["messages"].as_array().expect("messages");
    let extra = context["extra"].as_object().expect("extra");
    chat.render(&RenderRequest::new(messages, extra))
}

#[test]
fn snippets_match_jinja2_except_known_differences() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/chat_templates/snippets.json");
    let text = std::fs::read_to_string(&path).expect("snippets.json is committed");
    let file: Value = serde_json::from_str(&text).expect("snippets.json is JSON");
    let context = &file["context"];
    let snippets = file["snippets"].as_array().expect("snippets");
    assert!(snippets.len() >= 40, "expected the full snippet set");

    let mut problems = Vec::new();
    for snippet in snippets {
        let name = snippet["name"].as_str().expect("name");
        let template = snippet["template"].as_str().expect("template");
        let result = render(template, context);
        let matches = match (&snippet["expected"], &snippet["error"], &result) {
            (Value::String(want), _, Ok(got)) => want == got,
            (_, Value::Object(error), Err(err)) => match error["kind"].as_str() {
                // A raise must carry the template's message; other errors only need to be errors.
                Some("raise") => matches!(err, TemplateError::Raised { message, .. }
                    if Some(message.as_str()) == error["message"].as_str()),
                _ => true,
            },
            _ => false,
        };
        let known = KNOWN_DIFFERENCES.iter().any(|(n, _)| *n == name);
        match (matches, known) {
            (true, false) | (false, true) => {}
            (true, true) => problems.push(format!(
                "{name} now matches jinja2: remove it from KNOWN_DIFFERENCES"
            )),
            (false, false) => problems.push(format!(
                "{name}: {template:?}\n  jinja2:    {:?}\n  moestream: {result:?}",
                snippet.get("expected").or(snippet.get("error"))
            )),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
