#!/usr/bin/env bash
# Runs wgconv-bench and the PyTorch baseline on a lent NVIDIA machine (see docs/PERF.md).
# Expects the Vulkan loader .deb in .gl/ and a release build of wgconv-bench in .gpu/; writes
# reports to $OUT. Usage: scripts/device_bench.sh [extra bench variants as ENV=VALUE:layers ...]
# DTYPES="f16 bf16" also runs the suite and the baseline in those dtypes (--dtype). Everything
# is also packed into $OUT/reports.tgz (the device tool brings back at most 8 files).
set -u
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
B=.gpu/wgconv-bench
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
SUITE=${SUITE:-resnet}
timeout 300 $B --suite "$SUITE" --json "$OUT/main.json" ${MAIN_ARGS:-} 2>&1 | tee "$OUT/main.txt" | tail -n 70
timeout 240 python3 scripts/torch_baseline.py "$OUT/main.json" --json "$OUT/ratios.json" 2>&1 | tee "$OUT/torch.txt" | tail -n 60
i=0
for v in "$@"; do
    i=$((i + 1))
    env_part=${v%%:*}
    layers=${v#*:}
    echo "== variant $i: $env_part layers=$layers"
    env $env_part timeout 120 $B --suite "$SUITE" --no-check --layers "$layers" --json "$OUT/v$i.json" 2>&1 | grep -E "conv2d_(forward|backward_input|backward_weight) " | tee "$OUT/v$i.txt"
done
for dt in ${DTYPES:-}; do
    echo "== dtype $dt"
    timeout 300 $B --suite "$SUITE" --dtype "$dt" --chain 0 --json "$OUT/main_$dt.json" ${MAIN_ARGS:-} 2>&1 | tail -n 3
    timeout 240 python3 scripts/torch_baseline.py "$OUT/main_$dt.json" --json "$OUT/ratios_$dt.json" 2>&1 | tail -n 12
done
(cd "$OUT" && tar czf reports.tgz --exclude reports.tgz .)
