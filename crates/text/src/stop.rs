//! Stop strings over streamed text.
//!
//! Text that might be the beginning of a stop string is held back until the next delta
//! settles it, so a client never sees part of a stop string, even one split across
//! several deltas.

use std::collections::VecDeque;

/// The result of one [`StopMatcher::push`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StopOutcome {
    /// Text that is safe to send: it cannot be part of a stop string.
    pub emit: String,
    /// A stop string completed: `emit` ends right before it and the stream is over.
    pub stopped: bool,
}

/// Watches a text stream for any of several stop strings.
///
/// The stop strings are compiled once into an Aho-Corasick automaton over bytes, and each
/// push feeds only the new text through it: the work of a push is proportional to the
/// length of the new text (amortized: each byte takes one transition plus at most as many
/// failure-link steps as earlier bytes took transitions), whatever the number and length
/// of the stop strings. The text held back is exactly the longest suffix of the stream
/// that begins a stop string, so it stays shorter than the longest stop string.
///
/// The stream stops at the first stop string to complete (the one ending earliest; of
/// those ending at the same byte, the longest), so where it stops does not depend on how
/// the text was split into deltas.
#[derive(Debug, Clone)]
pub struct StopMatcher {
    stops: Vec<String>,
    automaton: Automaton,
    /// The automaton's state after the text pushed so far.
    state: u32,
    /// Text that could still turn out to start a stop string: the last `depth(state)`
    /// bytes of the stream.
    held: VecDeque<u8>,
    /// Index into `stops` of the one that matched.
    matched: Option<usize>,
    /// Transitions and failure-link steps taken so far (the matching work).
    work: u64,
}

impl StopMatcher {
    /// Empty stop strings are ignored (they would match everywhere).
    pub fn new<I, S>(stops: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let stops: Vec<String> = stops
            .into_iter()
            .map(Into::into)
            .filter(|s| !s.is_empty())
            .collect();
        Self {
            automaton: Automaton::new(&stops),
            stops,
            state: ROOT,
            held: VecDeque::new(),
            matched: None,
            work: 0,
        }
    }

    /// Feeds the next piece of text. After a stop, further pushes emit nothing.
    pub fn push(&mut self, delta: &str) -> StopOutcome {
        if self.matched.is_some() {
            return StopOutcome {
                emit: String::new(),
                stopped: true,
            };
        }
        if self.stops.is_empty() {
            return StopOutcome {
                emit: delta.to_string(),
                stopped: false,
            };
        }
        let bytes = delta.as_bytes();
        for (i, &b) in bytes.iter().enumerate() {
            self.state = self.automaton.step(self.state, b, &mut self.work);
            if let Some(index) = self.automaton.output(self.state) {
                // The stream so far is held + bytes[..=i]; the stop string ends it.
                let end = self.held.len() + i + 1;
                let start = end - self.stops[index].len();
                let emit = self.take_front(start, bytes);
                self.held.clear();
                self.matched = Some(index);
                return StopOutcome {
                    emit,
                    stopped: true,
                };
            }
        }
        // Keep the suffix that begins a stop string (`depth` bytes), release the rest.
        let keep = self.automaton.depth(self.state);
        let release = self.held.len() + bytes.len() - keep;
        let from_delta = release.saturating_sub(self.held.len());
        let emit = self.take_front(release, bytes);
        self.held.extend(&bytes[from_delta..]);
        StopOutcome {
            emit,
            stopped: false,
        }
    }

    /// Removes the first `n` bytes of `held + delta` from `held` and returns them as text
    /// (`n` falls on a char boundary: it is where a stop string, valid UTF-8, begins or
    /// where the stream ends).
    fn take_front(&mut self, n: usize, delta: &[u8]) -> String {
        let from_held = n.min(self.held.len());
        let mut out: Vec<u8> = self.held.drain(..from_held).collect();
        out.extend_from_slice(&delta[..n - from_held]);
        String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into())
    }

    /// The end of the stream: releases held-back text (none after a stop).
    pub fn finish(&mut self) -> String {
        self.state = ROOT;
        let held: Vec<u8> = self.held.drain(..).collect();
        String::from_utf8(held).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into())
    }

    /// The stop string that ended the stream, if one did.
    pub fn matched(&self) -> Option<&str> {
        self.matched.map(|i| self.stops[i].as_str())
    }

    pub fn is_stopped(&self) -> bool {
        self.matched.is_some()
    }

    /// Automaton steps taken so far: transitions plus failure-link steps. At most twice
    /// the bytes pushed, whatever the stop strings.
    pub fn work(&self) -> u64 {
        self.work
    }
}

const ROOT: u32 = 0;

/// An Aho-Corasick automaton over the bytes of the stop strings: a trie whose node for a
/// string `s` knows the longest proper suffix of `s` in the trie (its failure link) and the
/// longest stop string that is a suffix of `s`.
#[derive(Debug, Clone)]
struct Automaton {
    nodes: Vec<Node>,
}

#[derive(Debug, Clone, Default)]
struct Node {
    /// Children, sorted by byte.
    next: Vec<(u8, u32)>,
    fail: u32,
    depth: u32,
    /// The stop string this node completes (the first listed among duplicates).
    end: Option<usize>,
    /// The longest stop string that is a suffix of this node's string.
    out: Option<usize>,
}

impl Automaton {
    fn new(stops: &[String]) -> Self {
        let mut nodes = vec![Node::default()];
        for (index, stop) in stops.iter().enumerate() {
            let mut at = ROOT;
            for &b in stop.as_bytes() {
                at = match Self::child(&nodes, at, b) {
                    Some(n) => n,
                    None => {
                        let n = nodes.len() as u32;
                        let depth = nodes[at as usize].depth + 1;
                        nodes.push(Node {
                            depth,
                            ..Default::default()
                        });
                        let next = &mut nodes[at as usize].next;
                        let pos = next.partition_point(|&(c, _)| c < b);
                        next.insert(pos, (b, n));
                        n
                    }
                };
            }
            let node = &mut nodes[at as usize];
            node.end = node.end.or(Some(index));
        }
        // Failure links and outputs in breadth-first order (a node's links point to
        // shallower nodes, which are done).
        let mut queue = std::collections::VecDeque::new();
        let root_children: Vec<u32> = nodes[0].next.iter().map(|&(_, n)| n).collect();
        for n in root_children {
            let node = &mut nodes[n as usize];
            node.fail = ROOT;
            node.out = node.end;
            queue.push_back(n);
        }
        while let Some(u) = queue.pop_front() {
            let children = nodes[u as usize].next.clone();
            for (b, v) in children {
                let mut f = nodes[u as usize].fail;
                let fail = loop {
                    if let Some(n) = Self::child(&nodes, f, b) {
                        break n;
                    }
                    if f == ROOT {
                        break ROOT;
                    }
                    f = nodes[f as usize].fail;
                };
                let out = nodes[v as usize].end.or(nodes[fail as usize].out);
                let node = &mut nodes[v as usize];
                node.fail = fail;
                node.out = out;
                queue.push_back(v);
            }
        }
        Automaton { nodes }
    }

    fn child(nodes: &[Node], at: u32, b: u8) -> Option<u32> {
        let next = &nodes[at as usize].next;
        next.binary_search_by_key(&b, |&(c, _)| c)
            .ok()
            .map(|i| next[i].1)
    }

    /// The state after `b`; counts its transitions and failure-link steps in `work`.
    fn step(&self, mut at: u32, b: u8, work: &mut u64) -> u32 {
        loop {
            *work += 1;
            if let Some(n) = Self::child(&self.nodes, at, b) {
                return n;
            }
            if at == ROOT {
                return ROOT;
            }
            at = self.nodes[at as usize].fail;
        }
    }

    fn depth(&self, at: u32) -> usize {
        self.nodes[at as usize].depth as usize
    }

    fn output(&self, at: u32) -> Option<usize> {
        self.nodes[at as usize].out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pushes every delta; returns the emitted text and whether it stopped.
    fn run(matcher: &mut StopMatcher, deltas: &[&str]) -> (String, bool) {
        let mut out = String::new();
        for delta in deltas {
            let outcome = matcher.push(delta);
            out.push_str(&outcome.emit);
            if outcome.stopped {
                return (out, true);
            }
        }
        out.push_str(&matcher.finish());
        (out, false)
    }

    #[test]
    fn stop_inside_one_delta() {
        let mut m = StopMatcher::new(["STOP"]);
        assert_eq!(run(&mut m, &["abcSTOPdef"]), ("abc".to_string(), true));
        assert_eq!(m.matched(), Some("STOP"));
    }

    #[test]
    fn stop_spanning_several_deltas_is_never_shown() {
        let mut m = StopMatcher::new(["</answer>"]);
        let first = m.push("the end</");
        assert_eq!(first.emit, "the end");
        assert!(!first.stopped);
        assert_eq!(m.push("ans").emit, "");
        let last = m.push("wer> trailing");
        assert_eq!(
            last,
            StopOutcome {
                emit: String::new(),
                stopped: true
            }
        );
    }

    #[test]
    fn false_start_is_released() {
        let mut m = StopMatcher::new(["###"]);
        assert_eq!(m.push("a##").emit, "a");
        assert_eq!(m.push("b").emit, "##b");
        assert_eq!(m.push("#").emit, "");
        assert_eq!(m.finish(), "#");
    }

    #[test]
    fn several_stop_strings_the_leftmost_wins() {
        let mut m = StopMatcher::new(["world", "lo w"]);
        assert_eq!(
            run(&mut m, &["hel", "lo wor", "ld"]),
            ("hel".to_string(), true)
        );
        assert_eq!(m.matched(), Some("lo w"));
    }

    #[test]
    fn overlapping_partial_keeps_the_longest_candidate() {
        // "aab" could begin "aabx" at position 0; "ab" could begin "abc" at 1: keep from 0.
        let mut m = StopMatcher::new(["aabx", "abc"]);
        assert_eq!(m.push("zaab").emit, "z");
        assert_eq!(run(&mut m, &["c"]), ("a".to_string(), true));
        assert_eq!(m.matched(), Some("abc"));
    }

    #[test]
    fn pushes_after_stop_emit_nothing() {
        let mut m = StopMatcher::new(["x"]);
        assert!(m.push("x").stopped);
        assert_eq!(
            m.push("more"),
            StopOutcome {
                emit: String::new(),
                stopped: true
            }
        );
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn multibyte_text_and_stops() {
        let mut m = StopMatcher::new(["世界"]);
        assert_eq!(m.push("你好世").emit, "你好");
        assert_eq!(run(&mut m, &["界!"]), (String::new(), true));
        let mut m = StopMatcher::new(["é!"]);
        assert_eq!(
            run(&mut m, &["café", " ok"]),
            ("café ok".to_string(), false)
        );
    }

    #[test]
    fn no_stops_passes_everything_through() {
        let mut m = StopMatcher::new(Vec::<String>::new());
        assert_eq!(m.push("abc").emit, "abc");
        let mut m = StopMatcher::new([""]);
        assert_eq!(m.push("abc").emit, "abc");
    }

    /// The first stop string to complete in `text` (earliest end, then longest, then first
    /// listed), found by brute force: (text before it, its index).
    fn reference(stops: &[&str], text: &str) -> (String, Option<usize>) {
        for end in 1..=text.len() {
            let mut best: Option<usize> = None;
            for (i, s) in stops.iter().enumerate() {
                if !s.is_empty()
                    && text.is_char_boundary(end)
                    && text[..end].ends_with(s)
                    && best.is_none_or(|b| s.len() > stops[b].len())
                {
                    best = Some(i);
                }
            }
            if let Some(i) = best {
                return (text[..end - stops[i].len()].to_string(), Some(i));
            }
        }
        (text.to_string(), None)
    }

    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    #[test]
    fn random_streams_match_the_brute_force_reference_however_split() {
        let alphabet = ["a", "b", "é", "世"];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let word = |rng: &mut Rng, max: usize| -> String {
            (0..1 + rng.below(max))
                .map(|_| alphabet[rng.below(alphabet.len())])
                .collect()
        };
        for _ in 0..3000 {
            let stops: Vec<String> = (0..1 + rng.below(4)).map(|_| word(&mut rng, 5)).collect();
            let text = word(&mut rng, 40);
            let refs: Vec<&str> = stops.iter().map(String::as_str).collect();
            let (want, want_stop) = reference(&refs, &text);
            let mut m = StopMatcher::new(stops.iter().cloned());
            let chars: Vec<&str> = text
                .char_indices()
                .map(|(i, c)| &text[i..i + c.len_utf8()])
                .collect();
            let (mut out, mut fed, mut stopped) = (String::new(), String::new(), false);
            let mut rest = &chars[..];
            while !rest.is_empty() {
                let n = 1 + rng.below(rest.len().min(4));
                let delta: String = rest[..n].concat();
                rest = &rest[n..];
                fed.push_str(&delta);
                let o = m.push(&delta);
                out.push_str(&o.emit);
                if o.stopped {
                    stopped = true;
                    break;
                }
                // What is held is exactly the longest suffix that begins a stop string.
                let held = String::from_utf8(m.held.iter().copied().collect()).unwrap();
                assert_eq!(format!("{out}{held}"), fed);
                let longest = (0..=fed.len())
                    .filter(|&i| fed.is_char_boundary(i))
                    .find(|&i| stops.iter().any(|s| s.starts_with(&fed[i..])))
                    .map_or(0, |i| fed.len() - i);
                assert_eq!(held.len(), longest, "{stops:?} {fed:?}");
            }
            if !stopped {
                out.push_str(&m.finish());
            }
            assert_eq!(
                (out, stopped),
                (want, want_stop.is_some()),
                "{stops:?} {text:?}"
            );
            assert_eq!(m.matched(), want_stop.map(|i| stops[i].as_str()));
        }
    }

    /// The matching work of a push depends on the new text only: 16 stop strings of 64 KiB
    /// that the text keeps almost matching cost no more than short ones, at most two automaton
    /// steps per byte pushed, and the text held back stays under the longest stop string.
    #[test]
    fn matching_work_is_bounded_by_the_new_text_not_the_stop_strings() {
        let long: Vec<String> = (0..16u8)
            .map(|k| format!("{}{}", "a".repeat(64 << 10), (b'A' + k) as char))
            .collect();
        let short: Vec<String> = (0..16u8)
            .map(|k| format!("a{}", (b'A' + k) as char))
            .collect();
        let mut work = Vec::new();
        for stops in [&long, &short] {
            let mut m = StopMatcher::new(stops.iter().cloned());
            let (mut pushed, mut emitted) = (0usize, 0usize);
            let mut max_step_work = 0;
            for i in 0..100_000 {
                // Mostly 'a's (every stop's prefix), now and then a byte that breaks them.
                let delta = if i % 5000 == 4999 { "aZ" } else { "aaa" };
                let before = m.work();
                let o = m.push(delta);
                max_step_work = max_step_work.max(m.work() - before);
                assert!(!o.stopped);
                pushed += delta.len();
                emitted += o.emit.len();
                assert!(m.held.len() < stops.iter().map(String::len).max().unwrap());
            }
            emitted += m.finish().len();
            assert_eq!(emitted, pushed);
            assert!(
                m.work() <= 2 * pushed as u64,
                "{} steps for {pushed} bytes",
                m.work()
            );
            work.push((m.work(), max_step_work));
        }
        // Long stop strings cost what short ones do, to within the few failure-link steps.
        let (long_work, _) = work[0];
        let (short_work, _) = work[1];
        assert!(long_work <= short_work + short_work / 10, "{work:?}");
        // And a stop string that does complete is found.
        let mut m = StopMatcher::new(long.iter().cloned());
        let text = format!("xy{}", long[3]);
        let o = m.push(&text);
        assert_eq!((o.emit.as_str(), o.stopped), ("xy", true));
        assert_eq!(m.matched(), Some(long[3].as_str()));
    }

    #[test]
    fn the_stop_that_completes_first_wins_however_the_text_is_split() {
        // "bc" ends before "abcd" does: it wins whether the text comes in one piece or not.
        for deltas in [&["abcd"][..], &["a", "b", "c", "d"][..], &["ab", "cd"][..]] {
            let mut m = StopMatcher::new(["abcd", "bc"]);
            assert_eq!(run(&mut m, deltas), ("a".to_string(), true));
            assert_eq!(m.matched(), Some("bc"));
        }
        // Two ending at the same byte: the longer wins.
        let mut m = StopMatcher::new(["cd", "bcd"]);
        assert_eq!(run(&mut m, &["abcde"]), ("a".to_string(), true));
        assert_eq!(m.matched(), Some("bcd"));
    }
}
