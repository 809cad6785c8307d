//! A GGUF file's tokenizer (`tokenizer.ggml.*` metadata) as a Hugging Face `tokenizer.json`
//! document, built so that the `tokenizers` crate gives llama.cpp's token ids.
//!
//! Facts about the metadata and llama.cpp's behaviour are from llama.cpp's
//! `src/llama-vocab.cpp` (`llama_vocab::impl::load`, `llm_tokenizer_bpe`,
//! `llm_tokenizer_spm_session`, `tokenizer_st_partition`, `token_to_piece`) and
//! `gguf-py/gguf/constants.py` (key names, token types); the `tokenizer.json` layout is the
//! `tokenizers` crate's (0.23) serialization format.
//!
//! Two vocabulary models are supported:
//!
//! * `gpt2`: byte-level BPE with the file's merges. llama.cpp splits text with a list of
//!   regexes chosen by `tokenizer.ggml.pre`, each applied to the pieces the previous one left,
//!   with matches and the text between them both kept as pieces; that is a `Sequence` of
//!   `Split` pre-tokenizers with `Isolated` behaviour, then a byte-level mapping without its
//!   own regex. The regexes are llama.cpp's (its adapted forms where it rewrote the
//!   model's original one), not the Hugging Face originals, since llama.cpp's ids are the
//!   reference.
//! * `llama`: SentencePiece BPE (Llama 2, Mistral, Mixtral). llama.cpp merges, at each step,
//!   the adjacent pair whose concatenation is the vocabulary entry with the highest score
//!   (ties: leftmost). The equivalent BPE merge list has, for every entry, each split into
//!   two vocabulary entries, ranked by the entry's score; that is how Hugging Face's
//!   SentencePiece converter derives merges (transformers' `convert_slow_tokenizer.py`).
//!   Characters outside the vocabulary fall back to `<0xXX>` byte tokens; spaces become `▁`
//!   and, with `tokenizer.ggml.add_space_prefix` (default true), each piece of text between
//!   special tokens gets a leading `▁`, as llama.cpp prefixes every fragment that follows a
//!   special token or starts the text.
//!
//! In both, tokens of type control (3), user-defined (4) and unknown (2) become added tokens
//! matched in the text before the model runs, as llama.cpp's special-token partition does
//! with `parse_special`; control and unknown ones are `special` (skipped when decoding with
//! `skip_special_tokens`), user-defined ones are not (llama.cpp always renders them).

use std::collections::{BTreeSet, HashMap};

use moestream_gguf::{Gguf, GgufError, Value};
use serde_json::{json, Map, Value as Json};

/// Token types of `tokenizer.ggml.token_type` (gguf-py `TokenType`).
const TYPE_NORMAL: i64 = 1;
const TYPE_UNKNOWN: i64 = 2;
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;

/// SentencePiece's visible space.
const SPM_SPACE: &str = "\u{2581}";

/// The metadata keys read here (gguf-py `Keys.Tokenizer`).
mod key {
    pub const MODEL: &str = "tokenizer.ggml.model";
    pub const PRE: &str = "tokenizer.ggml.pre";
    pub const TOKENS: &str = "tokenizer.ggml.tokens";
    pub const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
    pub const SCORES: &str = "tokenizer.ggml.scores";
    pub const MERGES: &str = "tokenizer.ggml.merges";
    pub const BOS: &str = "tokenizer.ggml.bos_token_id";
    pub const EOS: &str = "tokenizer.ggml.eos_token_id";
    pub const EOT: &str = "tokenizer.ggml.eot_token_id";
    pub const EOM: &str = "tokenizer.ggml.eom_token_id";
    pub const UNK: &str = "tokenizer.ggml.unknown_token_id";
    pub const PAD: &str = "tokenizer.ggml.padding_token_id";
    pub const EOS_IDS: &str = "tokenizer.ggml.eos_token_ids";
    pub const ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
    pub const ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
    pub const ADD_SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";
    pub const CHAT_TEMPLATE: &str = "tokenizer.chat_template";
}

/// Which tokenizer algorithm the vocabulary uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VocabModel {
    /// Byte-level BPE (`gpt2`), with the `tokenizer.ggml.pre` name it was split by.
    ByteLevelBpe { pre: String },
    /// SentencePiece BPE (`llama`).
    SentencePieceBpe { add_space_prefix: bool },
}

/// What a GGUF file says about its tokenizer.
#[derive(Debug, Clone)]
pub struct GgufVocab {
    pub model: VocabModel,
    /// Token texts by id, as stored (byte-level symbols for `gpt2`, `▁` for `llama`).
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type` per id (all normal when absent).
    pub token_types: Vec<i64>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub unk_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
    /// Whether encoding with special tokens prepends BOS / appends EOS.
    pub add_bos: bool,
    pub add_eos: bool,
    /// Generation stops at any of these: EOS, EOT, EOM and `tokenizer.ggml.eos_token_ids`.
    pub eos_token_ids: BTreeSet<u32>,
    /// `tokenizer.chat_template` (a string), or, when named templates
    /// (`tokenizer.chat_template.NAME`) exist, a list of `{name, template}` with the plain
    /// one named `default`: the forms of `tokenizer_config.json`'s `chat_template`.
    pub chat_template: Option<Json>,
    /// The `tokenizer.json` document.
    tokenizer_json: Json,
}

impl GgufVocab {
    /// Reads the tokenizer metadata of `gguf`. Errors name the file and the key.
    pub fn read(gguf: &Gguf) -> Result<Self, GgufError> {
        let model_name = match gguf.get(key::MODEL) {
            None => {
                return Err(gguf.error(format!(
                    "no tokenizer: metadata {} is missing (the file carries no vocabulary)",
                    key::MODEL
                )))
            }
            Some(_) => gguf.require_str(key::MODEL)?,
        };
        let tokens = read_tokens(gguf)?;
        let n = tokens.len();
        let token_types = match gguf.get(key::TOKEN_TYPE) {
            None => vec![TYPE_NORMAL; n],
            Some(v) => number_array(gguf, key::TOKEN_TYPE, v, n, |v| v.as_i64())?,
        };

        // Defaults per model as llama.cpp's `load` sets them before reading the keys.
        let (model, mut defaults, mut add_bos, merges_or_scores) = match model_name {
            "gpt2" => {
                let pre = match gguf.get(key::PRE) {
                    None => {
                        eprintln!(
                            "warning: {}: metadata {} is missing; using llama.cpp's 'default' \
                             pre-tokenizer (tokenization may differ from the model's)",
                            gguf.path.display(),
                            key::PRE
                        );
                        "default".to_string()
                    }
                    Some(_) => gguf.require_str(key::PRE)?.to_string(),
                };
                let rules = pre_tokenizer(&pre).ok_or_else(|| {
                    gguf.error(format!(
                        "metadata {} is '{pre}', a pre-tokenizer this build does not know \
                         (llama.cpp refuses unknown ones too); known: {}",
                        key::PRE,
                        KNOWN_PRE.join(", ")
                    ))
                })?;
                let merges = read_merges(gguf)?;
                // llama.cpp: bos = eos = 11 for BPE vocabularies unless the file says
                // otherwise (glm4 has no BOS at all); add_bos only for the pre-tokenizers
                // that set it.
                let bos = if rules.no_bos { None } else { Some(11) };
                (
                    VocabModel::ByteLevelBpe { pre },
                    Specials {
                        bos,
                        eos: Some(11),
                        unk: None,
                        pad: None,
                    },
                    rules.add_bos,
                    ModelData::Merges(merges, rules),
                )
            }
            "llama" => {
                let add_space_prefix = optional_bool(gguf, key::ADD_SPACE_PREFIX)?.unwrap_or(true);
                let scores = match gguf.get(key::SCORES) {
                    None => vec![0.0; n],
                    Some(v) => number_array(gguf, key::SCORES, v, n, |v| v.as_f64())?,
                };
                (
                    VocabModel::SentencePieceBpe { add_space_prefix },
                    Specials {
                        bos: Some(1),
                        eos: Some(2),
                        unk: Some(0),
                        pad: None,
                    },
                    true,
                    ModelData::Scores(scores),
                )
            }
            other => {
                return Err(gguf.error(format!(
                    "metadata {} is '{other}': only 'gpt2' (byte-level BPE) and 'llama' \
                     (SentencePiece BPE) tokenizers are supported",
                    key::MODEL
                )))
            }
        };

        // llama.cpp disables defaults that fall outside the vocabulary; ids the file gives
        // must be inside it (llama.cpp warns and keeps the default; a file naming a token
        // it lacks is broken, and stopping on a wrong token would be worse than refusing).
        for slot in [
            &mut defaults.bos,
            &mut defaults.eos,
            &mut defaults.unk,
            &mut defaults.pad,
        ] {
            if slot.is_some_and(|id| id as usize >= n) {
                *slot = None;
            }
        }
        let bos_token_id = token_id(gguf, key::BOS, n)?.or(defaults.bos);
        let eos_token_id = token_id(gguf, key::EOS, n)?.or(defaults.eos);
        let unk_token_id = token_id(gguf, key::UNK, n)?.or(defaults.unk);
        let pad_token_id = token_id(gguf, key::PAD, n)?.or(defaults.pad);
        let eot = token_id(gguf, key::EOT, n)?;
        let eom = token_id(gguf, key::EOM, n)?;

        if let Some(v) = optional_bool(gguf, key::ADD_BOS)? {
            add_bos = v;
        }
        let add_eos = optional_bool(gguf, key::ADD_EOS)?.unwrap_or(false);
        for (add, id, add_key, id_key) in [
            (add_bos, bos_token_id, key::ADD_BOS, key::BOS),
            (add_eos, eos_token_id, key::ADD_EOS, key::EOS),
        ] {
            if add && id.is_none() {
                return Err(gguf.error(format!("{add_key} is true, but {id_key} is not set")));
            }
        }

        let mut eos_token_ids: BTreeSet<u32> =
            [eos_token_id, eot, eom].into_iter().flatten().collect();
        if let Some(v) = gguf.get(key::EOS_IDS) {
            let ids = number_array(gguf, key::EOS_IDS, v, usize::MAX, |v| v.as_u64())?;
            for id in ids {
                if id as usize >= n {
                    return Err(gguf.error(format!(
                        "metadata {} holds token id {id}, outside the vocabulary of {n} tokens",
                        key::EOS_IDS
                    )));
                }
                eos_token_ids.insert(id as u32);
            }
        }

        let chat_template = chat_template(gguf)?;

        let specials = Specials {
            bos: bos_token_id,
            eos: eos_token_id,
            unk: unk_token_id,
            pad: pad_token_id,
        };
        let tokenizer_json = match merges_or_scores {
            ModelData::Merges(merges, rules) => {
                byte_level_json(&tokens, &token_types, &merges, &rules)
            }
            ModelData::Scores(scores) => {
                let VocabModel::SentencePieceBpe { add_space_prefix } = model else {
                    unreachable!("scores come with the llama model")
                };
                spm_json(&tokens, &token_types, &scores, add_space_prefix, &specials)
            }
        };
        let tokenizer_json =
            with_post_processor(tokenizer_json, &tokens, add_bos, add_eos, &specials);

        Ok(Self {
            model,
            tokens,
            token_types,
            bos_token_id,
            eos_token_id,
            unk_token_id,
            pad_token_id,
            add_bos,
            add_eos,
            eos_token_ids,
            chat_template,
            tokenizer_json,
        })
    }

    /// The `tokenizer.json` document for the `tokenizers` crate.
    pub fn tokenizer_json(&self) -> &Json {
        &self.tokenizer_json
    }

    /// The text of token `id`, if it is in the vocabulary.
    pub fn token_text(&self, id: Option<u32>) -> Option<&str> {
        self.tokens.get(id? as usize).map(String::as_str)
    }

    /// `(name, content)` of the named special tokens that are set (`bos_token`,
    /// `eos_token`, `unk_token`, `pad_token`), as `tokenizer_config.json` would name them for
    /// chat templates.
    pub fn special_tokens(&self) -> Vec<(String, String)> {
        [
            ("bos_token", self.bos_token_id),
            ("eos_token", self.eos_token_id),
            ("unk_token", self.unk_token_id),
            ("pad_token", self.pad_token_id),
        ]
        .into_iter()
        .filter_map(|(name, id)| Some((name.to_string(), self.token_text(id)?.to_string())))
        .collect()
    }
}

struct Specials {
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
}

enum ModelData {
    Merges(Vec<(String, String)>, PreTokenizer),
    Scores(Vec<f64>),
}

/// The token list; empty entries get llama.cpp's `[EMPTY_i]` name, duplicates are an error
/// (as in llama.cpp: the text-to-id map could not hold both).
fn read_tokens(gguf: &Gguf) -> Result<Vec<String>, GgufError> {
    let v = gguf.require(key::TOKENS)?;
    let items = v.as_array().ok_or_else(|| {
        gguf.error(format!(
            "metadata {} is a {}, expected an array of strings",
            key::TOKENS,
            v.type_name()
        ))
    })?;
    if items.is_empty() {
        return Err(gguf.error(format!("metadata {} is empty", key::TOKENS)));
    }
    if u32::try_from(items.len()).is_err() {
        return Err(gguf.error(format!("metadata {} has too many tokens", key::TOKENS)));
    }
    let mut tokens = Vec::with_capacity(items.len());
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let text = item.as_str().ok_or_else(|| {
            gguf.error(format!(
                "metadata {} entry {i} is a {}, expected a string",
                key::TOKENS,
                item.type_name()
            ))
        })?;
        if !text.is_empty() {
            if let Some(first) = seen.insert(text, i) {
                return Err(gguf.error(format!(
                    "metadata {}: token {text:?} appears twice, as ids {first} and {i}",
                    key::TOKENS
                )));
            }
        }
        tokens.push(text.to_string());
    }
    for (i, t) in tokens.iter_mut().enumerate() {
        if t.is_empty() {
            *t = format!("[EMPTY_{i}]");
        }
    }
    Ok(tokens)
}

/// A per-token array of numbers, which must have one entry per token (`n`), or any length
/// when `n` is `usize::MAX`.
fn number_array<T>(
    gguf: &Gguf,
    key: &str,
    v: &Value,
    n: usize,
    get: impl Fn(&Value) -> Option<T>,
) -> Result<Vec<T>, GgufError> {
    let items = v.as_array().ok_or_else(|| {
        gguf.error(format!(
            "metadata {key} is a {}, expected an array",
            v.type_name()
        ))
    })?;
    if n != usize::MAX && items.len() != n {
        return Err(gguf.error(format!(
            "metadata {key} has {} entries but {} has {n}: one per token is needed",
            items.len(),
            key::TOKENS
        )));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            get(item).ok_or_else(|| {
                gguf.error(format!(
                    "metadata {key} entry {i} is {item:?}, not a number of the expected kind"
                ))
            })
        })
        .collect()
}

fn optional_bool(gguf: &Gguf, key: &str) -> Result<Option<bool>, GgufError> {
    match gguf.get(key) {
        None => Ok(None),
        Some(v) => v.as_bool().map(Some).ok_or_else(|| {
            gguf.error(format!(
                "metadata {key} is a {}, expected a bool",
                v.type_name()
            ))
        }),
    }
}

/// A token id key, checked against the vocabulary size `n`.
fn token_id(gguf: &Gguf, key: &str, n: usize) -> Result<Option<u32>, GgufError> {
    let Some(v) = gguf.get(key) else {
        return Ok(None);
    };
    let id = v
        .as_u64()
        .ok_or_else(|| gguf.error(format!("metadata {key} is {v:?}, expected a token id")))?;
    if id >= n as u64 {
        return Err(gguf.error(format!(
            "metadata {key} is {id}, outside the vocabulary of {n} tokens"
        )));
    }
    Ok(Some(id as u32))
}

/// The merges, split as llama.cpp does: at the first space after the first byte.
fn read_merges(gguf: &Gguf) -> Result<Vec<(String, String)>, GgufError> {
    let v = gguf.get(key::MERGES).ok_or_else(|| {
        gguf.error(format!(
            "metadata {} is missing (a 'gpt2' tokenizer needs its BPE merges)",
            key::MERGES
        ))
    })?;
    let items = v.as_array().ok_or_else(|| {
        gguf.error(format!(
            "metadata {} is a {}, expected an array of strings",
            key::MERGES,
            v.type_name()
        ))
    })?;
    let mut merges = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let s = item.as_str().ok_or_else(|| {
            gguf.error(format!(
                "metadata {} entry {i} is a {}, expected a string",
                key::MERGES,
                item.type_name()
            ))
        })?;
        let split = s
            .char_indices()
            .skip(1)
            .find(|&(_, c)| c == ' ')
            .map(|(at, _)| (&s[..at], &s[at + 1..]));
        match split {
            Some((a, b)) if !b.is_empty() => merges.push((a.to_string(), b.to_string())),
            _ => {
                return Err(gguf.error(format!(
                    "metadata {} entry {i} is {s:?}, not two tokens separated by a space",
                    key::MERGES
                )))
            }
        }
    }
    Ok(merges)
}

/// `tokenizer.chat_template`, plus named ones (`tokenizer.chat_template.NAME`).
fn chat_template(gguf: &Gguf) -> Result<Option<Json>, GgufError> {
    let as_text = |k: &str, v: &Value| {
        v.as_str().map(str::to_string).ok_or_else(|| {
            gguf.error(format!(
                "metadata {k} is a {}, expected a string",
                v.type_name()
            ))
        })
    };
    let default = match gguf.get(key::CHAT_TEMPLATE) {
        Some(v) => Some(as_text(key::CHAT_TEMPLATE, v)?),
        None => None,
    };
    let prefix = format!("{}.", key::CHAT_TEMPLATE);
    let mut named = Vec::new();
    for (k, v) in gguf.metadata.range(prefix.clone()..) {
        let Some(name) = k.strip_prefix(&prefix) else {
            break;
        };
        named.push(json!({"name": name, "template": as_text(k, v)?}));
    }
    if named.is_empty() {
        return Ok(default.map(Json::String));
    }
    let mut all = Vec::new();
    if let Some(source) = default {
        all.push(json!({"name": "default", "template": source}));
    }
    all.extend(named);
    Ok(Some(Json::Array(all)))
}

// ------------------------------------------------------------------ pre-tokenizers

/// How llama.cpp splits text for one `tokenizer.ggml.pre` value.
struct PreTokenizer {
    regexes: &'static [&'static str],
    /// A word that is a whole vocabulary entry is taken as is (llama.cpp `ignore_merges`,
    /// the `tokenizers` BPE option of the same name).
    ignore_merges: bool,
    /// Default of `add_bos_token`.
    add_bos: bool,
    /// The vocabulary has no BOS by default.
    no_bos: bool,
}

/// The `tokenizer.ggml.pre` values understood, for the error message.
const KNOWN_PRE: &[&str] = &[
    "default",
    "gpt-2",
    "llama3",
    "llama-v3",
    "llama-bpe",
    "falcon3",
    "dbrx",
    "smaug-bpe",
    "qwen2",
    "deepseek-r1-qwen",
    "megrez",
    "stablelm2",
    "smollm",
    "starcoder",
    "refact",
    "command-r",
    "codeshell",
    "exaone",
    "olmo",
    "mpt",
    "phi-2",
    "deepseek-llm",
    "deepseek-coder",
    "deepseek-v3",
    "glm4",
    "chatglm-bpe",
    "gpt-4o",
    "llama4",
];

// The regexes below are llama.cpp's (`llm_tokenizer_bpe`'s constructor in
// src/llama-vocab.cpp), written as Rust raw strings.

/// GPT-2's split.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

/// Llama 3's split, with llama.cpp's case-insensitive contractions spelled out.
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's: Llama 3's with single digits.
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// llama.cpp's adaptation of GPT-4o's (o200k) split: upper/lower-case letter classes written
/// with lookaheads (`[^a-z]` / `[^A-Z]` among letters), as llama.cpp runs it.
const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const DEFAULT_RULES: &[&str] = &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"];

const SMOLLM_RULES: &[&str] = &[r"\p{N}", GPT2];

const DEEPSEEK_LLM_RULES: &[&str] = &[
    "[\r\n]",
    "\\s?[A-Za-z\u{b5}\u{c0}-\u{d6}\u{d8}-\u{f6}\u{f8}-\u{1ba}\u{1bc}-\u{1bf}\u{1c4}-\u{293}\u{295}-\u{2af}\u{370}-\u{373}\u{376}\u{377}\u{37b}-\u{37d}\u{37f}\u{386}\u{388}-\u{38a}\u{38c}\u{38e}-\u{3a1}\u{3a3}-\u{3f5}\u{3f7}-\u{481}\u{48a}-\u{52f}\u{531}-\u{556}\u{10a0}-\u{10c5}\u{13a0}-\u{13f5}\u{13f8}-\u{13fd}\u{1c90}-\u{1cba}\u{1cbd}-\u{1cbf}\u{1d00}-\u{1d2b}\u{1d6b}-\u{1d77}\u{1d79}-\u{1d9a}\u{1e00}-\u{1f15}\u{1f18}-\u{1f1d}\u{1f20}-\u{1f45}\u{1f48}-\u{1f4d}\u{1f50}-\u{1f57}\u{1f59}\u{1f5b}\u{1f5d}\u{1f5f}-\u{1f7d}\u{1f80}-\u{1fb4}\u{1fb6}-\u{1fbc}\u{1fbe}\u{1fc2}-\u{1fc4}\u{1fc6}-\u{1fcc}\u{1fd0}-\u{1fd3}\u{1fd6}-\u{1fdb}\u{1fe0}-\u{1fec}\u{1ff2}-\u{1ff4}\u{1ff6}-\u{1ffc}\u{2102}\u{2107}\u{210a}-\u{2113}\u{2115}\u{2119}-\u{211d}\u{2124}\u{2126}\u{2128}\u{212a}-\u{212d}\u{212f}-\u{2134}\u{2139}\u{213c}-\u{213f}\u{2145}-\u{2149}\u{214e}\u{2183}\u{2184}\u{2c00}-\u{2c7b}\u{2c7e}-\u{2ce4}\u{2ceb}-\u{2cee}\u{2cf2}\u{2cf3}\u{a640}-\u{a66d}\u{a680}-\u{a69b}\u{a722}-\u{a76f}\u{a771}-\u{a787}\u{a78b}-\u{a78e}\u{ab70}-\u{abbf}\u{fb00}-\u{fb06}\u{fb13}-\u{fb17}\u{ff21}-\u{ff3a}\u{ff41}-\u{ff5a}\u{10400}-\u{1044f}\u{104b0}-\u{104d3}\u{104d8}-\u{104fb}\u{10c80}-\u{10cb2}\u{10cc0}-\u{10cf2}\u{118a0}-\u{118df}\u{1e900}-\u{1e943}]+",
    "\\s?[!-/:-~\u{ff01}-\u{ff0f}\u{ff1a}-\u{ff5e}\u{2018}-\u{201f}\u{3000}-\u{3002}]+",
    "\\s+$",
    "[\u{4e00}-\u{9fa5}\u{800}-\u{4e00}\u{ac00}-\u{d7ff}]+",
    "\\p{N}+",
];

const DEEPSEEK_CODER_RULES: &[&str] = &[
    "[\r\n]",
    "\\s?\\p{L}+",
    "\\s?\\p{P}+",
    "[\u{4e00}-\u{9fa5}\u{800}-\u{4e00}\u{ac00}-\u{d7ff}]+",
    "\\p{N}",
];

const DEEPSEEK_V3_RULES: &[&str] = &[
    "\\p{N}{1,3}",
    "[\u{4e00}-\u{9fa5}\u{3040}-\u{309f}\u{30a0}-\u{30ff}]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
];

/// llama.cpp's pre-tokenizer for `pre` (its `tokenizer_pre` to `pre_type` mapping in
/// `llama_vocab::impl::load`), or `None` for one not supported here.
fn pre_tokenizer(pre: &str) -> Option<PreTokenizer> {
    let rules = |regexes| PreTokenizer {
        regexes,
        ignore_merges: false,
        add_bos: false,
        no_bos: false,
    };
    Some(match pre {
        "default" => rules(DEFAULT_RULES),
        // "gpt2" is not llama.cpp's name ("gpt-2"), but means the same to anyone writing it.
        "gpt-2" | "gpt2" | "phi-2" | "mpt" | "olmo" => rules(&[GPT2]),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" => PreTokenizer {
            ignore_merges: true,
            add_bos: true,
            ..rules(&[LLAMA3])
        },
        "dbrx" | "smaug-bpe" => rules(&[LLAMA3]),
        "qwen2" | "deepseek-r1-qwen" | "megrez" | "stablelm2" => rules(&[QWEN2]),
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" => {
            rules(SMOLLM_RULES)
        }
        "deepseek-llm" => rules(DEEPSEEK_LLM_RULES),
        "deepseek-coder" => rules(DEEPSEEK_CODER_RULES),
        "deepseek-v3" => rules(DEEPSEEK_V3_RULES),
        "glm4" | "chatglm-bpe" => PreTokenizer {
            no_bos: true,
            ..rules(&[LLAMA3])
        },
        "gpt-4o" | "llama4" => rules(&[GPT4O]),
        _ => return None,
    })
}

// ------------------------------------------------------------------ tokenizer.json

/// Added tokens: control, user-defined and unknown types (llama.cpp's special-token cache).
fn added_tokens(tokens: &[String], types: &[i64]) -> Vec<Json> {
    tokens
        .iter()
        .zip(types)
        .enumerate()
        .filter(|(_, (_, &ty))| matches!(ty, TYPE_CONTROL | TYPE_USER_DEFINED | TYPE_UNKNOWN))
        .map(|(id, (content, &ty))| {
            json!({
                "id": id,
                "content": content,
                "single_word": false,
                "lstrip": false,
                "rstrip": false,
                // Matched in the raw text, before any normalizer, as llama.cpp matches them.
                "normalized": false,
                "special": ty != TYPE_USER_DEFINED,
            })
        })
        .collect()
}

fn vocab_map(tokens: &[String]) -> Map<String, Json> {
    tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.clone(), Json::from(id)))
        .collect()
}

fn bpe_model(
    tokens: &[String],
    merges: Vec<Json>,
    unk: Option<&str>,
    byte_fallback: bool,
    ignore_merges: bool,
) -> Json {
    json!({
        "type": "BPE",
        "dropout": null,
        "unk_token": unk,
        "continuing_subword_prefix": null,
        "end_of_word_suffix": null,
        "fuse_unk": byte_fallback,
        "byte_fallback": byte_fallback,
        "ignore_merges": ignore_merges,
        "vocab": vocab_map(tokens),
        "merges": merges,
    })
}

fn byte_level_json(
    tokens: &[String],
    types: &[i64],
    merges: &[(String, String)],
    rules: &PreTokenizer,
) -> Json {
    // A merge whose parts or result are not tokens can never yield a token: llama.cpp would
    // merge and then spell the result out in bytes, `tokenizers` refuses to load it. Such
    // merges do not occur in converted models; they are dropped.
    let known: std::collections::HashSet<&str> = tokens.iter().map(String::as_str).collect();
    let merges: Vec<Json> = merges
        .iter()
        .filter(|(a, b)| {
            known.contains(a.as_str())
                && known.contains(b.as_str())
                && known.contains(format!("{a}{b}").as_str())
        })
        .map(|(a, b)| json!([a, b]))
        .collect();
    let mut pre: Vec<Json> = rules
        .regexes
        .iter()
        .map(|r| {
            json!({
                "type": "Split",
                "pattern": {"Regex": r},
                "behavior": "Isolated",
                "invert": false,
            })
        })
        .collect();
    pre.push(json!({
        "type": "ByteLevel",
        "add_prefix_space": false,
        "trim_offsets": false,
        "use_regex": false,
    }));
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens(tokens, types),
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": pre},
        "post_processor": null,
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": false,
            "trim_offsets": false,
            "use_regex": false,
        },
        "model": bpe_model(tokens, merges, None, false, rules.ignore_merges),
    })
}

/// The merges equivalent to llama.cpp's SentencePiece BPE: for every token, each split into
/// two tokens, ordered by the token's score (highest first; equal scores by id), then by
/// the ranks of the two parts.
fn spm_merges(tokens: &[String], scores: &[f64]) -> Vec<Json> {
    let id_of: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut order: Vec<usize> = (0..tokens.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut rank = vec![0usize; tokens.len()];
    for (r, &id) in order.iter().enumerate() {
        rank[id] = r;
    }
    let mut merges = Vec::new();
    for (id, text) in tokens.iter().enumerate() {
        for (at, _) in text.char_indices().skip(1) {
            let (left, right) = text.split_at(at);
            if let (Some(&l), Some(&r)) = (id_of.get(left), id_of.get(right)) {
                merges.push((rank[id], rank[l], rank[r], l, r));
            }
        }
    }
    merges.sort_unstable();
    merges
        .into_iter()
        .map(|(_, _, _, l, r)| json!([tokens[l], tokens[r]]))
        .collect()
}

fn spm_json(
    tokens: &[String],
    types: &[i64],
    scores: &[f64],
    add_space_prefix: bool,
    specials: &Specials,
) -> Json {
    let mut normalizers = Vec::new();
    if add_space_prefix {
        normalizers.push(json!({"type": "Prepend", "prepend": SPM_SPACE}));
    }
    normalizers.push(json!({
        "type": "Replace",
        "pattern": {"String": " "},
        "content": SPM_SPACE,
    }));
    // Decoding as Hugging Face's Llama tokenizer: `▁` to space, byte tokens to bytes, and
    // the one leading space the prefix added dropped.
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": SPM_SPACE}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if add_space_prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    let unk = specials.unk.map(|id| tokens[id as usize].as_str());
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens(tokens, types),
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": bpe_model(tokens, spm_merges(tokens, scores), unk, true, false),
    })
}

/// BOS / EOS added by `encode(.., add_special_tokens = true)`, through a
/// `TemplateProcessing` post-processor.
fn with_post_processor(
    mut doc: Json,
    tokens: &[String],
    add_bos: bool,
    add_eos: bool,
    specials: &Specials,
) -> Json {
    let bos = add_bos.then_some(specials.bos).flatten();
    let eos = add_eos.then_some(specials.eos).flatten();
    if bos.is_none() && eos.is_none() {
        return doc;
    }
    let special = |id: u32| json!({"SpecialToken": {"id": tokens[id as usize], "type_id": 0}});
    let sequence = |name: &str| json!({"Sequence": {"id": name, "type_id": 0}});
    let mut single = Vec::new();
    let mut pair = Vec::new();
    for (out, names) in [(&mut single, &["A"][..]), (&mut pair, &["A", "B"][..])] {
        for name in names {
            out.extend(bos.map(special));
            out.push(sequence(name));
            out.extend(eos.map(special));
        }
    }
    let mut map = Map::new();
    for id in [bos, eos].into_iter().flatten() {
        let text = &tokens[id as usize];
        map.insert(
            text.clone(),
            json!({"id": text, "ids": [id], "tokens": [text]}),
        );
    }
    doc["post_processor"] = json!({
        "type": "TemplateProcessing",
        "single": single,
        "pair": pair,
        "special_tokens": map,
    });
    doc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::TempDir;
    use crate::{BundleError, TokenizerBundle};
    use moestream_gguf::GgufWriter;
    use std::path::PathBuf;

    const BYTE: i64 = 6;

    fn strings(items: &[&str]) -> Value {
        Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect())
    }

    fn ints(items: &[i64]) -> Value {
        Value::Array(items.iter().map(|&t| Value::I32(t as i32)).collect())
    }

    fn floats(items: &[f32]) -> Value {
        Value::Array(items.iter().map(|&s| Value::F32(s)).collect())
    }

    /// Writes a GGUF holding `meta` (and no tensors) into `dir`.
    fn write(dir: &TempDir, meta: &[(&str, Value)]) -> PathBuf {
        let mut w = GgufWriter::new();
        w.meta("general.architecture", Value::String("llama".into()));
        for (k, v) in meta {
            w.meta(k, v.clone());
        }
        let path = dir.path().join("model.gguf");
        w.write(&path).expect("write gguf");
        path
    }

    /// GPT-2's printable stand-in for each byte (byte-level BPE).
    fn byte_symbol(b: u8) -> char {
        let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        if printable(b) {
            return char::from(b);
        }
        let shifted = (0..b).filter(|&x| !printable(x)).count() as u32;
        char::from_u32(256 + shifted).expect("below U+0200")
    }

    /// A byte-level vocabulary: the 256 byte symbols, a few merged words, then a control
    /// token `<|end|>`, a user-defined `<think>` and `<|bos|>` (control).
    fn gpt2_meta(extra: &[(&str, Value)]) -> Vec<(&'static str, Value)> {
        let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_symbol(b).to_string()).collect();
        let merges = ["h i", "Ġ hi", "Ġhi !"];
        for m in merges {
            tokens.push(m.replace(' ', ""));
        }
        let mut types = vec![1; tokens.len()];
        for (t, ty) in [("<|end|>", 3), ("<think>", 4), ("<|bos|>", 3)] {
            tokens.push(t.to_string());
            types.push(ty);
        }
        let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let mut meta = vec![
            ("tokenizer.ggml.model", Value::String("gpt2".into())),
            ("tokenizer.ggml.pre", Value::String("qwen2".into())),
            ("tokenizer.ggml.tokens", strings(&refs)),
            ("tokenizer.ggml.token_type", ints(&types)),
            ("tokenizer.ggml.merges", strings(&merges)),
            ("tokenizer.ggml.bos_token_id", Value::U32(261)),
            ("tokenizer.ggml.eos_token_id", Value::U32(259)),
        ];
        for (k, v) in extra {
            meta.retain(|(key, _)| key != k);
            let k: &'static str = Box::leak(k.to_string().into_boxed_str());
            meta.push((k, v.clone()));
        }
        meta
    }

    fn gpt2_bundle(extra: &[(&str, Value)]) -> TokenizerBundle {
        let dir = TempDir::new();
        let path = write(&dir, &gpt2_meta(extra));
        TokenizerBundle::from_gguf(&path).expect("bundle")
    }

    #[test]
    fn byte_level_bpe_merges_and_matches_special_tokens() {
        let bundle = gpt2_bundle(&[]);
        let tok = &bundle.tokenizer;
        // "hi" and " hi" merge; qwen2's split keeps "!" apart, so the "Ġhi !" merge never
        // applies; "<|end|>" and "<think>" are matched in the text.
        let ids = tok.encode("hi hi!<|end|><think>x", true).expect("encode");
        assert_eq!(ids, vec![256, 257, b'!' as u32, 259, 260, b'x' as u32]);
        // Not a BOS: add_bos_token defaults to false for BPE vocabularies.
        assert_eq!(tok.decode(&ids, false).unwrap(), "hi hi!<|end|><think>x");
        // Control tokens are special (skipped), user-defined ones are not.
        assert_eq!(tok.decode(&ids, true).unwrap(), "hi hi!<think>x");
        // Any bytes survive a round trip.
        let text = "é 😀\n\t ";
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
        assert_eq!(bundle.eos_token_ids, BTreeSet::from([259]));
        assert!(bundle.chat_template.is_none());
    }

    #[test]
    fn add_bos_and_eos_follow_the_metadata() {
        let bundle = gpt2_bundle(&[
            ("tokenizer.ggml.add_bos_token", Value::Bool(true)),
            ("tokenizer.ggml.add_eos_token", Value::Bool(true)),
        ]);
        let ids = bundle.tokenizer.encode("hi", true).unwrap();
        assert_eq!(ids, vec![261, 256, 259]);
        assert_eq!(bundle.tokenizer.encode("hi", false).unwrap(), vec![256]);
        // llama3's pre-tokenizer turns BOS on by default, as in llama.cpp.
        let bundle = gpt2_bundle(&[("tokenizer.ggml.pre", Value::String("llama-bpe".into()))]);
        assert_eq!(bundle.tokenizer.encode("hi", true).unwrap(), vec![261, 256]);
    }

    #[test]
    fn eos_set_template_and_named_special_tokens() {
        let bundle = gpt2_bundle(&[
            ("tokenizer.ggml.eot_token_id", Value::U32(260)),
            ("tokenizer.ggml.eom_token_id", Value::U32(5)),
            ("tokenizer.ggml.eos_token_ids", ints(&[7, 8])),
            (
                "tokenizer.chat_template",
                Value::String("{{ bos_token }}{{ messages[0].content }}{{ eos_token }}".into()),
            ),
            (
                "tokenizer.chat_template.tool_use",
                Value::String("tools".into()),
            ),
        ]);
        assert_eq!(bundle.eos_token_ids, BTreeSet::from([5, 7, 8, 259, 260]));
        let template = bundle.chat_template.as_ref().expect("template");
        assert_eq!(
            template.names().collect::<Vec<_>>(),
            ["default", "tool_use"]
        );
        let messages = [serde_json::json!({"role": "user", "content": "hi"})];
        let extra = serde_json::Map::new();
        let text = template
            .render(&crate::RenderRequest::new(&messages, &extra))
            .expect("render");
        assert_eq!(text, "<|bos|>hi<|end|>");
        assert_eq!(bundle.config.special_token("eos_token"), Some("<|end|>"));
    }

    /// A SentencePiece vocabulary: `<unk>`, `<s>`, `</s>`, the 256 byte tokens, then pieces
    /// with scores (higher merges first).
    fn spm_meta(extra: &[(&str, Value)]) -> Vec<(String, Value)> {
        let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
        let mut types = vec![2, 3, 3];
        let mut scores = vec![0.0f32; 3];
        for b in 0..=255u8 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(BYTE);
            scores.push(0.0);
        }
        let pieces = [
            ("▁", -1.0),
            ("h", -2.0),
            ("e", -3.0),
            ("l", -4.0),
            ("o", -5.0),
            ("a", -6.0),
            ("b", -7.0),
            ("c", -8.0),
            ("ll", -10.0),
            ("▁h", -11.0),
            ("▁he", -12.0),
            ("llo", -13.0),
            ("▁hello", -14.0),
            ("ab", -20.0),
            ("bc", -21.0),
        ];
        for (p, s) in pieces {
            tokens.push(p.to_string());
            types.push(1);
            scores.push(s);
        }
        let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let mut meta = vec![
            (
                "tokenizer.ggml.model".to_string(),
                Value::String("llama".into()),
            ),
            ("tokenizer.ggml.tokens".into(), strings(&refs)),
            ("tokenizer.ggml.token_type".into(), ints(&types)),
            ("tokenizer.ggml.scores".into(), floats(&scores)),
        ];
        for (k, v) in extra {
            meta.retain(|(key, _)| key != k);
            meta.push((k.to_string(), v.clone()));
        }
        meta
    }

    fn spm_bundle(extra: &[(&str, Value)]) -> Result<TokenizerBundle, BundleError> {
        let dir = TempDir::new();
        let meta = spm_meta(extra);
        let meta: Vec<(&str, Value)> = meta.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let path = write(&dir, &meta);
        TokenizerBundle::from_gguf(&path)
    }

    /// Id of a piece in [`spm_meta`]'s vocabulary.
    fn spm_id(bundle: &TokenizerBundle, piece: &str) -> u32 {
        bundle.tokenizer.token_to_id(piece).expect(piece)
    }

    #[test]
    fn sentencepiece_bpe_merges_by_score_with_byte_fallback() {
        let bundle = spm_bundle(&[]).expect("bundle");
        let tok = &bundle.tokenizer;
        let id = |p| spm_id(&bundle, p);
        // BOS by default (llama.cpp: add_bos for SPM); the space prefix; "▁hello" merges.
        let ids = tok.encode("hello", true).unwrap();
        assert_eq!(ids, vec![1, id("▁hello")]);
        // "é" is outside the vocabulary: its UTF-8 bytes.
        let ids = tok.encode("hello é", false).unwrap();
        assert_eq!(ids, vec![id("▁hello"), id("▁"), id("<0xC3>"), id("<0xA9>")]);
        assert_eq!(tok.decode(&ids, false).unwrap(), "hello é");
        // "ab" scores higher than "bc": "abc" is "ab c" (llama.cpp takes the best-scoring
        // pair first); "▁" is kept apart because "▁a" is not a piece.
        assert_eq!(
            tok.encode("abc", false).unwrap(),
            vec![id("▁"), id("ab"), id("c")]
        );
        // A special token in the text is matched, and the text after it gets its own
        // space prefix, as llama.cpp prefixes each fragment after a special token.
        let ids = tok.encode("hello</s>hello", false).unwrap();
        assert_eq!(ids, vec![id("▁hello"), 2, id("▁hello")]);
        assert_eq!(tok.decode(&ids, true).unwrap(), "hello hello");
        assert_eq!(bundle.eos_token_ids, BTreeSet::from([2]));
        assert_eq!(bundle.config.special_token("unk_token"), Some("<unk>"));
    }

    #[test]
    fn sentencepiece_scores_decide_between_overlapping_merges() {
        // With "bc" above "ab", "abc" becomes "a bc".
        let dir = TempDir::new();
        let mut meta = spm_meta(&[]);
        let (_, Value::Array(scores)) = meta
            .iter_mut()
            .find(|(k, _)| k == "tokenizer.ggml.scores")
            .unwrap()
        else {
            unreachable!()
        };
        let n = scores.len();
        scores[n - 1] = Value::F32(-19.0);
        let meta: Vec<(&str, Value)> = meta.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let bundle = TokenizerBundle::from_gguf(write(&dir, &meta)).expect("bundle");
        let id = |p| spm_id(&bundle, p);
        assert_eq!(
            bundle.tokenizer.encode("abc", false).unwrap(),
            vec![id("▁"), id("a"), id("bc")]
        );
    }

    #[test]
    fn add_space_prefix_off() {
        let bundle =
            spm_bundle(&[("tokenizer.ggml.add_space_prefix", Value::Bool(false))]).unwrap();
        let id = |p| spm_id(&bundle, p);
        let ids = bundle.tokenizer.encode("hello", false).unwrap();
        assert_eq!(ids, vec![id("h"), id("e"), id("llo")]);
        assert_eq!(bundle.tokenizer.decode(&ids, false).unwrap(), "hello");
    }

    /// The error of loading `meta`, checked to name the file and `key`.
    fn error_of(meta: &[(&str, Value)], key: &str) -> String {
        let dir = TempDir::new();
        let path = write(&dir, meta);
        let err = TokenizerBundle::from_gguf(&path).expect_err("must fail");
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains(key), "{msg}");
        msg
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        // No tokenizer at all.
        error_of(&[], "tokenizer.ggml.model");
        // Unsupported models and pre-tokenizers.
        let msg = error_of(
            &gpt2_meta(&[("tokenizer.ggml.model", Value::String("bert".into()))]),
            "tokenizer.ggml.model",
        );
        assert!(msg.contains("'bert'"), "{msg}");
        let msg = error_of(
            &gpt2_meta(&[("tokenizer.ggml.pre", Value::String("martian".into()))]),
            "tokenizer.ggml.pre",
        );
        assert!(msg.contains("'martian'"), "{msg}");
        // Array lengths.
        error_of(
            &gpt2_meta(&[("tokenizer.ggml.token_type", ints(&[1, 1]))]),
            "tokenizer.ggml.token_type",
        );
        let meta = spm_meta(&[("tokenizer.ggml.scores", floats(&[0.0; 5]))]);
        let meta: Vec<(&str, Value)> = meta.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        error_of(&meta, "tokenizer.ggml.scores");
        // Ids outside the vocabulary.
        error_of(
            &gpt2_meta(&[("tokenizer.ggml.eos_token_id", Value::U32(100_000))]),
            "tokenizer.ggml.eos_token_id",
        );
        error_of(
            &gpt2_meta(&[("tokenizer.ggml.eos_token_ids", ints(&[3, 100_000]))]),
            "tokenizer.ggml.eos_token_ids",
        );
        // Missing merges, wrong types, duplicates.
        let mut no_merges = gpt2_meta(&[]);
        no_merges.retain(|(k, _)| *k != "tokenizer.ggml.merges");
        error_of(&no_merges, "tokenizer.ggml.merges");
        error_of(
            &gpt2_meta(&[("tokenizer.ggml.add_bos_token", Value::U32(1))]),
            "tokenizer.ggml.add_bos_token",
        );
        error_of(
            &gpt2_meta(&[("tokenizer.ggml.tokens", strings(&["a", "b", "a"]))]),
            "tokenizer.ggml.tokens",
        );
    }

    #[test]
    fn a_file_that_is_not_gguf_is_named() {
        let dir = TempDir::with_files(&[("x.gguf", "not a gguf file at all")]);
        let path = dir.path().join("x.gguf");
        let err = TokenizerBundle::from_gguf(&path).expect_err("must fail");
        assert!(err.to_string().contains("x.gguf"), "{err}");
        let err = TokenizerBundle::from_gguf(dir.path().join("missing.gguf")).expect_err("fail");
        assert!(err.to_string().contains("missing.gguf"), "{err}");
    }

    /// The vocabulary scripts/peers/make_gguf_qwen3moe.py writes: byte symbols, all their
    /// pairs, then pair + byte triples up to Qwen3's special tokens, each with the merge
    /// that builds it; Qwen3's special ids; `[PADn]` unused entries to 151936.
    #[test]
    fn the_synthetic_qwen3_moe_vocabulary_loads() {
        const FIRST_SPECIAL: usize = 151_643;
        const VOCAB: usize = 151_936;
        let syms: Vec<String> = (0..=255u8).map(|b| byte_symbol(b).to_string()).collect();
        let mut tokens = syms.clone();
        let mut merges = Vec::new();
        'pairs: for a in &syms {
            for b in &syms {
                if tokens.len() == FIRST_SPECIAL {
                    break 'pairs;
                }
                tokens.push(format!("{a}{b}"));
                merges.push(format!("{a} {b}"));
            }
        }
        let pairs: Vec<String> = tokens[256..].to_vec();
        'triples: for ab in &pairs {
            for c in &syms {
                if tokens.len() == FIRST_SPECIAL {
                    break 'triples;
                }
                tokens.push(format!("{ab}{c}"));
                merges.push(format!("{ab} {c}"));
            }
        }
        let mut types = vec![1i64; tokens.len()];
        let specials = [
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "<|object_ref_start|>",
            "<|object_ref_end|>",
            "<|box_start|>",
            "<|box_end|>",
            "<|quad_start|>",
            "<|quad_end|>",
            "<|vision_start|>",
            "<|vision_end|>",
            "<|vision_pad|>",
            "<|image_pad|>",
            "<|video_pad|>",
            "<tool_call>",
            "</tool_call>",
            "<|fim_prefix|>",
            "<|fim_middle|>",
            "<|fim_suffix|>",
            "<|fim_pad|>",
            "<|repo_name|>",
            "<|file_sep|>",
            "<tool_response>",
            "</tool_response>",
            "<think>",
            "</think>",
        ];
        for s in specials {
            tokens.push(s.to_string());
            types.push(if s.starts_with("<|") { 3 } else { 4 });
        }
        while tokens.len() < VOCAB {
            tokens.push(format!("[PAD{}]", tokens.len()));
            types.push(5);
        }
        let token_refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let merge_refs: Vec<&str> = merges.iter().map(String::as_str).collect();
        let dir = TempDir::new();
        let path = write(
            &dir,
            &[
                ("tokenizer.ggml.model", Value::String("gpt2".into())),
                ("tokenizer.ggml.pre", Value::String("qwen2".into())),
                ("tokenizer.ggml.tokens", strings(&token_refs)),
                ("tokenizer.ggml.token_type", ints(&types)),
                ("tokenizer.ggml.merges", strings(&merge_refs)),
                ("tokenizer.ggml.bos_token_id", Value::U32(151_643)),
                ("tokenizer.ggml.eos_token_id", Value::U32(151_645)),
                ("tokenizer.ggml.padding_token_id", Value::U32(151_643)),
                ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
            ],
        );
        let bundle = TokenizerBundle::from_gguf(&path).expect("the Qwen3-MoE vocabulary loads");
        let tok = &bundle.tokenizer;
        assert_eq!(tok.vocab_size(), VOCAB);
        let text = "<|im_start|>user\nHello, wörld!<think>x</think><|im_end|>";
        let ids = tok.encode(text, true).unwrap();
        assert_eq!(ids[0], 151_644);
        assert_eq!(*ids.last().unwrap(), 151_645);
        assert!(ids.contains(&151_667) && ids.contains(&151_668));
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
        assert!(tok.is_special(151_645) && !tok.is_special(151_667));
        assert_eq!(bundle.eos_token_ids, BTreeSet::from([151_645]));
    }
}
