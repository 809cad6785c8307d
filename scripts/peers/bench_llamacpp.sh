#!/usr/bin/env bash
# Benchmark a GGUF model with llama.cpp's llama-bench on the CPU and print tok/s.
#
#   scripts/peers/bench_llamacpp.sh MODEL.gguf [extra llama-bench args...]
#
# Runs: llama-bench -m MODEL -t $THREADS -p 512 -n 128 -r $REPS -o json -v [extra]
# and prints pp512 / tg128 tok/s (mean +- stddev over the repetitions), one line per test,
# plus what llama.cpp reports about the CPU and its weight buffers, the memory bandwidth
# measured before and after, and how much CPU the rest of the machine took during the run
# (a WARNING when it is not negligible: on 2 cores that ruins the figures).
#
# Useful extra args (llama-bench takes comma lists and runs every combination):
#   --repack 0          no Q4_0 -> interleaved repacking at load (default is 1)
#   --repack 1,0        both, one after the other
#   -lm mmap|none       load mode (none: read the weights into anonymous memory)
#
# Environment:
#   THREADS (default 2), REPS (default 3), PROMPT (default 512), GEN (default 128)
#   WAIT_QUIET          seconds to wait at most for an idle machine before starting
#   LLAMA_BENCH         path to llama-bench (default: built/found by build_llamacpp.sh)
#   MOESTREAM_PEERS_DIR where raw results go, under results/ (default: $HOME/.cache/moestream-peers)
set -euo pipefail

if [[ $# -lt 1 || ! -f "$1" ]]; then
    sed -n '2,/^set -e/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
MODEL="$1"
shift

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PEERS_DIR="${MOESTREAM_PEERS_DIR:-$HOME/.cache/moestream-peers}"
THREADS="${THREADS:-2}"
REPS="${REPS:-3}"
PROMPT="${PROMPT:-512}"
GEN="${GEN:-128}"
BENCH="${LLAMA_BENCH:-$("$HERE/build_llamacpp.sh" | tail -n1)}"

RESULTS="$PEERS_DIR/results"
mkdir -p "$RESULTS"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
json="$RESULTS/llama-bench-$stamp.json"
log="$RESULTS/llama-bench-$stamp.log"

# WAIT_QUIET=N: first wait up to N seconds for 10 quiet seconds (the rest of the machine
# using under 5% of one core), so that the run starts on an idle machine.
if [[ -n "${WAIT_QUIET:-}" ]]; then
    busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
    hz="$(getconf CLK_TCK)"
    deadline=$(( $(date +%s) + WAIT_QUIET ))
    while :; do
        b0="$(busy)"; sleep 10; b1="$(busy)"
        if (( (b1 - b0) * 100 < 5 * 10 * hz )); then echo "quiet:   yes ($(date +%T))"; break; fi
        if (( $(date +%s) >= deadline )); then echo "quiet:   gave up waiting after ${WAIT_QUIET} s"; break; fi
    done
fi

echo "model:   $MODEL ($(stat -c %s "$MODEL") bytes)"
echo "cpu:     $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores"
echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min)"
echo "memory:  $(awk '/MemAvailable/ {printf "%.1f GiB available", $2/1048576}' /proc/meminfo)"
echo "command: $(basename "$BENCH") -m MODEL -t $THREADS -p $PROMPT -n $GEN -r $REPS -o json -v $*"

MEMBW="$(dirname "$BENCH")/membw"
bw_before=""
[[ -x "$MEMBW" ]] && bw_before="$(OMP_NUM_THREADS="$THREADS" "$MEMBW" | grep -o '[0-9.]* GB/s' | cut -d' ' -f1)"

# Run it, and count the CPU time the rest of the machine used meanwhile (from /proc/stat,
# minus llama-bench's own): its 2 OpenMP threads spin at every barrier, so anything else
# running on a 2-core machine ruins the figures.
stats="$RESULTS/llama-bench-$stamp.cpu"
python3 - "$stats" "$json" "$log" "$BENCH" -m "$MODEL" -t "$THREADS" -p "$PROMPT" -n "$GEN" \
    -r "$REPS" -o json -v "$@" <<'EOF' || { tail -n 30 "$log" >&2; exit 1; }
import os, resource, subprocess, sys, time
stats, out, err, cmd = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
hz = os.sysconf("SC_CLK_TCK")
def cpu():
    v = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / hz, v[7] / hz  # busy, steal
b0, s0 = cpu()
t0 = time.time()
with open(out, "wb") as o, open(err, "wb") as e:
    rc = subprocess.call(cmd, stdin=subprocess.DEVNULL, stdout=o, stderr=e)
b1, s1 = cpu()
t1 = time.time()
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
own = ru.ru_utime + ru.ru_stime
with open(stats, "w") as f:
    f.write(f"{t1 - t0:.1f} {own:.1f} {max(0.0, b1 - b0 - own):.1f} {s1 - s0:.1f}\n")
sys.exit(rc)
EOF
read -r run_wall run_own run_others run_steal <"$stats"

bw_after=""
[[ -x "$MEMBW" ]] && bw_after="$(OMP_NUM_THREADS="$THREADS" "$MEMBW" | grep -o '[0-9.]* GB/s' | cut -d' ' -f1)"

echo "run:     ${run_wall} s wall; llama-bench used ${run_own} CPU-s, everything else ${run_others} CPU-s, hypervisor steal ${run_steal} s"
if awk -v o="$run_others" -v w="$run_wall" 'BEGIN { exit !(o > 1 && o > 0.05 * w) }'; then
    echo "WARNING: other processes used ${run_others} CPU-s during the ${run_wall} s run: the figures below are not clean"
fi
echo "raw:     $json"
echo "log:     $log"
echo

# What llama.cpp saw: CPU features it was built for, and where the weights went
# (CPU_REPACK: copied at load into the interleaved layout; CPU_Mapped: used from the mmap).
sysinfo="$(dirname "$BENCH")/llama-sysinfo"
[[ -x "$sysinfo" ]] && echo "system_info: $("$sysinfo")"
grep -E "model buffer size" "$log" | sort | uniq -c | sed 's/^ */  /' || true
n_repacked="$(grep -c "repack tensor" "$log" || true)"
kinds="$(grep -o "with q[0-9a-z_]*" "$log" | sort | uniq -c | tr -s ' ' | tr '\n' ';' || true)"
echo "  repacked tensors (all runs): $n_repacked (${kinds%;})"
grep -E "cannot be used with preferred buffer type" "$log" | sort -u | sed 's/^/  /' || true
echo

PY="$PEERS_DIR/venv/bin/python"
[[ -x "$PY" ]] || PY=python3
"$PY" - "$json" "$MODEL" "$bw_before" "$bw_after" <<'EOF'
import json, sys
runs = json.load(open(sys.argv[1]))
bws = [float(b) for b in sys.argv[3:5] if b]

def decode_bytes_per_token(path):
    """Weight bytes one decoded token reads: every tensor but the embedding (one row of it),
    with stacked expert tensors (*_exps) counted for the used experts only."""
    try:
        import gguf
    except ImportError:
        return None
    r = gguf.GGUFReader(path, "r")
    arch = r.fields["general.architecture"].contents()
    f = lambda k: r.fields[k].contents() if k in r.fields else None
    n_exp, n_used = f(f"{arch}.expert_count"), f(f"{arch}.expert_used_count")
    total = 0.0
    for t in r.tensors:
        if t.name == "token_embd.weight":
            total += t.n_bytes / int(t.shape[-1])
        elif "_exps." in t.name and n_exp and n_used:
            total += t.n_bytes * n_used / n_exp
        else:
            total += t.n_bytes
    return total

first = runs[0]
print(f"build {first.get('build_commit')} ({first.get('build_number')}), "
      f"backends {first.get('backends')}, cpu_info {first.get('cpu_info')!r}")
print(f"model_type {first.get('model_type')!r}, size {first.get('model_size')} B, "
      f"params {first.get('model_n_params')}")
print()
print(f"{'test':>8} {'threads':>7} {'repack':>6} {'load':>6} {'fa':>4} {'tok/s':>9} {'stddev':>7}  samples")
for r in runs:
    test = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
    print(f"{test:>8} {r['n_threads']:>7} {str(r.get('repack', '?')):>6} "
          f"{str(r.get('load_mode', r.get('use_mmap', '?'))):>6} "
          f"{str(r.get('flash_attn', '?')):>4} {r['avg_ts']:>9.2f} {r['stddev_ts']:>7.2f}  "
          + " ".join(f"{x:.2f}" for x in r.get("samples_ts", [])))
print()
bpt = decode_bytes_per_token(sys.argv[2])
if bws:
    print(f"memory read bandwidth (membw, {runs[0]['n_threads']} threads): "
          + " / ".join(f"{b:.1f}" for b in bws) + " GB/s (before / after)")
if bpt:
    print(f"decode reads {bpt / 1e9:.3f} GB of weights per token")
    for r in runs:
        if r["n_gen"] and not r["n_prompt"]:
            gbs = r["avg_ts"] * bpt / 1e9
            line = f"  tg{r['n_gen']} repack={r.get('repack')}: {gbs:.1f} GB/s of weights"
            if bws:
                line += f" = {100 * gbs / max(bws):.0f}% of the best measured bandwidth"
            print(line)
EOF
