#!/usr/bin/env bash
# The one device command of the GPU check (benchmarks/gpu_check.py; benchmarks/GPU_CHECK.md).
#
# Here first: python3 scripts/gpu_check_wheels.py    (writes .whl/gpu_check, ~14 MiB, checks the 64 MiB)
# Then one device-tool call, install and every section inside it:
#   run(command="bash scripts/gpu_check.sh", carry=[".whl/gpu_check"], timeout_s=330)
#
# It installs .whl/gpu_check into /tmp/site (skipped on a warm machine that already holds this exact
# set), puts /tmp/site and the repository first on PYTHONPATH, and runs gpu_check.py with what is left
# of the call's 330 s (GPU_CHECK_CALL_S) less 15 s for writing the results. Extra arguments go to
# gpu_check.py, e.g. a rerun of some sections: bash scripts/gpu_check.sh --sections b_padding,a_unsloth
# Results: gpu_check.json, gpu_check.md and gpu_check.log under $OUT (the device tool brings them back).
#
# On CPU: bash scripts/gpu_check.sh --dry-run (tests/test_gpu_check.py runs it so; GPU_CHECK_WHEELS,
# GPU_CHECK_SITE and PYTHON point it at other folders and another interpreter). Exit status: gpu_check.py's
# (0 when every section passed), 3 when there are no wheels to install on the GPU.
set -uo pipefail
cd "$(dirname "$0")/.."

CALL_S=${GPU_CHECK_CALL_S:-330}  # the device call's timeout_s
MARGIN_S=15                      # the report's last write and the tool's own stop, inside the call
WHEELS=${GPU_CHECK_WHEELS:-.whl/gpu_check}
SITE=${GPU_CHECK_SITE:-/tmp/site}
PYTHON=${PYTHON:-python3}
OUT_DIR=${OUT:-benchmarks/results}

dry_run=false
budget_given=false
for arg in "$@"; do
    case "$arg" in
        --dry-run) dry_run=true ;;
        --time-budget|--time-budget=*) budget_given=true ;;
    esac
done

command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

if compgen -G "$WHEELS/*.whl" > /dev/null; then
    # The set's fingerprint: a warm machine (a rerun within its 30 s) that holds it installs nothing.
    fingerprint=$(sha256sum "$WHEELS"/*.whl | sha256sum | cut -c1-16)
    if [ "$(cat "$SITE/.gpu_check_wheels" 2> /dev/null)" = "$fingerprint" ]; then
        echo "wheels $fingerprint already installed in $SITE (warm machine)"
    else
        rm -rf "$SITE"
        "$PYTHON" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --no-cache-dir \
            --target "$SITE" "$WHEELS"/*.whl || exit 1
        echo "$fingerprint" > "$SITE/.gpu_check_wheels"
        echo "installed $(ls "$WHEELS" | wc -l) wheels into $SITE in $SECONDS s"
    fi
    export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
elif ! $dry_run; then
    echo "no wheels in $WHEELS: run 'python3 scripts/gpu_check_wheels.py' here and carry $WHEELS" >&2
    exit 3
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the dry run uses this interpreter's packages
fi
export PYTHONUNBUFFERED=1

args=(--out "$OUT_DIR" "$@")
if ! $dry_run && ! $budget_given; then
    # Everything must end inside the call: the sections get what the install left (SECONDS: since start).
    args+=(--time-budget $((CALL_S - MARGIN_S - SECONDS)))
fi
mkdir -p "$OUT_DIR"
"$PYTHON" benchmarks/gpu_check.py "${args[@]}" 2>&1 | tee "$OUT_DIR/gpu_check.log"
exit "${PIPESTATUS[0]}"
