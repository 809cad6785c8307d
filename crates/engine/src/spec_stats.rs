//! The counters of speculative decoding, in a module of their own: generation statistics
//! ([`crate::generate::GenerationStats`]) carry them and the speculative loop
//! ([`crate::speculative`]) fills them, without either module importing the other.

/// Counters of speculative decoding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpecStats {
    /// Verification passes of the main model (rounds).
    pub rounds: usize,
    /// Tokens the draft proposed.
    pub drafted: usize,
    /// Proposed tokens the main model accepted.
    pub accepted: usize,
    /// Tokens the rounds produced (accepted drafts plus one per round from the main model,
    /// fewer when generation ended inside a round).
    pub emitted: usize,
}

impl SpecStats {
    /// Share of proposed tokens accepted (0 when nothing was proposed).
    pub fn acceptance_rate(&self) -> f64 {
        ratio(self.accepted, self.drafted)
    }

    /// Tokens produced per verification pass of the main model (1 without speculation).
    pub fn tokens_per_step(&self) -> f64 {
        ratio(self.emitted, self.rounds)
    }

    /// The counts since `earlier` (a copy of these counters taken before).
    pub fn since(&self, earlier: &SpecStats) -> SpecStats {
        SpecStats {
            rounds: self.rounds - earlier.rounds,
            drafted: self.drafted - earlier.drafted,
            accepted: self.accepted - earlier.accepted,
            emitted: self.emitted - earlier.emitted,
        }
    }

    pub fn add(&mut self, o: &SpecStats) {
        self.rounds += o.rounds;
        self.drafted += o.drafted;
        self.accepted += o.accepted;
        self.emitted += o.emitted;
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}
