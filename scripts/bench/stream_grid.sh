#!/usr/bin/env bash
# Decode speed of --stream-experts over cache slots x prefetch policy x io depth.
#
#   scripts/bench/stream_grid.sh MODEL_DIR [extra bench flags...]
#
# Every combination of SLOTS (default "16 32 64"), PREFETCH ("none prev lookahead") and
# DEPTHS ("4 16 32") runs `moestream bench --stream-experts --prompt-tokens 16 --gen-tokens
# $GEN` (default 48) with the extra flags (e.g. --direct-io, so that every miss is a disk
# read); the whole grid is run REPS times (default 2) round-robin, so slow spells of a shared
# machine spread over all cells, and each cell reports its median decode tok/s, hit rate,
# prefetch hit rate and I/O stall. Prints a markdown table.
set -euo pipefail
DIR="${1:?model dir}"; shift
BIN="${MOESTREAM:-target/release/moestream}"
SLOTS="${SLOTS:-16 32 64}"; PREFETCH="${PREFETCH:-none prev lookahead}"
DEPTHS="${DEPTHS:-4 16 32}"; GEN="${GEN:-48}"; REPS="${REPS:-2}"
out="$(mktemp -d)"
echo "load: $(cut -d' ' -f1-3 /proc/loadavg) at $(date -u +%T) UTC; flags: $*" >&2
for rep in $(seq "$REPS"); do
    for s in $SLOTS; do for p in $PREFETCH; do for d in $DEPTHS; do
        "$BIN" bench --model "$DIR" --stream-experts --cache-slots "$s" --prefetch "$p" \
            --io-depth "$d" --prompt-tokens 16 --gen-tokens "$GEN" --bandwidth-bytes 100000000 \
            --json "$@" 2>/dev/null > "$out/$s-$p-$d-$rep.json"
    done; done; done
    echo "rep $rep done at $(date -u +%T) UTC, load $(cut -d' ' -f1 /proc/loadavg)" >&2
done
python3 - "$out" "$SLOTS" "$PREFETCH" "$DEPTHS" <<'PY'
import json, sys, glob, statistics as st
out, slots, pre, depths = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), sys.argv[4].split()
print("| slots | prefetch | io depth | decode tok/s (median; runs) | hit rate | prefetch used | I/O stall ms/token |")
print("|---|---|---|---|---|---|---|")
for s in slots:
    for p in pre:
        for d in depths:
            runs = [json.load(open(f))["figures"] for f in sorted(glob.glob(f"{out}/{s}-{p}-{d}-*.json"))]
            tok = [r["decode_tok_s"] for r in runs]
            m = lambda k: st.median(r[k] for r in runs)
            used = f'{100*m("decode_prefetch_hit_rate"):.0f}% of {m("decode_prefetch_reads")/m("gen_tokens"):.1f}/token' if p != "none" else "-"
            print(f'| {s} | {p} | {d} | **{st.median(tok):.2f}** ({", ".join(f"{t:.2f}" for t in tok)}) | {100*m("decode_expert_hit_rate"):.1f}% | {used} | {1e3*m("decode_io_stall_s_per_token"):.0f} |')
PY
echo "load: $(cut -d' ' -f1-3 /proc/loadavg) at $(date -u +%T) UTC" >&2
