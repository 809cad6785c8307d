//! Source rewrites that make minijinja parse a template the way jinja2 does.

/// Prepares a template source for minijinja:
///
/// * Every newline (`\r\n`, `\r`) becomes `\n`, as jinja2's lexer does for template text
///   and string literals alike.
/// * transformers' `{% generation %}` ... `{% endgeneration %}` extension tag (it only marks
///   assistant spans for training masks and renders its body unchanged) becomes
///   `{% if true %}` ... `{% endif %}`, which renders the same and, being a block tag too,
///   gets the same `-`/`+` whitespace control and trim/lstrip treatment.
pub fn prepare_source(source: &str) -> String {
    let normalized = source.replace("\r\n", "\n").replace('\r', "\n");
    rewrite_generation_tags(&normalized)
}

fn rewrite_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        match parse_generation_tag(tag) {
            Some((len, replacement)) => {
                out.push_str(&replacement);
                rest = &tag[len..];
            }
            None => {
                out.push_str("{%");
                rest = &tag[2..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// If `tag` starts with `{%[-+]? (end)?generation [-+]?%}`, returns its length and the
/// equivalent `if` tag with the same whitespace modifiers.
fn parse_generation_tag(tag: &str) -> Option<(usize, String)> {
    let body = &tag[2..];
    let (open_mod, body) = split_modifier(body);
    let trimmed = body.trim_start_matches([' ', '\t', '\n']);
    let (replacement, after_word) = if let Some(after) = trimmed.strip_prefix("endgeneration") {
        ("endif", after)
    } else if let Some(after) = trimmed.strip_prefix("generation") {
        ("if true", after)
    } else {
        return None;
    };
    let after_space = after_word.trim_start_matches([' ', '\t', '\n']);
    let (close_mod, after_mod) = split_modifier(after_space);
    // Anything else before `%}` (e.g. `generation_mode`) means this is not our tag.
    let after_close = after_mod.strip_prefix("%}")?;
    let len = tag.len() - after_close.len();
    Some((len, format!("{{%{open_mod} {replacement} {close_mod}%}}")))
}

fn split_modifier(s: &str) -> (&str, &str) {
    match s.as_bytes().first() {
        Some(b'-' | b'+') => (&s[..1], &s[1..]),
        _ => ("", s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newlines_are_normalized() {
        assert_eq!(prepare_source("a\r\nb\rc\n"), "a\nb\nc\n");
    }

    #[test]
    fn generation_tags_become_if_blocks_with_same_modifiers() {
        assert_eq!(
            prepare_source("{%- generation %}x{% endgeneration -%}"),
            "{%- if true %}x{% endif -%}"
        );
        assert_eq!(
            prepare_source("{%generation%}y{%+endgeneration%}"),
            "{% if true %}y{%+ endif %}"
        );
    }

    #[test]
    fn other_tags_are_untouched() {
        let src = "{% if generation_mode %}{% set generations = 1 %}{% endif %}{{ '{%' }}";
        assert_eq!(prepare_source(src), src);
    }
}
