#!/bin/sh
# Run each libFuzzer target build-fuzz/fuzz_<name> for SECONDS on its seed corpus
# tests/fuzz/corpus/<name>/, which stays untouched: new inputs go to a temporary directory
# given first. A crash, leak, sanitizer report, timeout (-timeout) or out-of-memory makes the
# target fail; its input is saved as build-fuzz/crashes/<name>-<kind>-<sha1> and the line to
# reproduce it is printed. Closes with "fuzz: N passed, M failed" (exit 1 when any failed).
# Usage: sh tests/fuzz/run.sh SECONDS name...   (FUZZ_BUILD overrides build-fuzz)
set -u
seconds=$1
shift
build=${FUZZ_BUILD:-build-fuzz}
mkdir -p "$build/crashes"
passed=0
failed=0
for name in "$@"; do
    bin="$build/fuzz_$name"
    seeds="tests/fuzz/corpus/$name"
    new=$(mktemp -d)
    log=$(mktemp)
    dict=""
    [ -f "tests/fuzz/$name.dict" ] && dict="-dict=tests/fuzz/$name.dict"
    echo "== fuzz_$name (${seconds}s, seeds $seeds)"
    # shellcheck disable=SC2086
    "$bin" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 -max_len=8192 \
        -print_final_stats=1 -artifact_prefix="$build/crashes/$name-" $dict \
        "$new" "$seeds" >"$log" 2>&1
    rc=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    cov=$(grep -a -E '^#[0-9]+' "$log" | tail -n 1 | sed -n 's/.*\(cov: [0-9]*\).*/\1/p')
    if [ "$rc" -eq 0 ]; then
        passed=$((passed + 1))
        echo "   ok: ${runs:-?} runs, ${rate:-?} exec/s, ${cov:-cov: ?}, $(ls "$new" | wc -l) new inputs"
    else
        failed=$((failed + 1))
        echo "   FAILED (exit $rc):"
        if grep -a -q -E 'ERROR: |runtime error:|fuzz invariant|==[0-9]+==' "$log"; then
            grep -a -E -A30 'ERROR: |runtime error:|fuzz invariant|==[0-9]+==' "$log" | head -n 60
        else
            tail -n 30 "$log"
        fi
        art=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
        [ -n "$art" ] && echo "   reproduce: $bin $art"
    fi
    rm -rf "$new" "$log"
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
