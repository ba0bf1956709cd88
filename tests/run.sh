#!/bin/sh
# Run every test binary given; print one summary line; fail if any failed or if a
# sanitizer reported anything (Criterion 2.4.1 does not fail a test on a leak).
# Usage: sh tests/run.sh build/tests/common/test_x ...
status=0
passed=0
failed=0
log=$(mktemp)
for t in "$@"; do
    echo "== $t"
    if "$t" --jobs 1 >"$log" 2>&1; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        status=1
    fi
    grep -v '^\[----\]' "$log" | tail -n 30
    if grep -q -E "LeakSanitizer|AddressSanitizer|runtime error:" "$log"; then
        echo "   sanitizer report in $t"
        status=1
    fi
done
rm -f "$log"
echo "test binaries: $passed passed, $failed failed"
exit $status
