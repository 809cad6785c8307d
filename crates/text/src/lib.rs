//! Text layer: tokenizer.json, Hugging Face chat templates, streaming detokenization, stop strings.
