//! Progress bars for loading (drawn on stderr only when it is a terminal).

use indicatif::{ProgressBar, ProgressStyle};
use moestream_engine::LoadProgress;

/// Turns loader events into a bar: files mapped, then bytes read into memory.
pub struct LoadBar {
    bar: Option<ProgressBar>,
    stage: u8,
}

impl LoadBar {
    pub fn new() -> Self {
        LoadBar {
            bar: None,
            stage: 0,
        }
    }

    pub fn update(&mut self, p: LoadProgress) {
        let (stage, done, total, template) = match p {
            LoadProgress::Mapping(d, t) => (1, d, t, "mapping weights {bar:30} {pos}/{len} files"),
            LoadProgress::Converting(d, t) => {
                (3, d, t, "converting GGUF tensors {bar:30} {pos}/{len}")
            }
            LoadProgress::Warming(d, t) => (
                2,
                d,
                t,
                "loading weights {bar:30} {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
            ),
        };
        if self.stage != stage {
            if let Some(b) = self.bar.take() {
                b.finish_and_clear();
            }
            let bar = ProgressBar::new(total as u64);
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style);
            }
            self.bar = Some(bar);
            self.stage = stage;
        }
        if let Some(b) = &self.bar {
            b.set_position(done as u64);
        }
    }

    pub fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}
