#!/usr/bin/env bash
# The Snorky benchmark, one command (see bench/README.md):
#
#   bench/run.sh            full run: release build, Channels venv, every scenario against
#                           ceiling, snorky and channels; writes bench/RESULTS.md
#   bench/run.sh --smoke    every scenario at tiny sizes (debug build; Channels only if its venv
#                           already exists), under a minute; for the test suite; writes nothing
#   bench/run.sh --soak     the soak instead (release build): 5,000 connections churning for
#                           30 minutes; writes bench/SOAK.md and bench/soak.svg
#
# Any other option goes to `snorky-bench run` (e.g. --servers ceiling,snorky,
# --scenarios fanout,idle, --fanout-subs 2000; `snorky-bench run --help` lists them), or with
# --soak to `snorky-bench soak` (e.g. --connections 2000 --secs 600; `snorky-bench soak --help`).
# Environment: SNORKY_BENCH_RELEASE=1 makes --smoke use the release build too;
# SNORKY_BENCH_OUT=path writes the results file elsewhere.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

smoke=0
soak=0
if [ "${1:-}" = "--soak" ]; then
    soak=1
    shift
fi
for arg in "$@"; do
    if [ "$arg" = "--smoke" ]; then smoke=1; fi
done

# 10,000 idle connections need ~10,000 descriptors on each side (client and server processes).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

target_dir="${CARGO_TARGET_DIR:-$repo/target}"
if [ "$smoke" = 1 ] && [ "${SNORKY_BENCH_RELEASE:-0}" != 1 ]; then
    cargo build --quiet -p snorky-bench
    bin="$target_dir/debug/snorky-bench"
else
    cargo build --quiet --release -p snorky-bench
    bin="$target_dir/release/snorky-bench"
fi

# The Django Channels reference (and django-eventstream, the django scenario's other reference)
# lives in a bench-only venv, created (or refreshed when requirements.txt changes) by the full
# run. The smoke run uses it only if it is there.
venv="$repo/bench/.venv-channels"
requirements="$repo/bench/channels_ref/requirements.txt"
if [ "$smoke" = 0 ] && [ "$soak" = 0 ]; then
    if [ ! -x "$venv/bin/daphne" ] || ! cmp -s "$requirements" "$venv/.requirements.txt"; then
        echo "creating the Channels reference venv in bench/.venv-channels" >&2
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
        cp "$requirements" "$venv/.requirements.txt"
    fi
fi

out_args=()
if [ "$smoke" = 0 ]; then
    out_args=(--out "${SNORKY_BENCH_OUT:-$repo/bench/RESULTS.md}")
elif [ -n "${SNORKY_BENCH_OUT:-}" ]; then
    out_args=(--out "$SNORKY_BENCH_OUT")
fi

# The load generator runs in its own process group; it starts every server as its child (they
# also exit when its pipe to them closes). On exit or interruption the whole group is stopped.
bench_pid=""
cleanup() {
    if [ -n "$bench_pid" ] && kill -0 "$bench_pid" 2>/dev/null; then
        kill -TERM -- "-$bench_pid" 2>/dev/null || true
        sleep 1
        kill -KILL -- "-$bench_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

if [ "$soak" = 1 ]; then
    setsid "$bin" soak \
        --out "$repo/bench/SOAK.md" \
        --plot "$repo/bench/soak.svg" \
        --command-line "bench/run.sh --soak${*:+ $*}" \
        "$@" &
else
    setsid "$bin" run \
        --channels-venv "$venv" \
        --channels-dir "$repo/bench/channels_ref" \
        --command-line "bench/run.sh${*:+ $*}" \
        "${out_args[@]}" "$@" &
fi
bench_pid=$!
status=0
wait "$bench_pid" || status=$?
bench_pid=""
exit "$status"
