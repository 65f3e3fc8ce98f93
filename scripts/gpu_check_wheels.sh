#!/usr/bin/env bash
# Download the pinned wheels of benchmarks/gpu_check_wheels.txt for the GPU machine (Python 3.12,
# manylinux x86_64, no dependencies) into .whl/part1 and .whl/part2 (.whl/ is ignored by git), then
# print each part's size and check that each part plus the tracked files fits one 64 MiB device call.
#   bash scripts/gpu_check_wheels.sh            # PYTHON=... picks the pip to use (default python3)
set -euo pipefail
cd "$(dirname "$0")/.."

LIST=benchmarks/gpu_check_wheels.txt
PYTHON=${PYTHON:-python3}
LIMIT_MIB=64
PART_MIB=55
# pip matches each manylinux tag exactly: name the glibc versions these wheels are published for.
PLATFORMS=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
           manylinux2014_x86_64 manylinux1_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_35_x86_64; do
    PLATFORMS+=(--platform "$tag")
done

declare -A REQS=([part1]="" [part2]="")
part=""
while IFS= read -r line || [ -n "$line" ]; do
    case "$line" in
        "# part 1"*) part=part1; continue ;;
        "# part 2"*) part=part2; continue ;;
    esac
    req=$(printf '%s' "${line%%#*}" | tr -d '[:space:]')  # drop comments and blanks
    [ -z "$req" ] && continue
    if [ -z "$part" ]; then
        echo "$LIST: '$req' comes before '# part 1'" >&2
        exit 1
    fi
    REQS[$part]+="$req "
done < "$LIST"

tracked_bytes=$(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1)
status=0
for part in part1 part2; do
    rm -rf ".whl/$part"
    mkdir -p ".whl/$part"
    # shellcheck disable=SC2086  # one word per requirement
    "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --python-version 3.12 --implementation cp "${PLATFORMS[@]}" -d ".whl/$part" ${REQS[$part]}
    wanted=$(wc -w <<< "${REQS[$part]}")
    got=$(find ".whl/$part" -name '*.whl' | wc -l)
    if [ "$wanted" != "$got" ]; then
        echo "$part: $got wheels for $wanted requirements" >&2
        status=1
    fi
    bytes=$(du -cb ".whl/$part"/*.whl | tail -1 | cut -f1)
    echo "$part: $got wheels, $((bytes / 1024 / 1024)) MiB ($bytes bytes); with the tracked files" \
        "$(((bytes + tracked_bytes) / 1024 / 1024)) MiB of $LIMIT_MIB"
    ls -l ".whl/$part" | awk 'NR > 1 {printf "  %10d  %s\n", $5, $9}'
    if [ "$bytes" -gt $((PART_MIB * 1024 * 1024)) ] || [ $((bytes + tracked_bytes)) -gt $((LIMIT_MIB * 1024 * 1024)) ]; then
        echo "$part is too large for one device call" >&2
        status=1
    fi
done
echo "tracked files: $((tracked_bytes / 1024)) KiB"
exit $status
