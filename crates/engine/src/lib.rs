//! Engine: weights, expert store, models, sampling, generation.
