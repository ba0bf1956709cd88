#!/bin/sh
# Run every Criterion test binary given, from the repository root; print each binary's
# failures and synthesis, then one closing line "tests: N passed, M failed".
# Fails when any test failed or crashed, or when a sanitizer reported anything (Criterion
# 2.4.1 does not fail a test on a leak).
# Usage: sh tests/run.sh build/tests/common/test_x ...
status=0
passed=0
failed=0
log=$(mktemp)
for t in "$@"; do
    echo "== $t"
    if ! "$t" --jobs 1 >"$log" 2>&1; then
        status=1
    fi
    grep -v -E '^\[(----|RUN )\]' "$log" | tail -n 40
    syn=$(grep 'Synthesis:' "$log" | tail -n 1)
    if [ -z "$syn" ]; then
        echo "   no Criterion synthesis from $t (crashed?)"
        failed=$((failed + 1))
        status=1
    else
        p=$(echo "$syn" | sed -n 's/.*Passing: \([0-9]*\).*/\1/p')
        f=$(echo "$syn" | sed -n 's/.*Failing: \([0-9]*\).*/\1/p')
        c=$(echo "$syn" | sed -n 's/.*Crashing: \([0-9]*\).*/\1/p')
        passed=$((passed + ${p:-0}))
        failed=$((failed + ${f:-0} + ${c:-0}))
    fi
    if grep -q -E "LeakSanitizer|AddressSanitizer|runtime error:" "$log"; then
        echo "   sanitizer report in $t:"
        grep -E -A5 "LeakSanitizer|AddressSanitizer|runtime error:" "$log" | head -n 40
        status=1
    fi
done
rm -f "$log"
[ "$failed" -eq 0 ] || status=1
echo "tests: $passed passed, $failed failed"
exit $status
