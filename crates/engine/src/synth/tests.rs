//! End-to-end checks of `synth`: the layout matches what mlx-lm wrote for the repository's
//! fixtures, every preset plans the tensors its architecture needs, written models load and
//! decode in the engine, and routing stays spread over the experts.

use super::*;
use crate::weights::safetensors::read_file;
use crate::weights::Dtype;
use crate::{load_model, LoadOptions};
use moestream_kernels::rng::Rng;
use std::collections::BTreeMap;

/// A directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("moestream-synth-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/models")
        .join(name)
}

fn preset(name: &str) -> SynthOptions {
    SynthOptions::new(Source::Preset(name.into()))
}

fn layout(model: &SynthModel) -> BTreeMap<String, (Dtype, Vec<usize>)> {
    model
        .plan
        .tensors
        .iter()
        .map(|t| (t.name.clone(), (t.dtype, t.shape.clone())))
        .collect()
}

/// The planner, fed the config.json of a model mlx-lm quantized and saved, must produce
/// exactly that model's tensor names, dtypes and shapes, quantization block and index
/// totals.
#[test]
fn layout_matches_mlx_lm_fixtures() {
    let fixtures = [
        "qwen3_moe_f32",
        "qwen3_moe_bf16",
        "qwen3_moe_q3_g32_f32",
        "qwen3_moe_q4_g32_f32",
        "qwen3_moe_q4_g64_bf16",
        "qwen3_moe_q4_g64_f32",
        "qwen3_moe_q6_g64_f32",
        "qwen3_moe_q8_g64_f32",
        "qwen3_moe_sparse_step2_f32",
        "glm4_moe_lite_f32",
        "glm4_moe_lite_q4_g32_f32",
        "glm4_moe_lite_qproj_f32",
        "glm4_moe_f32",
        "glm4_moe_q4_g32_f32",
    ];
    for name in fixtures {
        let dir = fixture_dir(name);
        let read_json = |f: &str| -> Value {
            serde_json::from_slice(&std::fs::read(dir.join(f)).unwrap()).unwrap()
        };
        let config = read_json("config.json");
        let quant = config.get("quantization").map(|q| Quant {
            bits: q["bits"].as_u64().unwrap() as u32,
            group_size: q["group_size"].as_u64().unwrap() as usize,
        });
        let float = FloatType::parse(config["torch_dtype"].as_str().unwrap()).unwrap();
        let mut opts = SynthOptions::new(Source::Config {
            label: name.into(),
            config: config.clone(),
        });
        opts.quant = quant;
        opts.float = float;
        let model = build(&opts).unwrap();
        let want: BTreeMap<String, (Dtype, Vec<usize>)> = read_file(&dir.join("model.safetensors"))
            .unwrap()
            .into_iter()
            .map(|(n, t)| (n, (t.dtype, t.shape)))
            .collect();
        assert_eq!(layout(&model), want, "{name}: tensors");
        assert_eq!(
            model.config.get("quantization"),
            config.get("quantization"),
            "{name}: quantization block"
        );
        assert_eq!(
            model.config.get("quantization_config"),
            config.get("quantization_config"),
            "{name}: quantization_config block"
        );
        let index = read_json("model.safetensors.index.json");
        let ours = shards::index_json(&model.plan, &model.shards);
        assert_eq!(
            ours["metadata"], index["metadata"],
            "{name}: index metadata"
        );
        assert_eq!(
            ours["weight_map"], index["weight_map"],
            "{name}: weight map"
        );
    }
}

/// Every preset plans, each tensor an architecture needs is there with the right dtype,
/// shards respect the limit. Prints the sizes (`--nocapture`).
#[test]
fn presets_plan_the_tensors_their_architecture_needs() {
    for p in PRESETS {
        let m = build(&preset(p.name)).unwrap();
        let t = layout(&m);
        let has = |name: &str| t.get(name).cloned();
        let kind = m.model_type().to_string();
        println!(
            "{:22} {:14} {:>5} tensors {:>16} bytes {:>3} shards {:>15} parameters",
            p.name,
            kind,
            t.len(),
            m.tensor_bytes(),
            m.shards.len(),
            m.plan.parameters
        );
        for s in &m.shards {
            let data: u64 = s.tensors.iter().map(|&i| m.plan.tensors[i].bytes()).sum();
            assert!(
                data <= MAX_SHARD_BYTES,
                "{}: shard {} too big",
                p.name,
                s.file
            );
        }
        let count: usize = m.shards.iter().map(|s| s.tensors.len()).sum();
        assert_eq!(
            count,
            t.len(),
            "{}: every tensor in exactly one shard",
            p.name
        );
        let q = m.config["quantization"].as_object().unwrap();
        assert_eq!(m.config["quantization"], m.config["quantization_config"]);
        match kind.as_str() {
            "qwen3_moe" => {
                let num = |k: &str| m.config[k].as_u64().unwrap() as usize;
                // The router is 8-bit: H * 8 / 32 words per row.
                assert_eq!(
                    has("model.layers.0.mlp.gate.weight").unwrap(),
                    (Dtype::U32, vec![num("num_experts"), num("hidden_size") / 4])
                );
                assert!(q.contains_key("model.layers.0.mlp.gate"));
                assert!(has("model.layers.0.self_attn.q_norm.weight").is_some());
                assert!(has("model.layers.0.mlp.switch_mlp.down_proj.scales").is_some());
            }
            "qwen3_next" => {
                let l0 = "model.layers.0.linear_attn";
                assert!(has(&format!("{l0}.in_proj_qkvz.weight")).is_some());
                assert!(has(&format!("{l0}.in_proj_ba.weight")).is_some());
                assert_eq!(
                    has(&format!("{l0}.conv1d.weight")).unwrap(),
                    (Dtype::Bf16, vec![8192, 4, 1])
                );
                assert_eq!(
                    has(&format!("{l0}.A_log")).unwrap(),
                    (Dtype::Bf16, vec![32])
                );
                // Layer 3 is full (gated) attention: q_proj doubled.
                let q3 = has("model.layers.3.self_attn.q_proj.scales").unwrap();
                assert_eq!(q3.1, vec![2 * 16 * 256, 2048 / 64]);
                assert!(has("model.layers.0.mlp.shared_expert_gate.weight").is_some());
                assert!(q.contains_key("model.layers.0.mlp.shared_expert_gate"));
                assert!(q.contains_key("model.layers.47.mlp.gate"));
            }
            "qwen3_5_moe" => {
                let l0 = "language_model.model.layers.0";
                for n in [
                    "in_proj_qkv",
                    "in_proj_z",
                    "in_proj_b",
                    "in_proj_a",
                    "out_proj",
                ] {
                    assert!(
                        has(&format!("{l0}.linear_attn.{n}.weight")).is_some(),
                        "{n}"
                    );
                }
                assert_eq!(
                    has(&format!("{l0}.linear_attn.A_log")).unwrap().0,
                    Dtype::F32
                );
                assert!(has("language_model.lm_head.weight").is_some());
                assert!(has("language_model.model.embed_tokens.weight").is_some());
                assert!(q.contains_key(&format!("{l0}.mlp.gate")));
                assert!(q.contains_key(&format!("{l0}.mlp.shared_expert_gate")));
                assert!(has("language_model.model.layers.3.self_attn.q_norm.weight").is_some());
                assert!(m.config["text_config"]["num_hidden_layers"].is_u64());
            }
            "glm4_moe_lite" => {
                let a = "model.layers.1.self_attn";
                // MultiLinear [heads, R, dn] quantized: U32 [20, 512, 192 * 4 / 32].
                assert_eq!(
                    has(&format!("{a}.embed_q.weight")).unwrap(),
                    (Dtype::U32, vec![20, 512, 24])
                );
                assert_eq!(
                    has(&format!("{a}.unembed_out.weight")).unwrap(),
                    (Dtype::U32, vec![20, 256, 64])
                );
                assert_eq!(
                    has("model.layers.1.mlp.gate.weight").unwrap(),
                    (Dtype::Bf16, vec![64, 2048])
                );
                assert_eq!(
                    has("model.layers.1.mlp.gate.e_score_correction_bias").unwrap(),
                    (Dtype::F32, vec![64])
                );
                assert!(has("model.layers.1.mlp.shared_experts.down_proj.weight").is_some());
                assert!(
                    has("model.layers.0.mlp.gate_proj.weight").is_some(),
                    "layer 0 dense"
                );
                assert!(
                    has("model.layers.47.input_layernorm.weight").is_none(),
                    "no MTP layer"
                );
                assert_eq!(q.len(), 3, "no overrides");
            }
            "glm4_moe" => {
                let a = "model.layers.1.self_attn";
                assert_eq!(
                    has(&format!("{a}.q_proj.bias")).unwrap(),
                    (Dtype::Bf16, vec![96 * 128])
                );
                assert!(has(&format!("{a}.q_norm.weight")).is_none(), "no qk norm");
                assert_eq!(
                    has("model.layers.1.mlp.gate.e_score_correction_bias").unwrap(),
                    (Dtype::F32, vec![128])
                );
                assert!(has("model.layers.1.mlp.shared_experts.up_proj.weight").is_some());
                assert!(
                    has("model.layers.0.mlp.gate_proj.weight").is_some(),
                    "layer 0 dense"
                );
                assert!(
                    has("model.layers.46.input_layernorm.weight").is_none(),
                    "no MTP layer"
                );
            }
            "olmoe" => {
                assert_eq!(
                    has("model.layers.0.self_attn.q_norm.weight").unwrap().1,
                    vec![2048]
                );
                assert!(has("model.layers.0.mlp.gate.weight").unwrap().0 == Dtype::U32);
                assert_eq!(q.len(), 3, "no overrides");
            }
            "mixtral" => {
                assert!(has("model.layers.0.block_sparse_moe.gate.weight").is_some());
                assert!(has("model.layers.0.block_sparse_moe.switch_mlp.up_proj.weight").is_some());
                assert!(has("model.layers.0.self_attn.q_norm.weight").is_none());
            }
            other => panic!("preset {} has unexpected model_type {other}", p.name),
        }
    }
}

#[test]
fn bad_options_are_clear_errors() {
    let mut o = preset("tiny");
    o.quant = Some(Quant {
        bits: 7,
        group_size: 64,
    });
    assert!(build(&o).unwrap_err().to_string().contains("--bits 7"));
    o.quant = Some(Quant {
        bits: 4,
        group_size: 48,
    });
    assert!(build(&o)
        .unwrap_err()
        .to_string()
        .contains("--group-size 48"));
    let e = build(&preset("nope")).unwrap_err().to_string();
    assert!(e.contains("nope") && e.contains("qwen3-30b-a3b"), "{e}");
    let mut o = preset("tiny");
    o.layers = Some(0);
    assert!(build(&o).is_err());
    let bad = Source::Config {
        label: "x".into(),
        config: serde_json::json!({"model_type": "gpt2"}),
    };
    assert!(build(&SynthOptions::new(bad))
        .unwrap_err()
        .to_string()
        .contains("gpt2"));
}

#[test]
fn layers_override_keeps_derived_fields_consistent() {
    let mut o = preset("qwen3.5-122b-a10b");
    o.layers = Some(6);
    let m = build(&o).unwrap();
    let text = &m.config["text_config"];
    assert_eq!(text["num_hidden_layers"], 6);
    assert_eq!(text["layer_types"].as_array().unwrap().len(), 6);
    assert_eq!(text["layer_types"][3], "full_attention");
    let t = layout(&m);
    assert!(t.contains_key("language_model.model.layers.5.input_layernorm.weight"));
    assert!(!t.contains_key("language_model.model.layers.6.input_layernorm.weight"));
}

fn write_quiet(model: &SynthModel, out: &Path, force: bool) -> Result<SynthReport, SynthError> {
    write(model, out, force, &mut |_, _| {})
}

/// Per MoE layer: (experts used at least once, experts, largest share of selections).
fn spread(usage: &[Vec<u64>]) -> Vec<(usize, usize, f64)> {
    usage
        .iter()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let total: u64 = l.iter().sum();
            let used = l.iter().filter(|&&c| c > 0).count();
            let max = l.iter().copied().max().unwrap_or(0);
            (used, l.len(), max as f64 / total.max(1) as f64)
        })
        .collect()
}

/// Loads `dir` and decodes `steps` tokens one at a time: greedy (each token the argmax of
/// the last logits) or varied (pseudo-random ids, like a diverse prompt). Returns the
/// routing spread and the last logits.
fn decode(dir: &Path, steps: usize, greedy: bool) -> (Vec<(usize, usize, f64)>, Vec<f32>) {
    let loaded = load_model(dir, &LoadOptions::default(), &mut |_| {}).unwrap();
    let model = &loaded.model;
    let vocab = model.info.vocab_size;
    let mut cache = model.new_cache();
    let mut logits = Vec::new();
    let mut rng = Rng::new(5);
    let mut id = 1u32;
    for _ in 0..steps {
        model
            .forward(&[id], &mut cache, false, &mut logits)
            .unwrap();
        assert!(logits.iter().all(|v| v.is_finite()), "non-finite logits");
        id = if greedy {
            let best = logits
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(i, _)| i);
            best as u32
        } else {
            rng.below(vocab) as u32
        };
    }
    (spread(&model.experts.usage()), logits)
}

fn report(label: &str, s: &[(usize, usize, f64)]) {
    let used: Vec<usize> = s.iter().map(|x| x.0).collect();
    let min = used.iter().min().copied().unwrap_or(0);
    let mean = used.iter().sum::<usize>() as f64 / used.len().max(1) as f64;
    let share = s.iter().map(|x| x.2).fold(0.0, f64::max);
    println!(
        "{label}: experts used per layer min {min} mean {mean:.1} of {}; largest share of one expert {:.3}; per layer {used:?}",
        s.first().map_or(0, |x| x.1),
        share
    );
}

/// The `tiny` preset writes, loads, decodes, and routes 64 tokens over most experts.
#[test]
fn tiny_loads_decodes_and_routes_spread() {
    let dir = TempDir::new("tiny");
    let model = build(&preset("tiny")).unwrap();
    let mut last = 0;
    write(&model, &dir.0, false, &mut |d, t| {
        assert!(d > last && d <= t);
        last = d;
    })
    .unwrap();
    assert_eq!(last, model.tensor_bytes());
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
    ] {
        assert!(dir.0.join(f).is_file(), "{f}");
    }
    let (varied, _) = decode(&dir.0, 64, false);
    let (greedy, _) = decode(&dir.0, 64, true);
    report("tiny varied", &varied);
    report("tiny greedy", &greedy);
    for (layer, &(used, n, share)) in varied.iter().enumerate() {
        assert!(
            used * 4 >= n * 3,
            "layer {layer}: only {used} of {n} experts used"
        );
        assert!(
            share < 0.25,
            "layer {layer}: one expert takes {share:.2} of the selections"
        );
    }
}

/// The same seed gives the same bytes however the tensors are sharded: a multi-shard
/// write loads through the index and decodes to the same logits as a single file.
#[test]
fn sharding_does_not_change_the_model() {
    let (one, many) = (TempDir::new("one"), TempDir::new("many"));
    let mut o = preset("tiny");
    o.layers = Some(2);
    let single = build(&o).unwrap();
    o.max_shard_bytes = 1 << 20;
    let sharded = build(&o).unwrap();
    assert_eq!(single.shards.len(), 1);
    assert!(sharded.shards.len() > 2);
    assert_eq!(
        sharded.shards[0].file,
        format!("model-00001-of-{:05}.safetensors", sharded.shards.len())
    );
    write_quiet(&single, &one.0, false).unwrap();
    write_quiet(&sharded, &many.0, false).unwrap();
    let (_, a) = decode(&one.0, 3, false);
    let (_, b) = decode(&many.0, 3, false);
    assert_eq!(a, b);
}

#[test]
fn an_existing_model_is_kept_unless_forced() {
    let dir = TempDir::new("force");
    let mut o = preset("tiny");
    o.layers = Some(1);
    o.max_shard_bytes = 1 << 20;
    let sharded = build(&o).unwrap();
    write_quiet(&sharded, &dir.0, false).unwrap();
    let e = write_quiet(&sharded, &dir.0, false).unwrap_err();
    assert!(matches!(e, SynthError::ExistingModel(_)), "{e}");
    // Forced, with one shard now: the old shards must go, or loaders would see both.
    o.max_shard_bytes = MAX_SHARD_BYTES;
    let single = build(&o).unwrap();
    write_quiet(&single, &dir.0, true).unwrap();
    let weights: Vec<String> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".safetensors"))
        .collect();
    assert_eq!(weights, vec!["model.safetensors".to_string()]);
    load_model(&dir.0, &LoadOptions::default(), &mut |_| {}).unwrap();
    // A file where the directory should be is refused.
    let file = dir.0.join("config.json");
    assert!(matches!(
        write_quiet(&single, &file, true).unwrap_err(),
        SynthError::NotADirectory { .. }
    ));
}

/// What synth writes for the GLM families (their fixture configs, 4-bit) loads and decodes,
/// routing over most experts.
#[test]
fn glm_synth_models_load_and_decode() {
    for name in ["glm4_moe_lite_f32", "glm4_moe_f32"] {
        let dir = TempDir::new(name);
        let config: Value =
            serde_json::from_slice(&std::fs::read(fixture_dir(name).join("config.json")).unwrap())
                .unwrap();
        let mut o = SynthOptions::new(Source::Config {
            label: name.into(),
            config,
        });
        o.quant = Some(Quant {
            bits: 4,
            group_size: 32,
        });
        write_quiet(&build(&o).unwrap(), &dir.0, false).unwrap();
        let (spread, _) = decode(&dir.0, 48, false);
        report(name, &spread);
        assert_eq!(spread.len(), 2, "{name}: layers 1 and 2 are MoE");
        for &(used, n, _) in &spread {
            assert!(used * 2 >= n, "{name}: only {used} of {n} experts used");
        }
    }
}

#[test]
fn unquantized_models_load() {
    let dir = TempDir::new("float");
    let mut o = preset("tiny");
    o.layers = Some(2);
    o.quant = None;
    o.float = FloatType::F32;
    let m = build(&o).unwrap();
    assert!(m.config.get("quantization").is_none());
    assert!(m.plan.tensors.iter().all(|t| t.dtype == Dtype::F32));
    write_quiet(&m, &dir.0, false).unwrap();
    let (s, _) = decode(&dir.0, 16, false);
    assert_eq!(s.len(), 2);
}

/// Routing spread at the real Qwen3-30B-A3B shape (4 layers, 64 tokens). Slow in debug:
/// `cargo test --release -p moestream-engine synth -- --ignored --nocapture`.
#[test]
#[ignore]
fn qwen3_30b_routing_spread() {
    let dir = TempDir::new("q30b");
    let mut o = preset("qwen3-30b-a3b");
    o.layers = Some(4);
    let m = build(&o).unwrap();
    let t = std::time::Instant::now();
    write_quiet(&m, &dir.0, false).unwrap();
    println!(
        "wrote {} bytes in {:.1}s",
        m.tensor_bytes(),
        t.elapsed().as_secs_f64()
    );
    let (varied, _) = decode(&dir.0, 64, false);
    let (greedy, _) = decode(&dir.0, 64, true);
    report("qwen3-30b-a3b (4 layers) varied", &varied);
    report("qwen3-30b-a3b (4 layers) greedy", &greedy);
    for &(used, n, _) in &varied {
        assert!(used * 4 >= n * 3);
    }
}

/// What synth writes for an architecture and what that architecture's loader asks for are
/// the same tensors: for every preset (4 layers, so both layer kinds of the hybrids appear)
/// and every fixture config, quantized and not, each linear layer the loader requests has
/// its weight (and scales/biases when quantized, bias when asked) of the requested shape,
/// each float tensor has its exact shape, and synth writes nothing else.
#[test]
fn synth_writes_what_the_loaders_ask_for() {
    use crate::weights::linear::Request;
    let mut sources: Vec<(String, Source)> = PRESETS
        .iter()
        .map(|p| (p.name.to_string(), Source::Preset(p.name.into())))
        .collect();
    for name in [
        "qwen3_next_f32",
        "qwen3_5_moe_f32",
        "glm4_moe_lite_qproj_f32",
        "mixtral_f32",
    ] {
        let text = std::fs::read_to_string(fixture_dir(name).join("config.json")).unwrap();
        let config: Value = serde_json::from_str(&text).unwrap();
        sources.push((
            name.into(),
            Source::Config {
                label: name.into(),
                config,
            },
        ));
    }
    for (name, source) in sources {
        for quant in [
            None,
            Some(Quant {
                bits: 4,
                group_size: 64,
            }),
        ] {
            let mut opts = SynthOptions::new(source.clone());
            opts.quant = quant;
            opts.layers = Some(4);
            let model = build(&opts).unwrap_or_else(|e| panic!("{name}: {e}"));
            let what = format!("{name} ({:?})", quant.map(|q| q.bits));
            let mut planned: BTreeMap<String, Vec<usize>> = model
                .plan
                .tensors
                .iter()
                .map(|t| (t.name.clone(), t.shape.clone()))
                .collect();
            let config = crate::config::ModelConfig::from_value(model.config.clone()).unwrap();
            let requests = crate::loader::requested_weights(&config)
                .unwrap_or_else(|e| panic!("{what}: the loader refuses synth's config: {e}"));
            let take = |planned: &mut BTreeMap<String, Vec<usize>>, n: &str| {
                planned.remove(n).unwrap_or_else(|| {
                    panic!("{what}: the loader wants {n}, synth does not write it")
                })
            };
            for r in requests {
                match r {
                    Request::Floats { name: n, shape } => {
                        assert_eq!(take(&mut planned, &n), shape, "{what}: {n}");
                    }
                    Request::Linear {
                        module,
                        lead,
                        out,
                        inp,
                        bias,
                    } => {
                        let rows = [lead.as_slice(), &[out]].concat();
                        let w = take(&mut planned, &format!("{module}.weight"));
                        assert_eq!(w[..w.len() - 1], rows[..], "{what}: {module}.weight");
                        if planned.contains_key(&format!("{module}.scales")) {
                            let s = take(&mut planned, &format!("{module}.scales"));
                            let b = take(&mut planned, &format!("{module}.biases"));
                            assert_eq!(s, b, "{what}: {module} scales/biases");
                            let (words, groups) = (w[w.len() - 1], s[s.len() - 1]);
                            assert!(
                                (words * 32).is_multiple_of(inp) && inp.is_multiple_of(groups),
                                "{what}: {module}: {words} code words, {groups} groups for {inp} inputs"
                            );
                        } else {
                            assert_eq!(w[w.len() - 1], inp, "{what}: {module}.weight");
                        }
                        if bias {
                            assert_eq!(
                                take(&mut planned, &format!("{module}.bias")),
                                rows,
                                "{what}"
                            );
                        }
                    }
                }
            }
            assert!(
                planned.is_empty(),
                "{what}: synth writes tensors no loader reads: {:?}",
                planned.keys().collect::<Vec<_>>()
            );
        }
    }
}
