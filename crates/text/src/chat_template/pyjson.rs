//! The `tojson` filter as transformers defines it: Python's
//! `json.dumps(x, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)`.
//!
//! minijinja's built-in `tojson` is HTML-safe (it escapes `<`, `>`, `&`, `'`) and
//! always compact; transformers replaces jinja2's filter precisely to avoid that, and tool
//! schemas rendered into prompts contain those characters.

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Error, ErrorKind};

use super::pyrepr;

/// The keyword arguments of `json.dumps` that transformers exposes.
#[derive(Debug, Clone)]
pub struct DumpOptions {
    pub ensure_ascii: bool,
    /// `None`: everything on one line. `Some(s)`: one item per line, `s` per level.
    pub indent: Option<String>,
    pub item_separator: String,
    pub key_separator: String,
    pub sort_keys: bool,
}

impl DumpOptions {
    /// Reads the filter's arguments. Positional ones follow transformers' signature
    /// `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
    pub fn from_args(args: &[Value], kwargs: &Kwargs) -> Result<Self, Error> {
        const NAMES: [&str; 4] = ["ensure_ascii", "indent", "separators", "sort_keys"];
        if args.len() > NAMES.len() {
            return Err(invalid("tojson takes at most 4 positional arguments"));
        }
        let mut values: [Value; 4] = Default::default();
        for (slot, arg) in values.iter_mut().zip(args) {
            *slot = arg.clone();
        }
        for (slot, name) in values.iter_mut().zip(NAMES) {
            if let Some(value) = kwargs.get::<Option<Value>>(name)? {
                *slot = value;
            }
        }
        kwargs.assert_all_used()?;
        let [ensure_ascii, indent, separators, sort_keys] = values;

        let indent = match indent.kind() {
            ValueKind::Undefined | ValueKind::None => None,
            ValueKind::String => Some(indent.as_str().unwrap_or_default().to_string()),
            // Python: ' ' * indent, so a negative indent means no spaces (but newlines).
            ValueKind::Number => Some(" ".repeat(indent.as_i64().unwrap_or(0).max(0) as usize)),
            _ => return Err(invalid("tojson: indent must be an integer or a string")),
        };
        // json.dumps drops the space after ',' when indenting, unless told otherwise.
        let (item_separator, key_separator) = match separators.kind() {
            ValueKind::Undefined | ValueKind::None if indent.is_some() => (",".into(), ": ".into()),
            ValueKind::Undefined | ValueKind::None => (", ".into(), ": ".into()),
            _ => {
                let pair: Vec<Value> = separators.try_iter()?.collect();
                match pair.as_slice() {
                    [item, key] => match (item.as_str(), key.as_str()) {
                        (Some(item), Some(key)) => (item.to_string(), key.to_string()),
                        _ => return Err(invalid("tojson: separators must be two strings")),
                    },
                    _ => return Err(invalid("tojson: separators must be two strings")),
                }
            }
        };
        Ok(Self {
            ensure_ascii: ensure_ascii.is_true(),
            indent,
            item_separator,
            key_separator,
            sort_keys: sort_keys.is_true(),
        })
    }
}

impl Default for DumpOptions {
    fn default() -> Self {
        Self {
            ensure_ascii: false,
            indent: None,
            item_separator: ", ".into(),
            key_separator: ": ".into(),
            sort_keys: false,
        }
    }
}

/// `json.dumps(value, **options)`.
pub fn dumps(value: &Value, options: &DumpOptions) -> Result<String, Error> {
    let mut out = String::new();
    Encoder {
        options,
        out: &mut out,
    }
    .value(value, 0)?;
    Ok(out)
}

struct Encoder<'a> {
    options: &'a DumpOptions,
    out: &'a mut String,
}

impl Encoder<'_> {
    fn value(&mut self, value: &Value, depth: usize) -> Result<(), Error> {
        match value.kind() {
            ValueKind::None => self.out.push_str("null"),
            ValueKind::Bool => self
                .out
                .push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number => self.number(value),
            ValueKind::String => self.string(value.as_str().unwrap_or_default()),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = value.try_iter()?.collect();
                self.container('[', ']', items.len(), depth, |enc, i| {
                    enc.value(&items[i], depth + 1)
                })?;
            }
            ValueKind::Map => {
                let mut entries = Vec::new();
                for key in value.try_iter()? {
                    let item = value.get_item(&key)?;
                    entries.push((key, item));
                }
                if self.options.sort_keys {
                    sort_entries(&mut entries)?;
                }
                self.container('{', '}', entries.len(), depth, |enc, i| {
                    let (key, item) = &entries[i];
                    enc.key(key)?;
                    enc.out.push_str(&enc.options.key_separator);
                    enc.value(item, depth + 1)
                })?;
            }
            _ => return Err(not_serializable(value)),
        }
        Ok(())
    }

    /// Writes `open items close`, one item per line when indenting. Empty containers are
    /// always `[]` / `{}`, as in Python.
    fn container(
        &mut self,
        open: char,
        close: char,
        len: usize,
        depth: usize,
        mut item: impl FnMut(&mut Self, usize) -> Result<(), Error>,
    ) -> Result<(), Error> {
        self.out.push(open);
        if len == 0 {
            self.out.push(close);
            return Ok(());
        }
        for i in 0..len {
            if i > 0 {
                self.out.push_str(&self.options.item_separator);
            }
            self.newline(depth + 1);
            item(self, i)?;
        }
        self.newline(depth);
        self.out.push(close);
        Ok(())
    }

    fn newline(&mut self, depth: usize) {
        if let Some(indent) = &self.options.indent {
            self.out.push('\n');
            for _ in 0..depth {
                self.out.push_str(indent);
            }
        }
    }

    fn number(&mut self, value: &Value) {
        if value.is_integer() {
            self.out.push_str(&value.to_string());
            return;
        }
        match f64::try_from(value.clone()) {
            Ok(f) if f.is_nan() => self.out.push_str("NaN"),
            Ok(f) if f.is_infinite() => {
                self.out
                    .push_str(if f > 0.0 { "Infinity" } else { "-Infinity" })
            }
            Ok(f) => self.out.push_str(&pyrepr::float_repr(f)),
            Err(_) => self.out.push_str(&value.to_string()),
        }
    }

    /// Python converts non-string keys: numbers to their text, `True` to `"true"`,
    /// `None` to `"null"`.
    fn key(&mut self, key: &Value) -> Result<(), Error> {
        match key.kind() {
            ValueKind::String => self.string(key.as_str().unwrap_or_default()),
            ValueKind::Number => {
                let mut text = String::new();
                pyrepr::write_number(&mut text, key);
                self.string(&text);
            }
            ValueKind::Bool => self.string(if key.is_true() { "true" } else { "false" }),
            ValueKind::None => self.string("null"),
            kind => {
                return Err(invalid(format!(
                    "keys must be str, int, float, bool or None, not {kind}"
                )))
            }
        }
        Ok(())
    }

    /// Python's string escaping: always `"`, `\` and control characters; with
    /// `ensure_ascii` also everything outside printable ASCII, as `\uXXXX` (surrogate
    /// pairs above U+FFFF).
    fn string(&mut self, s: &str) {
        let out = &mut *self.out;
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c if self.options.ensure_ascii && !(' '..='~').contains(&c) => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// `sorted(dict.items())`: keys of one kind sort naturally; Python refuses mixed kinds.
fn sort_entries(entries: &mut [(Value, Value)]) -> Result<(), Error> {
    if let Some((first, _)) = entries.first() {
        let kind = first.kind();
        if entries.iter().any(|(key, _)| key.kind() != kind) {
            return Err(invalid("tojson: sort_keys needs keys of one type"));
        }
    }
    entries.sort_by(|(a, _), (b, _)| a.cmp(b));
    Ok(())
}

fn not_serializable(value: &Value) -> Error {
    let name = match value.kind() {
        ValueKind::Undefined => "Undefined".to_string(),
        kind => kind.to_string(),
    };
    invalid(format!("Object of type {name} is not JSON serializable"))
}

fn invalid(msg: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::new(ErrorKind::InvalidOperation, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dump(json: serde_json::Value, options: DumpOptions) -> String {
        dumps(&Value::from(minijinja::value::Serde(json)), &options).expect("dumps")
    }

    #[test]
    fn default_is_python_compact_style_without_html_escapes() {
        let value =
            serde_json::json!({"b": "<a href='x'>&</a>", "a": [1, 2.0, null, true], "é": "中"});
        assert_eq!(
            dump(value, DumpOptions::default()),
            r#"{"b": "<a href='x'>&</a>", "a": [1, 2.0, null, true], "é": "中"}"#
        );
    }

    #[test]
    fn indent_uses_comma_without_space_and_keeps_empty_containers() {
        let options = DumpOptions {
            indent: Some("  ".into()),
            item_separator: ",".into(),
            ..DumpOptions::default()
        };
        let value = serde_json::json!({"a": [1, {}], "b": []});
        assert_eq!(
            dump(value, options),
            "{\n  \"a\": [\n    1,\n    {}\n  ],\n  \"b\": []\n}"
        );
    }

    #[test]
    fn ensure_ascii_escapes_with_surrogates() {
        let options = DumpOptions {
            ensure_ascii: true,
            ..DumpOptions::default()
        };
        assert_eq!(
            dump(serde_json::json!("é😀\u{7f}\u{1}"), options),
            r#""\u00e9\ud83d\ude00\u007f\u0001""#
        );
    }

    #[test]
    fn undefined_is_not_serializable() {
        let err = dumps(&Value::UNDEFINED, &DumpOptions::default()).expect_err("must fail");
        assert!(
            err.to_string()
                .contains("Undefined is not JSON serializable"),
            "{err}"
        );
    }
}
