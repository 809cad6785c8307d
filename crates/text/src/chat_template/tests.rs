//! Behaviour of the renderer that the Python parity fixtures do not pin down.

use serde_json::{json, Map, Value};

use super::*;

fn template(source: &str) -> ChatTemplate {
    ChatTemplate::from_sources(
        vec![TemplateSource {
            name: "default".into(),
            origin: "test.jinja".into(),
            source: source.into(),
        }],
        vec![("eos_token".into(), "</s>".into())],
    )
    .expect("compiles")
}

fn render(source: &str, messages: &[Value]) -> Result<String, TemplateError> {
    let extra = Map::new();
    template(source).render(&RenderRequest::new(messages, &extra))
}

#[test]
fn undefined_prints_empty_and_is_falsy_like_jinja2() {
    let out = render(
        "[{{ nope }}]{% if nope %}yes{% else %}no{% endif %}{% for x in nope %}x{% endfor %}\
         {{ messages[0].missing }}|{{ nope is defined }}",
        &[json!({"role": "user"})],
    )
    .expect("renders");
    assert_eq!(out, "[]no|False");
}

#[test]
fn attribute_of_undefined_is_an_error_like_jinja2() {
    let err = render("{{ nope.attr }}", &[]).expect_err("must fail");
    assert!(matches!(err, TemplateError::Render { .. }), "{err}");
    assert!(err.to_string().contains("test.jinja"), "{err}");
}

#[test]
fn raise_exception_carries_the_template_message() {
    let err = render("{{ raise_exception('roles must alternate') }}", &[]).expect_err("raises");
    match err {
        TemplateError::Raised { origin, message } => {
            assert_eq!(message, "roles must alternate");
            assert_eq!(origin, "test.jinja");
        }
        other => panic!("expected Raised, got {other}"),
    }
}

#[test]
fn strftime_now_formats_the_local_date() {
    let before = jiff::Zoned::now().strftime("%d %b %Y").to_string();
    let out = render("{{ strftime_now('%d %b %Y') }}", &[]).expect("renders");
    let after = jiff::Zoned::now().strftime("%d %b %Y").to_string();
    assert!(out == before || out == after, "{out}");
    assert_eq!(out.len(), "01 Jan 2025".len());
}

#[test]
fn python_string_methods_and_loop_controls_work() {
    let out = render(
        "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}\
         {{ m.content.strip().split(',')[1] }}|{{ m.content.startswith('  a') }}\
         |{% for k, v in m.items() %}{{ k }}={{ v | length }};{% endfor %}{% endfor %}",
        &[json!({"content": "  a,b  "}), json!({"content": "skipped"})],
    )
    .expect("renders");
    assert_eq!(out, "b|True|content=7;");
}

#[test]
fn trailing_newline_is_dropped_and_blocks_trimmed() {
    let out = render("{% if true %}\n  a\n{% endif %}\n", &[]).expect("renders");
    assert_eq!(out, "  a\n");
}

#[test]
fn special_tokens_are_variables_and_extras_override_them() {
    let tpl = template("{{ eos_token }}|{{ enable_thinking }}");
    let messages = [];
    let mut extra = Map::new();
    assert_eq!(
        tpl.render(&RenderRequest::new(&messages, &extra))
            .expect("renders"),
        "</s>|"
    );
    extra.insert("eos_token".into(), json!("<x>"));
    extra.insert("enable_thinking".into(), json!(false));
    assert_eq!(
        tpl.render(&RenderRequest::new(&messages, &extra))
            .expect("renders"),
        "<x>|False"
    );
}

#[test]
fn reserved_extras_are_refused() {
    let mut extra = Map::new();
    extra.insert("messages".into(), json!([]));
    let err = template("x")
        .render(&RenderRequest::new(&[], &extra))
        .expect_err("must fail");
    assert!(matches!(err, TemplateError::ReservedVariable { ref key } if key == "messages"));
}

#[test]
fn syntax_errors_name_the_origin() {
    let err = ChatTemplate::from_sources(
        vec![TemplateSource {
            name: "default".into(),
            origin: "broken.jinja".into(),
            source: "{% if %}".into(),
        }],
        Vec::new(),
    )
    .expect_err("must fail");
    assert!(matches!(err, TemplateError::Syntax { .. }));
    assert!(err.to_string().contains("broken.jinja"), "{err}");
}

#[test]
fn selection_follows_transformers() {
    let source = |name: &str| TemplateSource {
        name: name.into(),
        origin: format!("{name}.jinja"),
        source: name.into(),
    };
    let both = ChatTemplate::from_sources(vec![source("default"), source("tool_use")], Vec::new())
        .expect("compiles");
    assert_eq!(both.select(None, false).expect("select"), "default");
    assert_eq!(both.select(None, true).expect("select"), "tool_use");
    assert_eq!(
        both.select(Some("default"), true).expect("select"),
        "default"
    );
    assert!(matches!(
        both.select(Some("rag"), false),
        Err(TemplateError::UnknownTemplate { .. })
    ));

    let no_default =
        ChatTemplate::from_sources(vec![source("tool_use")], Vec::new()).expect("compiles");
    assert!(matches!(
        no_default.select(None, false),
        Err(TemplateError::NoDefault { .. })
    ));
    assert_eq!(no_default.select(None, true).expect("select"), "tool_use");
}

#[test]
fn non_object_message_is_refused() {
    let err = render("x", &[json!("hello")]).expect_err("must fail");
    assert!(matches!(err, TemplateError::MessageNotObject { index: 0 }));
}
