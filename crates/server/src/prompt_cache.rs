//! Prompt cache: the KV state of finished sequences, kept so that a later request sharing a
//! prefix with one of them (the same system prompt, a chat continued turn by turn) starts
//! from that state instead of recomputing it. Least recently used entries go first when the
//! entry count or the byte bound is exceeded.

use moestream_engine::backend::Memory;
use moestream_engine::cache::SeqCache;

/// What the scheduler keeps of finished sequences, in its model's memory `M`: the
/// [`PromptCache`] for host caches, or nothing ([`NoPromptCache`]) where prefix copies are not
/// implemented yet (a GPU's caches).
pub trait PrefixCache<M: Memory>: Send {
    /// The longest useful cached prefix of `prompt`.
    fn lookup(&mut self, prompt: &[u32]) -> Option<Reuse<M>>;
    /// Keeps `cache` (holding `tokens`) for later requests, or drops it.
    fn insert(&mut self, tokens: &[u32], cache: SeqCache<M>);
    /// Entries held.
    fn entries(&self) -> usize;
    fn bytes(&self) -> usize;
}

/// Keeps nothing.
pub struct NoPromptCache;

impl<M: Memory> PrefixCache<M> for NoPromptCache {
    fn lookup(&mut self, _prompt: &[u32]) -> Option<Reuse<M>> {
        None
    }
    fn insert(&mut self, _tokens: &[u32], _cache: SeqCache<M>) {}
    fn entries(&self) -> usize {
        0
    }
    fn bytes(&self) -> usize {
        0
    }
}

struct Entry {
    /// The tokens whose keys and values `cache` holds.
    tokens: Vec<u32>,
    cache: SeqCache,
    last_used: u64,
}

pub struct PromptCache {
    entries: Vec<Entry>,
    max_entries: usize,
    max_bytes: usize,
    clock: u64,
}

/// What a lookup found.
pub struct Reuse<M: Memory = moestream_engine::backend::Host> {
    pub cache: SeqCache<M>,
    /// Prompt tokens already in `cache`.
    pub cached_tokens: usize,
}

impl PromptCache {
    /// `max_entries == 0` or `max_bytes == 0` disables the cache.
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        PromptCache {
            entries: Vec::new(),
            max_entries,
            max_bytes,
            clock: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.entries.iter().map(|e| e.cache.kv_bytes()).sum()
    }

    /// The longest cached prefix of `prompt`, leaving at least its last token to run (its
    /// logits start generation). `None` when no entry shares a useful prefix.
    pub fn lookup(&mut self, prompt: &[u32]) -> Option<Reuse> {
        let limit = prompt.len().saturating_sub(1);
        let (best, len) = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, common_prefix(&e.tokens, prompt).min(limit)))
            // Recurrent (Gated DeltaNet) states cannot be cut back: whole entries only.
            .map(|(i, n)| {
                (
                    i,
                    if self.entries[i].cache.can_clone_prefix(n) {
                        n
                    } else {
                        0
                    },
                )
            })
            .max_by_key(|&(_, n)| n)?;
        if len == 0 {
            return None;
        }
        self.clock += 1;
        let e = &mut self.entries[best];
        e.last_used = self.clock;
        Some(Reuse {
            cache: e.cache.clone_prefix(len),
            cached_tokens: len,
        })
    }

    /// Keeps `cache` (holding `tokens`) for later requests. An entry whose tokens are a
    /// prefix of the new one is superseded by it.
    pub fn insert(&mut self, tokens: &[u32], mut cache: SeqCache) {
        if self.max_entries == 0 || tokens.is_empty() {
            return;
        }
        if !cache.can_clone_prefix(tokens.len()) {
            return; // a recurrent state past `tokens` cannot be rewound to it
        }
        cache.truncate(tokens.len());
        if cache.kv_bytes() > self.max_bytes {
            return;
        }
        self.entries
            .retain(|e| common_prefix(&e.tokens, tokens) < e.tokens.len());
        self.clock += 1;
        self.entries.push(Entry {
            tokens: tokens.to_vec(),
            cache,
            last_used: self.clock,
        });
        while self.entries.len() > self.max_entries || self.bytes() > self.max_bytes {
            let oldest = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(i, _)| i);
            match oldest {
                Some(i) => {
                    self.entries.swap_remove(i);
                }
                None => break,
            }
        }
    }
}

impl PrefixCache<moestream_engine::backend::Host> for PromptCache {
    fn lookup(&mut self, prompt: &[u32]) -> Option<Reuse> {
        PromptCache::lookup(self, prompt)
    }
    fn insert(&mut self, tokens: &[u32], cache: SeqCache) {
        PromptCache::insert(self, tokens, cache)
    }
    fn entries(&self) -> usize {
        PromptCache::len(self)
    }
    fn bytes(&self) -> usize {
        PromptCache::bytes(self)
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use moestream_engine::cache::KvCache;

    fn cache_of(n: usize) -> SeqCache {
        let mut kv = KvCache::new(1, 2);
        kv.reserve(n, 0);
        for p in 0..n {
            kv.write(p, &[p as f32, 0.5], &[-(p as f32), 1.5]);
        }
        SeqCache {
            offset: n,
            layers: vec![kv],
            recurrent: vec![None],
            log: Default::default(),
        }
    }

    #[test]
    fn recurrent_caches_are_reused_only_whole() {
        use moestream_engine::cache::DeltaState;
        let hybrid = |n: usize| SeqCache {
            recurrent: vec![Some(DeltaState::zeros(2, 4))],
            ..cache_of(n)
        };
        let mut pc = PromptCache::new(4, usize::MAX);
        pc.insert(&[1, 2, 3, 4], hybrid(4));
        // A strict prefix of the entry would need the state after 2 tokens: not kept.
        assert!(pc.lookup(&[1, 2, 7, 7]).is_none());
        // The whole entry is a prefix of the prompt: reused with its state.
        let r = pc.lookup(&[1, 2, 3, 4, 5]).expect("whole entry reused");
        assert_eq!(r.cached_tokens, 4);
        assert!(r.cache.recurrent[0].is_some());
        // A cache that ran past the tokens it is stored under cannot be rewound to them.
        pc.insert(&[8, 9], hybrid(3));
        assert!(pc.lookup(&[8, 9, 1]).is_none());
    }

    #[test]
    fn longest_prefix_wins_and_keeps_one_token_to_run() {
        let mut pc = PromptCache::new(4, usize::MAX);
        pc.insert(&[1, 2, 3], cache_of(3));
        pc.insert(&[1, 2, 9, 9, 9], cache_of(5));
        let r = pc.lookup(&[1, 2, 9, 9, 7]).unwrap();
        assert_eq!(r.cached_tokens, 4);
        assert_eq!(r.cache.offset, 4);
        assert_eq!(r.cache.layers[0].k[3 * 2], 3.0, "position 3 copied");
        // The whole prompt is cached: all but the last token are reused.
        let r = pc.lookup(&[1, 2, 3]).unwrap();
        assert_eq!(r.cached_tokens, 2);
        assert!(pc.lookup(&[5, 1, 2]).is_none());
    }

    #[test]
    fn superseded_and_least_recent_entries_go() {
        let mut pc = PromptCache::new(2, usize::MAX);
        pc.insert(&[1, 2], cache_of(2));
        pc.insert(&[1, 2, 3, 4], cache_of(4));
        assert_eq!(pc.len(), 1, "a prefix entry is superseded");
        pc.insert(&[7, 7], cache_of(2));
        pc.lookup(&[1, 2, 3, 4, 5]);
        pc.insert(&[8, 8], cache_of(2));
        assert_eq!(pc.len(), 2);
        assert!(
            pc.lookup(&[7, 7, 1]).is_none(),
            "least recently used evicted"
        );
        assert!(pc.lookup(&[1, 2, 3, 9]).is_some());
    }

    #[test]
    fn the_byte_bound_holds() {
        let one = cache_of(3).kv_bytes();
        let mut pc = PromptCache::new(10, one * 2);
        for i in 0..5 {
            pc.insert(&[i, 1, 2], cache_of(3));
            assert!(pc.bytes() <= one * 2);
        }
        assert_eq!(pc.len(), 2);
        let mut off = PromptCache::new(0, usize::MAX);
        off.insert(&[1, 2], cache_of(2));
        assert!(off.is_empty());
    }
}
