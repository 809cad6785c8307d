//! The input normalization transformers applies before rendering a conversation.

use serde_json::{Map, Value};

/// Names a message's reasoning may come under; the first is the one templates read.
const REASONING_FIELDS: [&str; 3] = ["reasoning_content", "thinking", "reasoning"];

/// A message that is not a JSON object, by position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotAnObject(pub usize);

/// Returns the messages as `apply_chat_template` hands them to the template:
///
/// * keys whose value is `null` are dropped (OpenAI clients send `"content": null`
///   with tool calls; templates test for a missing key, not for none);
/// * a message with reasoning under any of [`REASONING_FIELDS`] gets it under both
///   `reasoning_content` and `thinking` (gpt-oss templates read the latter), with
///   transformers' key order: `{"thinking": r, **message, "reasoning_content": r}`.
pub fn normalize_messages(messages: &[Value]) -> Result<Vec<Value>, NotAnObject> {
    messages
        .iter()
        .enumerate()
        .map(|(index, message)| {
            let object = message.as_object().ok_or(NotAnObject(index))?;
            let present: Map<String, Value> = object
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            Ok(Value::Object(alias_reasoning(present)))
        })
        .collect()
}

fn alias_reasoning(message: Map<String, Value>) -> Map<String, Value> {
    let Some(reasoning) = REASONING_FIELDS
        .iter()
        .find_map(|field| message.get(*field))
        .cloned()
    else {
        return message;
    };
    let mut aliased = Map::with_capacity(message.len() + 2);
    aliased.insert("thinking".to_string(), reasoning.clone());
    // Re-inserting an existing key keeps its first position, as a Python dict does.
    aliased.extend(message);
    aliased.insert("reasoning_content".to_string(), reasoning);
    aliased
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys(value: &Value) -> Vec<&str> {
        value
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default()
    }

    #[test]
    fn drops_null_fields() {
        let out = normalize_messages(&[json!({"role": "assistant", "content": null, "x": 1})])
            .expect("objects");
        assert_eq!(out[0], json!({"role": "assistant", "x": 1}));
    }

    #[test]
    fn aliases_reasoning_in_python_dict_order() {
        let out =
            normalize_messages(&[json!({"role": "assistant", "reasoning": "r", "content": "c"})])
                .expect("objects");
        assert_eq!(
            keys(&out[0]),
            [
                "thinking",
                "role",
                "reasoning",
                "content",
                "reasoning_content"
            ]
        );
        assert_eq!(out[0]["thinking"], "r");
        assert_eq!(out[0]["reasoning_content"], "r");

        // An existing `thinking` keeps its own value; `reasoning_content` wins the lookup.
        let out = normalize_messages(&[json!({"thinking": "t", "reasoning_content": "rc"})])
            .expect("objects");
        assert_eq!(keys(&out[0]), ["thinking", "reasoning_content"]);
        assert_eq!(out[0]["thinking"], "t");
    }

    #[test]
    fn rejects_non_objects() {
        assert_eq!(
            normalize_messages(&[json!({"role": "user"}), json!("hi")]),
            Err(NotAnObject(1))
        );
    }
}
