#!/usr/bin/env bash
# A model larger than RAM, emulated with a memory cgroup: moestream --stream-experts and
# llama.cpp (mmap) side by side under the same limit, page cache dropped before each run.
#
#   scripts/bench/larger_than_ram.sh MODEL_DIR GGUF [LIMIT] [BUDGET]
#
# LIMIT (default 10G) is the cgroup's memory.limit_in_bytes: it caps the process memory
# plus the page cache it causes (scripts/bench/in_memory_cgroup.sh). BUDGET (default 8G) is
# moestream's --memory-budget. Runs, each in a fresh cgroup state:
#   moestream bench --stream-experts (defaults), buffered and --direct-io, PROMPT (32) then
#     GEN (64) tokens;
#   llama-bench -t 2 -p PROMPT -n GEN -r 1 --no-warmup with --repack 0 (weights used from the
#     mmap through the page cache) and with the default --repack 1 (copies them into anonymous
#     memory: 16 GB, more than the limit).
# RUNS selects a subset ("ms-buffered ms-direct llama-mmap llama-repack").
# Set LLAMA_BENCH to the llama-bench binary (default: the one scripts/peers builds).
set -uo pipefail
DIR="${1:?model dir}"; GGUF="${2:?gguf}"; LIMIT="${3:-10G}"; BUDGET="${4:-8G}"
PROMPT="${PROMPT:-32}"; GEN="${GEN:-64}"
RUNS="${RUNS:-ms-buffered ms-direct llama-mmap llama-repack}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN="${MOESTREAM:-target/release/moestream}"
LB="${LLAMA_BENCH:-$(ls "${MOESTREAM_PEERS_DIR:-$HOME/.cache/moestream-peers}"/build-*/bin/llama-bench | head -n1)}"
echo "model: $DIR ($(du -sb "$DIR" | cut -f1) bytes), gguf: $GGUF ($(stat -c %s "$GGUF") bytes), cgroup limit $LIMIT"
summary() { python3 -c '
import json, sys
j = json.load(sys.stdin); f = j["figures"]
print("moestream: prefill %.2f tok/s, decode %.2f tok/s, hit rate %.1f%%, %.0f MB read per token (%.0f MB on misses), prefetch used %.0f%%, stall %.0f ms/token, peak RSS %.2f GiB, RSS at decode start %.2f GiB, at end %.2f GiB [%s]" % (
  f["prefill_tok_s"], f["decode_tok_s"], 100 * f["decode_expert_hit_rate"],
  f["decode_expert_bytes_read_per_token"] / 1e6, f["decode_expert_miss_bytes_per_token"] / 1e6,
  100 * f["decode_prefetch_hit_rate"], 1e3 * f["decode_io_stall_s_per_token"],
  f["peak_rss_bytes"] / 2**30, f["rss_decode_start_bytes"] / 2**30, f["rss_end_bytes"] / 2**30, f["expert_store"]))'; }
llama_summary() { python3 -c '
import json, sys
for t in json.load(sys.stdin):
    kind = "pp%d" % t["n_prompt"] if t["n_prompt"] else "tg%d" % t["n_gen"]
    print("llama.cpp %s: %.2f tok/s (repack %s)" % (kind, t["avg_ts"], t.get("repack", t.get("use_extra_bufts", "?"))))'; }
for run in $RUNS; do
    echo "== $run"
    case $run in
    ms-buffered|ms-direct)
        flag=""; [[ $run == ms-direct ]] && flag="--direct-io"
        "$HERE/in_memory_cgroup.sh" "$LIMIT" moestream-ltr -- "$BIN" bench --model "$DIR" \
            --stream-experts --memory-budget "$BUDGET" $flag --prompt-tokens "$PROMPT" \
            --gen-tokens "$GEN" --bandwidth-bytes 100000000 --json > /tmp/ltr-$run.json 2> /tmp/ltr-$run.err
        tail -n 4 /tmp/ltr-$run.err | grep -v "^decode:\|^prefill:"
        summary < /tmp/ltr-$run.json ;;
    llama-mmap|llama-repack)
        rp=0; [[ $run == llama-repack ]] && rp=1
        "$HERE/in_memory_cgroup.sh" "$LIMIT" moestream-ltr -- "$LB" -m "$GGUF" -t 2 -p "$PROMPT" \
            -n "$GEN" -r 1 --no-warmup --repack $rp -o json > /tmp/ltr-$run.json 2> /tmp/ltr-$run.err
        tail -n 3 /tmp/ltr-$run.err
        llama_summary < /tmp/ltr-$run.json || echo "llama.cpp repack $rp: no result (see above)";;
    esac
done
