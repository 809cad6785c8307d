//! The minijinja environment configured like transformers' jinja2 sandbox.

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, UndefinedBehavior};

use super::{pyjson, pyrepr};

/// Marks an error raised by the template's own `raise_exception(message)`, so that it can
/// be told apart from a rendering failure and its message returned as the template wrote it.
#[derive(Debug)]
pub struct RaisedByTemplate(pub String);

impl std::fmt::Display for RaisedByTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedByTemplate {}

/// An environment with transformers' settings: `trim_blocks` and `lstrip_blocks` on,
/// `keep_trailing_newline` off (jinja2's default, which transformers leaves alone), loop
/// controls, lenient undefined values, Python-style printing, and the globals and filters
/// transformers adds (`raise_exception`, `strftime_now`, an HTML-unsafe `tojson`).
pub fn new_environment() -> Result<Environment<'static>, Error> {
    let mut env = Environment::new();
    let syntax = SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .keep_trailing_newline(false)
        .build()?;
    env.set_syntax(syntax);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    // jinja2's default Undefined: prints empty, is falsy, iterates as empty, but an
    // attribute of an undefined value is an error.
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.set_formatter(|out, _state, value| {
        let mut text = String::new();
        pyrepr::write_str(&mut text, value);
        out.write_str(&text).map_err(Error::from)
    });

    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    env.add_filter("tojson", tojson);
    env.add_filter("string", string);
    env.add_filter("length", length);
    env.add_filter("count", length);
    env.add_test("sequence", is_sequence);
    env.add_test("iterable", is_iterable);
    Ok(env)
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message.clone())
        .with_source(RaisedByTemplate(message)))
}

/// `datetime.now().strftime(format)`, in the machine's local time zone.
fn strftime_now(format: String) -> Result<String, Error> {
    let now = jiff::Zoned::now();
    jiff::fmt::strtime::format(format.as_bytes(), &now).map_err(|err| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now({format:?}): {err}"),
        )
    })
}

fn tojson(value: Value, args: &[Value], kwargs: Kwargs) -> Result<String, Error> {
    let options = pyjson::DumpOptions::from_args(args, &kwargs)?;
    pyjson::dumps(&value, &options)
}

/// jinja2's `string` filter is Python's `str()`.
fn string(value: Value) -> String {
    let mut out = String::new();
    pyrepr::write_str(&mut out, &value);
    out
}

/// jinja2's `length`: like minijinja's, but an undefined value has length 0.
fn length(value: Value) -> Result<usize, Error> {
    if value.is_undefined() {
        return Ok(0);
    }
    value.len().ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("object of type {} has no len()", value.kind()),
        )
    })
}

/// jinja2's `sequence` test: anything with a length and indexing, so strings, dicts and
/// (jinja2's Undefined having both) undefined values too.
fn is_sequence(value: Value) -> bool {
    matches!(
        value.kind(),
        ValueKind::String
            | ValueKind::Seq
            | ValueKind::Map
            | ValueKind::Bytes
            | ValueKind::Undefined
    )
}

/// jinja2's `iterable` test: strings, dicts and undefined values are iterable.
fn is_iterable(value: Value) -> bool {
    is_sequence(value.clone()) || value.kind() == ValueKind::Iterable
}
