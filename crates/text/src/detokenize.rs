//! Streaming detokenization: token ids in, text deltas out, never a broken character.
//!
//! Byte-level BPE tokens can end in the middle of a UTF-8 sequence (an emoji is often
//! three or four tokens), and SentencePiece decoders drop the leading space of the first
//! token they see, so decoding token by token is wrong twice. Instead each step decodes a
//! short window — the tokens already emitted last time (`prefix`) plus the new ones — and
//! emits what the new tokens added, holding back while the text ends in U+FFFD (an
//! incomplete sequence). This is the prefix-offset/read-offset scheme of TGI and vLLM.

use std::sync::Arc;

use crate::tokenizer::{Tokenizer, TokenizerError};

/// How many prompt tokens seed the window, so the first generated token decodes in context
/// (vLLM uses the same number).
const PROMPT_CONTEXT_TOKENS: usize = 5;

/// Turns a stream of token ids into text deltas. One per sequence.
#[derive(Debug)]
pub struct StreamDecoder {
    tokenizer: Arc<Tokenizer>,
    skip_special_tokens: bool,
    /// The window: `ids[..read]` was emitted last step (context only), `ids[read..]` is pending.
    ids: Vec<u32>,
    read: usize,
}

impl StreamDecoder {
    /// A decoder that skips special tokens (as `decode(.., true)` does).
    pub fn new(tokenizer: Arc<Tokenizer>) -> Self {
        Self {
            tokenizer,
            skip_special_tokens: true,
            ids: Vec::new(),
            read: 0,
        }
    }

    /// Whether special tokens (e.g. `<|im_end|>`) are left out of the text.
    pub fn with_skip_special_tokens(mut self, skip: bool) -> Self {
        self.skip_special_tokens = skip;
        self
    }

    /// Seeds the window with the end of the prompt, so the first generated token gets the
    /// spacing it would have in the full text.
    pub fn with_prompt_context(mut self, prompt_ids: &[u32]) -> Self {
        let start = prompt_ids.len().saturating_sub(PROMPT_CONTEXT_TOKENS);
        self.ids = prompt_ids[start..].to_vec();
        self.read = self.ids.len();
        self
    }

    /// Adds one token; returns the text it completes (often empty while a character is
    /// still incomplete, or for a skipped special token).
    pub fn push(&mut self, id: u32) -> Result<String, TokenizerError> {
        self.ids.push(id);
        let prefix = self.decode(&self.ids[..self.read])?;
        let full = self.decode(&self.ids)?;
        if full.len() <= prefix.len() || full.ends_with(char::REPLACEMENT_CHARACTER) {
            return Ok(String::new());
        }
        // The window's prefix text normally is a prefix of the full text; if a decoder
        // rewrites across the boundary, wait for more tokens (or `finish`).
        let Some(delta) = full
            .get(prefix.len()..)
            .filter(|_| full.starts_with(&prefix))
        else {
            return Ok(String::new());
        };
        let delta = delta.to_string();
        // The tokens just emitted become the next step's context.
        self.ids.drain(..self.read);
        self.read = self.ids.len();
        Ok(delta)
    }

    /// Emits whatever is still held back (an incomplete character comes out as U+FFFD,
    /// as a full decode would show it) and empties the window.
    pub fn finish(&mut self) -> Result<String, TokenizerError> {
        let prefix = self.decode(&self.ids[..self.read])?;
        let full = self.decode(&self.ids)?;
        self.ids.clear();
        self.read = 0;
        let delta = if full.starts_with(&prefix) {
            full.get(prefix.len()..).unwrap_or_default().to_string()
        } else {
            String::new()
        };
        Ok(delta)
    }

    fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        if ids.is_empty() {
            return Ok(String::new());
        }
        self.tokenizer.decode(ids, self.skip_special_tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::byte_level_tokenizer;

    /// Streams `ids` and returns every delta, then the `finish` remainder last.
    fn stream(decoder: &mut StreamDecoder, ids: &[u32]) -> Vec<String> {
        let mut deltas: Vec<String> = ids
            .iter()
            .map(|&id| decoder.push(id).expect("decode"))
            .collect();
        deltas.push(decoder.finish().expect("finish"));
        deltas
    }

    #[test]
    fn multibyte_characters_split_over_tokens_come_out_whole() {
        let tokenizer = Arc::new(byte_level_tokenizer());
        let text = "héllo 世界 😀!";
        let ids = tokenizer.encode(text, false).expect("encode");
        // One token per byte: every multi-byte character really is split.
        assert_eq!(ids.len(), text.len());

        let mut decoder = StreamDecoder::new(tokenizer.clone());
        let deltas = stream(&mut decoder, &ids);
        assert_eq!(deltas.concat(), text);
        assert!(deltas
            .iter()
            .all(|d| !d.contains(char::REPLACEMENT_CHARACTER)));
        // The emoji's four tokens give nothing, nothing, nothing, then the whole emoji.
        let emoji_end = text.find('!').expect("has !");
        assert_eq!(deltas[emoji_end - 4..emoji_end], ["", "", "", "😀"]);
    }

    #[test]
    fn unfinished_character_is_flushed_by_finish() {
        let tokenizer = Arc::new(byte_level_tokenizer());
        let ids = tokenizer.encode("a😀", false).expect("encode");
        let mut decoder = StreamDecoder::new(tokenizer);
        let emitted: String = ids[..3]
            .iter()
            .map(|&id| decoder.push(id).expect("decode"))
            .collect();
        assert_eq!(emitted, "a");
        assert_eq!(decoder.finish().expect("finish"), "\u{FFFD}");
        // finish empties the window: a new stream starts clean.
        assert_eq!(decoder.push(ids[0]).expect("decode"), "a");
    }

    #[test]
    fn special_tokens_are_skipped_unless_asked_for() {
        let tokenizer = Arc::new(byte_level_tokenizer());
        let end = tokenizer.token_to_id("<|end|>").expect("special token");
        let mut ids = tokenizer.encode("hi", false).expect("encode");
        ids.push(end);
        ids.extend(tokenizer.encode("é", false).expect("encode"));

        let mut skipping = StreamDecoder::new(tokenizer.clone());
        assert_eq!(stream(&mut skipping, &ids).concat(), "hié");
        let mut keeping = StreamDecoder::new(tokenizer).with_skip_special_tokens(false);
        assert_eq!(stream(&mut keeping, &ids).concat(), "hi<|end|>é");
    }

    #[test]
    fn prompt_context_is_not_emitted() {
        let tokenizer = Arc::new(byte_level_tokenizer());
        let prompt = tokenizer.encode("prompt text ", false).expect("encode");
        let reply = tokenizer.encode("ok 世", false).expect("encode");
        let mut decoder = StreamDecoder::new(tokenizer).with_prompt_context(&prompt);
        assert_eq!(stream(&mut decoder, &reply).concat(), "ok 世");
    }

    #[test]
    fn window_stays_small_on_long_streams() {
        let tokenizer = Arc::new(byte_level_tokenizer());
        let text = "long ".repeat(200);
        let ids = tokenizer.encode(&text, false).expect("encode");
        let mut decoder = StreamDecoder::new(tokenizer);
        let mut out = String::new();
        for &id in &ids {
            out.push_str(&decoder.push(id).expect("decode"));
            assert!(
                decoder.ids.len() <= 8,
                "window grew to {}",
                decoder.ids.len()
            );
        }
        assert_eq!(out, text);
    }
}
