//! RoPE scaling against mlx-lm: a fixture model with its config's `rope_scaling` replaced
//! (YaRN, with and without `mscale`/`mscale_all_dim`) gives mlx-lm's logits and greedy tokens
//! (`fixtures/rope/`, written by scripts/make_rope_fixtures.py with the pinned mlx-lm).

mod common;

use common::*;
use moestream_engine::load_model;

/// As the fixtures' own parity tests: f32 on both sides, summed in other orders.
const TOL: f32 = 1e-4;

#[test]
fn yarn_matches_mlx_lm() {
    for case in ["llama_yarn", "qwen3_yarn_mscale"] {
        let path = repo_root()
            .join("fixtures/rope")
            .join(format!("{case}.json"));
        let want: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).unwrap();
        let fixture = want["fixture"].as_str().unwrap();
        let scaling = want["rope_scaling"].clone();
        let dir = edited(fixture, case, |cfg| cfg["rope_scaling"] = scaling);
        let m = load_model(&dir, &exact_options(), &mut |_| {}).expect("loads");
        let prompt = ids(&want["prompt_ids"]);
        let (greedy, logits) = greedy_steps(&m, &prompt, 8);
        let diff = max_abs_diff(&logits[0], &floats(&want["logits_last"]));
        assert!(
            diff < TOL,
            "{case}: last logits differ from mlx-lm by {diff}"
        );
        assert_eq!(greedy, ids(&want["greedy_ids"]), "{case}: greedy tokens");
        // The scaling must matter at these shapes, or the test would show nothing.
        let plain = expected(fixture);
        let plain_diff = max_abs_diff(&logits[0], &floats(&plain["logits_last"]));
        assert!(
            plain_diff > 100.0 * TOL,
            "{case}: YaRN changed the logits by only {plain_diff}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
