#!/usr/bin/env python3
"""Reference outputs for RoPE scaling types moestream implements from mlx-lm's
`initialize_rope` (mlx_lm/models/rope_utils.py): a fixture model run by mlx-lm with its
config's `rope_scaling` replaced, written to fixtures/rope/<name>.json (the prompt's
last-row logits, greedy ids). `crates/engine/tests/rope_scaling.rs` loads the same model with
the same replacement and compares.

Run from the repository root with the pinned versions of scripts/requirements-fixtures.txt:
    python3 scripts/make_rope_fixtures.py
"""
import json
import shutil
import tempfile
from pathlib import Path

import mlx.core as mx
import mlx_lm
from mlx_lm.utils import load_model

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "fixtures" / "rope"

# (output name, fixture model, rope_scaling): YaRN as Qwen3 documents it for long context
# (factor 4 over a shorter original window, so that the ramp and mscale both act at these
# head sizes), and DeepSeek-style with mscale / mscale_all_dim.
CASES = [
    ("llama_yarn", "llama_dense_f32",
     {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024}),
    ("qwen3_yarn_mscale", "qwen3_dense_f32",
     {"type": "yarn", "factor": 8.0, "original_max_position_embeddings": 512,
      "beta_fast": 16, "beta_slow": 2, "mscale": 0.8, "mscale_all_dim": 0.5}),
]
GREEDY = 8


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for name, fixture, scaling in CASES:
        src = REPO / "fixtures" / "models" / fixture
        expected = json.loads((src / "expected.json").read_text())
        prompt = expected["prompt_ids"]
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp) / fixture
            shutil.copytree(src, d)
            cfg = json.loads((d / "config.json").read_text())
            cfg["rope_scaling"] = scaling
            (d / "config.json").write_text(json.dumps(cfg))
            model, _ = load_model(d)
            ids = list(prompt)
            logits = model(mx.array([ids]))[0, -1].astype(mx.float32)
            last = [float(v) for v in logits.tolist()]
            greedy = []
            for _ in range(GREEDY):
                nxt = int(mx.argmax(model(mx.array([ids]))[0, -1]).item())
                greedy.append(nxt)
                ids.append(nxt)
        out = {
            "fixture": fixture,
            "rope_scaling": scaling,
            "prompt_ids": prompt,
            "logits_last": last,
            "greedy_ids": greedy,
            "mlx_versions": {"mlx": mx.__version__, "mlx_lm": mlx_lm.__version__},
        }
        (OUT / f"{name}.json").write_text(json.dumps(out) + "\n")
        print(name, "greedy", greedy)


if __name__ == "__main__":
    main()
