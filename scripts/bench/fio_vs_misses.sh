#!/usr/bin/env bash
# Disk reads of the expert miss path against fio on the same files, same read sizes, same
# depth, page cache dropped before every run.
#
#   scripts/bench/fio_vs_misses.sh MODEL_DIR [DEPTH]
#
# One expert of the Qwen3-30B-A3B shapes (4-bit, group 64, bf16 scales) is read as 9 slabs:
# gate/up/down weights of 768 KiB (768 x 2048 or 2048 x 768 4-bit codes) and their scales and
# biases of 48 KiB each, so the fio jobs read random 768 KiB and 48 KiB blocks in that
# proportion (bssplit 768k/33:48k/67, by count) over the model's safetensors files, at the
# same queue depth as moestream (default 16), with io_uring and with 16 psync threads (the
# pread pool's shape), buffered and O_DIRECT. Each fio run reads 4 GiB (a quarter of the
# files, so buffered runs re-hit few pages). Then `moestream bench --stream-experts
# --prefetch none` decodes 24 tokens after an 8-token prompt per mode; its miss-path
# bandwidth is the bytes read on misses over the time the forward pass waited for them.
# Needs fio and root (drop_caches).
set -euo pipefail
DIR="${1:?model dir}"
DEPTH="${2:-16}"
BIN="${MOESTREAM:-target/release/moestream}"
files="$(ls "$DIR"/*.safetensors | paste -sd: -)"
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
echo "load: $(cut -d' ' -f1-3 /proc/loadavg) at $(date -u +%T) UTC; depth $DEPTH"
for engine in io_uring psync; do
    for direct in 0 1; do
        drop
        if [[ $engine == io_uring ]]; then jobs=1; par=(--ioengine=io_uring --iodepth="$DEPTH")
        else jobs="$DEPTH"; par=(--ioengine=psync); fi
        bw="$(fio --name=experts --readonly --filename="$files" --rw=randread \
            --bssplit=768k/33:48k/67 --direct=$direct --io_size=$((4096 / jobs))m \
            --numjobs=$jobs "${par[@]}" --group_reporting --output-format=json \
            | python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]["read"]; print("%.2f GB/s, %.1f GiB" % (j["bw_bytes"]/1e9, j["io_bytes"]/2**30))')"
        echo "fio $engine direct=$direct: $bw"
    done
done
for engine in io-uring pread; do
    for direct in "--direct-io off" "--direct-io on"; do
        drop
        "$BIN" bench --model "$DIR" --stream-experts --prefetch none --io-engine $engine \
            --io-depth "$DEPTH" $direct --prompt-tokens 8 --gen-tokens 24 \
            --bandwidth-bytes 100000000 --json 2>/dev/null | python3 -c '
import json, sys
f = json.load(sys.stdin)["figures"]
print("moestream %s %s: miss-path %.2f GB/s, %.0f MB/token on misses, hit rate %.1f%%, decode %.2f tok/s, stall %.0f ms/token (%s)" % (
    sys.argv[1], sys.argv[2], f["decode_expert_read_bandwidth_bytes_s"] / 1e9,
    f["decode_expert_miss_bytes_per_token"] / 1e6, 100 * f["decode_expert_hit_rate"],
    f["decode_tok_s"], 1e3 * f["decode_io_stall_s_per_token"], f["expert_store"]))' "$engine" "$direct"
    done
done
echo "load: $(cut -d' ' -f1-3 /proc/loadavg) at $(date -u +%T) UTC"
