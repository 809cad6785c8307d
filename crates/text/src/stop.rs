//! Stop strings over streamed text.
//!
//! Text that might be the beginning of a stop string is held back until the next delta
//! settles it, so a client never sees part of a stop string, even one split across
//! several deltas.

/// The result of one [`StopMatcher::push`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StopOutcome {
    /// Text that is safe to send: it cannot be part of a stop string.
    pub emit: String,
    /// A stop string completed: `emit` ends right before it and the stream is over.
    pub stopped: bool,
}

/// Watches a text stream for any of several stop strings.
#[derive(Debug, Clone)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text that could still turn out to start a stop string.
    held: String,
    /// Index into `stops` of the one that matched.
    matched: Option<usize>,
}

impl StopMatcher {
    /// Empty stop strings are ignored (they would match everywhere).
    pub fn new<I, S>(stops: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            stops: stops
                .into_iter()
                .map(Into::into)
                .filter(|s| !s.is_empty())
                .collect(),
            held: String::new(),
            matched: None,
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
        self.held.push_str(delta);
        if let Some((position, index)) = self.earliest_match() {
            self.held.truncate(position);
            self.matched = Some(index);
            return StopOutcome {
                emit: std::mem::take(&mut self.held),
                stopped: true,
            };
        }
        let keep_from = self.partial_match_start();
        let rest = self.held.split_off(keep_from);
        StopOutcome {
            emit: std::mem::replace(&mut self.held, rest),
            stopped: false,
        }
    }

    /// The end of the stream: releases held-back text (none after a stop).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// The stop string that ended the stream, if one did.
    pub fn matched(&self) -> Option<&str> {
        self.matched.map(|i| self.stops[i].as_str())
    }

    pub fn is_stopped(&self) -> bool {
        self.matched.is_some()
    }

    /// The leftmost complete stop string in the held text (the first listed wins a tie).
    fn earliest_match(&self) -> Option<(usize, usize)> {
        self.stops
            .iter()
            .enumerate()
            .filter_map(|(index, stop)| self.held.find(stop.as_str()).map(|pos| (pos, index)))
            .min()
    }

    /// Where the longest suffix of the held text that begins some stop string starts
    /// (`held.len()` when none does). Only char boundaries are tried.
    fn partial_match_start(&self) -> usize {
        self.held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let suffix = &self.held[i..];
                self.stops.iter().any(|stop| stop.starts_with(suffix))
            })
            .unwrap_or(self.held.len())
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
}
