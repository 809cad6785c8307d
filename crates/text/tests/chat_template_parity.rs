//! Byte-for-byte parity with transformers' `apply_chat_template(..., tokenize=False)`.
//!
//! `fixtures/chat_templates/cases.json` is written by `scripts/make_template_fixtures.py`,
//! which renders every case with transformers itself (versions recorded in the file).

use std::path::{Path, PathBuf};

use moestream_text::{ChatTemplate, RenderRequest, TemplateError};
use serde_json::{Map, Value};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/chat_templates")
}

fn as_list(value: &Value) -> Option<&[Value]> {
    value.as_array().map(Vec::as_slice)
}

#[test]
fn every_case_matches_transformers() {
    let path = fixtures().join("cases.json");
    let text = std::fs::read_to_string(&path).expect("cases.json is committed");
    let file: Value = serde_json::from_str(&text).expect("cases.json is JSON");
    let cases = file["cases"].as_array().expect("cases is a list");
    assert!(
        cases.len() >= 25,
        "expected the full case set, got {}",
        cases.len()
    );

    let mut failures = Vec::new();
    for case in cases {
        let name = case["name"].as_str().expect("case name");
        let dir = fixtures()
            .join("models")
            .join(case["model_dir"].as_str().expect("model_dir"));
        let template = match ChatTemplate::from_model_dir(&dir) {
            Ok(Some(template)) => template,
            Ok(None) => panic!("{name}: no chat template in {}", dir.display()),
            Err(err) => panic!("{name}: {err}"),
        };
        let empty = Map::new();
        let request = RenderRequest {
            messages: as_list(&case["messages"]).expect("messages"),
            tools: as_list(&case["tools"]),
            documents: as_list(&case["documents"]),
            add_generation_prompt: case["add_generation_prompt"].as_bool().unwrap_or(false),
            extra: case["extra"].as_object().unwrap_or(&empty),
            template_name: case["template_name"].as_str(),
        };
        let result = template.render(&request);
        match (
            case.get("expected").and_then(Value::as_str),
            case.get("error").and_then(Value::as_str),
            result,
        ) {
            (Some(want), _, Ok(got)) if got == want => {}
            (Some(want), _, Ok(got)) => failures.push(format!(
                "{name}: output differs\n--- transformers\n{want:?}\n--- moestream\n{got:?}"
            )),
            (_, Some(want), Err(TemplateError::Raised { message, .. })) if message == want => {}
            (_, Some(want), other) => failures.push(format!(
                "{name}: expected raise_exception({want:?}), got {other:?}"
            )),
            (_, _, Err(err)) => failures.push(format!("{name}: unexpected error: {err}")),
            (None, None, _) => panic!("{name}: case has neither `expected` nor `error`"),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}
