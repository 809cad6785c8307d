//! Python's `str()` and `repr()` of template values.
//!
//! jinja2 prints `{{ value }}` and `value|string` with `str()`, so a dict renders as
//! `{'a': True, 'b': None}` and a bool as `True`; minijinja's own printing would give
//! `{"a": true, "b": none}`. Templates do print such values (a tool result that is a
//! dict, an `enable_thinking` flag), so the printed form is part of the prompt.

use minijinja::value::{Value, ValueKind};
use unicode_categories::UnicodeCategories;

/// Appends `str(value)`: strings as they are, everything else as `repr`.
pub fn write_str(out: &mut String, value: &Value) {
    match value.kind() {
        ValueKind::Undefined => {}
        ValueKind::String => out.push_str(value.as_str().unwrap_or_default()),
        _ => write_repr(out, value),
    }
}

/// Appends `repr(value)`.
pub fn write_repr(out: &mut String, value: &Value) {
    match value.kind() {
        ValueKind::Undefined => out.push_str("Undefined"),
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number => write_number(out, value),
        ValueKind::String => write_str_repr(out, value.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            for (i, item) in value.try_iter().into_iter().flatten().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(out, &item);
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            for (i, key) in value.try_iter().into_iter().flatten().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(out, &key);
                out.push_str(": ");
                write_repr(out, &value.get_item(&key).unwrap_or_default());
            }
            out.push('}');
        }
        // Bytes, functions, macros, namespaces and the like: no Python form to copy.
        _ => out.push_str(&value.to_string()),
    }
}

/// Integers print as they are, floats as Python's shortest round-trip `repr`.
pub fn write_number(out: &mut String, value: &Value) {
    if value.is_integer() {
        out.push_str(&value.to_string());
    } else {
        match f64::try_from(value.clone()) {
            Ok(f) => out.push_str(&float_repr(f)),
            Err(_) => out.push_str(&value.to_string()),
        }
    }
}

/// Python's `repr(float)`: the shortest digits that round-trip, in fixed notation when
/// the decimal exponent is in [-4, 16), otherwise as `1e-07` / `1.5e+300`.
pub fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".to_string();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.to_string();
    }
    // Rust's `{:e}` is also shortest round-trip: "-1.2345e-7" -> digits "12345", exp -7.
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let mut out = String::with_capacity(digits.len() + 8);
    if f.is_sign_negative() {
        out.push('-');
    }
    if !(-4..16).contains(&exp) {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push_str(&format!(
            "e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        ));
        return out;
    }
    // Position of the decimal point within `digits`.
    let point = exp + 1;
    if point <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-point) as usize));
        out.push_str(&digits);
    } else if point as usize >= digits.len() {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', point as usize - digits.len()));
        out.push_str(".0");
    } else {
        out.push_str(&digits[..point as usize]);
        out.push('.');
        out.push_str(&digits[point as usize..]);
    }
    out
}

/// Python's `repr(str)`: single quotes unless the text has `'` and no `"`, and escapes
/// for the quote, backslash and non-printable characters.
fn write_str_repr(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if is_printable(c) => out.push(c),
            c if (c as u32) <= 0xff => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if (c as u32) <= 0xffff => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push(quote);
}

/// Python's `str.isprintable` for one character: not a control, format, private-use or
/// separator character, except the ASCII space. Unassigned code points count as printable
/// here (Python says no); the tables differ by Unicode version anyway.
fn is_printable(c: char) -> bool {
    if c.is_ascii() {
        return (' '..='~').contains(&c);
    }
    !(c.is_other_control() || c.is_other_format() || c.is_other_private_use() || c.is_separator())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_match_python_repr() {
        let cases = [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (-0.0, "-0.0"),
            (1e-7, "1e-07"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1.5e300, "1.5e+300"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (123456789.125, "123456789.125"),
            (-2.5, "-2.5"),
            (f64::INFINITY, "inf"),
        ];
        for (f, want) in cases {
            assert_eq!(float_repr(f), want, "repr({f:e})");
        }
    }

    fn repr(value: Value) -> String {
        let mut out = String::new();
        write_repr(&mut out, &value);
        out
    }

    #[test]
    fn strings_choose_quotes_and_escape_like_python() {
        assert_eq!(repr(Value::from("plain")), "'plain'");
        assert_eq!(repr(Value::from("it's")), "\"it's\"");
        assert_eq!(repr(Value::from("it's \"q\"")), "'it\\'s \"q\"'");
        assert_eq!(
            repr(Value::from("a\nb\\\u{1}\u{7f}")),
            "'a\\nb\\\\\\x01\\x7f'"
        );
        assert_eq!(
            repr(Value::from("é\u{a0}\u{2028}中😀")),
            "'é\\xa0\\u2028中😀'"
        );
    }

    #[test]
    fn containers_print_as_python_literals() {
        let value = Value::from(minijinja::value::Serde(
            serde_json::json!({"a": [1, 1.5, null, true], "b": "x"}),
        ));
        assert_eq!(repr(value), "{'a': [1, 1.5, None, True], 'b': 'x'}");
    }
}
