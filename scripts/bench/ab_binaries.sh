#!/usr/bin/env bash
# Two builds of moestream side by side on one model, alternating (A B A B ...), so that a
# machine whose speed drifts (a shared VM) does not favour either: prefill and decode tok/s
# per run, then each build's median and the ratio B/A.
#
#   scripts/bench/ab_binaries.sh OLD_BINARY NEW_BINARY MODEL [ROUNDS] [-- extra bench args]
#
# PROMPT and GEN set the prompt and decode lengths (default 512 and 128).
set -euo pipefail
a=$1 b=$2 model=$3 rounds=${4:-3}
shift $(( $# >= 4 ? 4 : 3 ))
[[ ${1:-} == -- ]] && shift
prompt=${PROMPT:-512} gen=${GEN:-128}
out=$(mktemp -d)
for i in $(seq 1 "$rounds"); do
    for which in a b; do
        bin=$a; [[ $which == b ]] && bin=$b
        "$bin" bench --model "$model" --prompt-tokens "$prompt" --gen-tokens "$gen" --json "$@" \
            2>/dev/null >"$out/$which-$i.json"
        python3 -c '
import json, sys
f = json.load(open(sys.argv[1]))["figures"]
p, d = f["prefill_tok_s"], f["decode_tok_s"]
print(f"{sys.argv[2]} run {sys.argv[3]}: prefill {p:.1f} tok/s, decode {d:.2f} tok/s")
' "$out/$which-$i.json" "$which" "$i"
    done
done
python3 - "$out" "$rounds" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def med(which, key):
    return statistics.median(json.load(open(f"{out}/{which}-{i}.json"))["figures"][key]
                             for i in range(1, rounds + 1))
for key in ("prefill_tok_s", "decode_tok_s"):
    a, b = med("a", key), med("b", key)
    print(f"{key}: median A {a:.2f}, B {b:.2f}, B/A {b / a:.3f}")
PY
rm -rf "$out"
