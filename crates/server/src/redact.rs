//! What a client may see of a failure inside the engine: the model's name and a file's name
//! relative to the model directory, never a path of the server's file system. The full
//! message goes to the server's log.

use std::path::{Path, PathBuf};

/// Rewrites the model directories in messages to the models' names.
#[derive(Clone, Debug, Default)]
pub struct Redactor {
    /// (a spelling of a model directory, with no trailing separator; its name), longest
    /// spellings first.
    dirs: Vec<(String, String)>,
}

impl Redactor {
    /// `dirs`: each model directory and the name clients know it by.
    pub fn new<'a>(dirs: impl IntoIterator<Item = (&'a Path, &'a str)>) -> Self {
        let mut out = Vec::new();
        for (dir, name) in dirs {
            let mut spellings = vec![dir.to_path_buf()];
            if let Ok(cwd) = std::env::current_dir() {
                spellings.push(cwd.join(dir));
            }
            if let Ok(canonical) = dir.canonicalize() {
                spellings.push(canonical);
            }
            for s in spellings {
                let s = s.display().to_string();
                let s = s.trim_end_matches('/').to_string();
                if !s.is_empty() && !out.iter().any(|(d, _)| *d == s) {
                    out.push((s, name.to_string()));
                }
            }
        }
        out.sort_by_key(|(d, _)| std::cmp::Reverse(d.len()));
        Redactor { dirs: out }
    }

    /// `msg` with each model directory replaced by the model's name (a file in it reads
    /// `name/file`), and any other absolute path cut to its file name.
    pub fn redact(&self, msg: &str) -> String {
        let mut s = msg.to_string();
        for (dir, name) in &self.dirs {
            s = s.replace(dir.as_str(), name);
        }
        scrub_absolute_paths(&s)
    }

    /// `msg` with each model directory removed (a file in it reads as its relative path),
    /// for messages that name the model already.
    pub fn relative(&self, msg: &str) -> String {
        let mut s = msg.to_string();
        for (dir, _) in &self.dirs {
            s = s.replace(&format!("{dir}/"), "");
            s = s.replace(dir.as_str(), ".");
        }
        scrub_absolute_paths(&s)
    }
}

/// Replaces each absolute path (a `/` that starts a word and is followed by another `/`
/// before the word ends) with its last component.
fn scrub_absolute_paths(s: &str) -> String {
    let ends_word = |c: char| c.is_whitespace() || "\"'`()[]{}<>,;".contains(c);
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    let mut prev: Option<char> = None;
    while let Some(c) = rest.chars().next() {
        let starts_word = prev.is_none_or(ends_word);
        if c == '/' && starts_word {
            let end = rest.find(ends_word).unwrap_or(rest.len());
            let mut word = &rest[..end];
            // A path followed by ':' or '.' ends before them.
            let trimmed = word.trim_end_matches([':', '.']);
            let tail = &word[trimmed.len()..];
            word = trimmed;
            if word[1..].contains('/') {
                let file = PathBuf::from(word);
                let name = file
                    .file_name()
                    .map_or(String::new(), |n| n.to_string_lossy().into_owned());
                out.push_str(&name);
                out.push_str(tail);
                prev = tail.chars().last().or(name.chars().last()).or(Some('x'));
                rest = &rest[end..];
                continue;
            }
        }
        out.push(c);
        prev = Some(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_paths_become_the_model_name_and_other_paths_their_file_name() {
        let r = Redactor::new([
            (Path::new("/srv/models/Qwen3-30B"), "qwen"),
            (Path::new("/srv/models/draft/"), "draft"),
        ]);
        assert_eq!(
            r.redact("reading 12 bytes at offset 0 of /srv/models/Qwen3-30B/model-00002.safetensors: short read"),
            "reading 12 bytes at offset 0 of qwen/model-00002.safetensors: short read"
        );
        assert_eq!(
            r.redact("/srv/models/draft/model.safetensors: bad"),
            "draft/model.safetensors: bad"
        );
        assert_eq!(
            r.relative("chat template /srv/models/Qwen3-30B/tokenizer_config.json (chat_template)"),
            "chat template tokenizer_config.json (chat_template)"
        );
        assert_eq!(
            r.redact("cannot open '/etc/secret/dir/x.json': denied; see /var/log/a.log."),
            "cannot open 'x.json': denied; see a.log."
        );
        // Fractions, lone slashes and one-component words are not paths.
        assert_eq!(r.redact("1/2, a / b and /single"), "1/2, a / b and /single");
    }
}
