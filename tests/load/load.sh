#!/bin/sh
# load.sh — issue 4's load test (`make load`; run from the repository root).
#
# Starts finetunerd on a fresh data directory and a free loopback port with an access token,
# pushes Fashion-MNIST train and test, submits one long mlp run (no EarlyStopping) and, while it
# trains, for LOAD_SECONDS (default 20) at the same time:
#   - wrk -t1 -c32 on GET .../runs/train/status, -c16 on .../runs/train/metrics and -c8 on the
#     experiment's run list (each with tests/load/wrk_report.lua: latency and error counts);
#   - LOAD_STREAMS (default 8) curl clients on .../runs/train/logstream (SSE), each reconnecting
#     every 5 s; every connection must be a 200 with at least one `data:` event;
#   - one client submitting small runs (201 expected) and canceling each at once (200, CANCELED).
# Then it checks that the training run is still STARTED (or FINISHED), that the daemon answers,
# that every submitted run is CANCELED and that the daemon logged no error. It prints one table
# (per endpoint: requests/s, p50, p99, errors) and writes it as JSON to LOAD_JSON (default
# build/load.json). Exit status 0 only when there was no error at all; otherwise the daemon's log
# is kept as build/load-finetunerd.log.
#
# Environment: BIN (build), LOAD_SECONDS (20), LOAD_STREAMS (8), LOAD_JSON (build/load.json),
# WRK_TIMEOUT (2s: a slower answer counts as an error).
set -u

BIN=${BIN:-build}
SECS=${LOAD_SECONDS:-20}
STREAMS=${LOAD_STREAMS:-8}
JSON=${LOAD_JSON:-build/load.json}
WRK_TIMEOUT=${WRK_TIMEOUT:-2s}
FM=/usr/share/datasets/fashion-mnist
LUA=tests/load/wrk_report.lua
EXP=load

TMP=$(mktemp -d /tmp/ftload.XXXXXX) || exit 1
rm -f "$JSON"
DAEMON=
BG=

die() {
    echo "load: $*" >&2
    exit 1
}

# On every exit path: stop the clients, cancel the training run, stop the daemon, keep its log
# when something failed, remove the temporary directory.
cleanup() {
    rc=$?
    trap - EXIT INT TERM
    : >"$TMP/stop"
    for p in $BG; do
        kill "$p" 2>/dev/null
    done
    for p in $BG; do
        wait "$p" 2>/dev/null
    done
    if [ -n "$DAEMON" ] && kill -0 "$DAEMON" 2>/dev/null; then
        [ -n "${API:-}" ] && curl -s -o /dev/null --max-time 5 -X POST -H "$AUTH" \
            "$API/experiments/$EXP/runs/train/cancel"
        kill -TERM "$DAEMON" 2>/dev/null
        wait "$DAEMON" 2>/dev/null
    fi
    kept="$(dirname "$JSON")/load-finetunerd.log"
    rm -f "$kept"
    if [ "$rc" -ne 0 ] && [ -f "$TMP/finetunerd.log" ]; then
        mkdir -p "$(dirname "$JSON")"
        cp "$TMP/finetunerd.log" "$kept"
        echo "load: the daemon's log is in $kept" >&2
    fi
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

[ -x "$BIN/finetunerd" ] || die "$BIN/finetunerd is missing (make all)"
command -v wrk >/dev/null 2>&1 || die "wrk is missing (apt-get install wrk)"
command -v curl >/dev/null 2>&1 || die "curl is missing (apt-get install curl)"
[ -r "$FM/train-images-idx3-ubyte.gz" ] || die "$FM is missing (apt-get install dataset-fashion-mnist)"
[ -r "$LUA" ] || die "run me from the repository root ($LUA)"

# ---- the daemon: a token, then --port 0 (the kernel picks a free port; the log says which) ----

TOKEN=$("$BIN/finetunerd" --data-dir "$TMP/data" token create load 2>/dev/null) ||
    die "token create failed"
AUTH="Authorization: token $TOKEN"
"$BIN/finetunerd" --host 127.0.0.1 --port 0 --data-dir "$TMP/data" --log-level info \
    >"$TMP/finetunerd.log" 2>&1 &
DAEMON=$!
PORT=
i=0
while [ -z "$PORT" ]; do
    i=$((i + 1))
    if ! kill -0 "$DAEMON" 2>/dev/null || [ $i -gt 100 ]; then
        cat "$TMP/finetunerd.log" >&2
        die "finetunerd did not start"
    fi
    sleep 0.1
    PORT=$(sed -n 's|.*listening on http://127\.0\.0\.1:\([0-9]*\)/.*|\1|p' "$TMP/finetunerd.log")
done
API=http://127.0.0.1:$PORT/api/v1
[ "$(curl -s -o /dev/null -w '%{http_code}' "$API/health")" = 200 ] || die "no /health"
[ "$(curl -s -o /dev/null -w '%{http_code}' "$API/datasets")" = 401 ] ||
    die "GET /datasets without the token is not a 401"

# req METHOD PATH [curl args...]: prints the status code; the body goes to $TMP/body.
req() {
    m=$1
    p=$2
    shift 2
    curl -s --max-time 60 -o "$TMP/body" -w '%{http_code}' -X "$m" -H "$AUTH" "$@" "$API$p"
}

echo "== finetunerd on 127.0.0.1:$PORT; pushing Fashion-MNIST"
for set in train:train t10k:test; do
    f=${set%%:*}
    code=$(req PUT "/datasets/fmnist-${set#*:}" -F "images=@$FM/$f-images-idx3-ubyte.gz" \
        -F "labels=@$FM/$f-labels-idx1-ubyte.gz")
    [ "$code" = 201 ] || die "upload of fmnist-${set#*:}: $code $(cat "$TMP/body")"
done

# The run that trains during the whole load: many epochs, no EarlyStopping.
TRAIN='{"name": "train", "config": {
  "model": {"name": "mlp", "options": {"hidden_sizes": [256, 128], "l2": true}},
  "data": {"train_data": "fmnist-train", "eval_data": "fmnist-test"},
  "hyper_parameters": {"loss": "TripletMarginLoss", "loss_options": {"margin": 0.2},
                       "epochs": 500, "batch_size": 128},
  "callbacks": [
    {"name": "EvaluationCallback", "options": {"query_data": "fmnist-test", "limit": 20}},
    {"name": "BestModelCheckpoint", "options": {"monitor": "mlp_average_precision"}}]}}'
code=$(req POST "/experiments/$EXP/runs" -d "$TRAIN")
[ "$code" = 201 ] || die "training run submission: $code $(cat "$TMP/body")"

RUN=$API/experiments/$EXP/runs/train
# Wait until it trains (STARTED with a log line) so every stream has something to send.
i=0
until [ "$(req GET "/experiments/$EXP/runs/train/status")" = 200 ] &&
    grep -q '"STARTED"' "$TMP/body" &&
    [ "$(req GET "/experiments/$EXP/runs/train/logs")" = 200 ] && [ -s "$TMP/body" ]; do
    i=$((i + 1))
    [ $i -le 300 ] || die "the training run did not start: $(cat "$TMP/body")"
    sleep 0.1
done
sleep 2 # the worker loads its data and evaluates once before the first batch

# epochs: how many epochs the training run has logged metrics for.
epochs() {
    req GET "/experiments/$EXP/runs/train/metrics" >/dev/null
    grep -o '"epoch": *[0-9]*' "$TMP/body" | wc -l
}
EPOCHS_BEFORE=$(epochs)

# ---- the load ----

END=$(($(date +%s) + SECS))

# wrk_run NAME CONNECTIONS URL: wrk for SECS seconds; its output in $TMP/wrk.NAME.
wrk_run() {
    exec wrk -t1 -c"$2" -d"${SECS}s" --timeout "$WRK_TIMEOUT" --latency -s "$LUA" -H "$AUTH" "$3" \
        >"$TMP/wrk.$1" 2>&1
}

# fetch BODY FORMAT CURL-ARGS...: curl with the body to BODY; sets CODE (the HTTP status) and TIME
# (the -w FORMAT's second value). curl runs in the background and is waited for (not in a
# command substitution), so the TERM trap of the client loops below can end it at once.
fetch() {
    b=$1
    f=$2
    shift 2
    curl -s -o "$b" -w "$f\n" -H "$AUTH" "$@" >"$b.w" &
    CURL=$!
    wait "$CURL"
    CURL=
    CODE=000
    TIME=0
    read -r CODE TIME <"$b.w"
}
end_client() {
    if [ -n "${CURL:-}" ]; then
        kill "$CURL" 2>/dev/null
        wait "$CURL" 2>/dev/null
    fi
    exit 0
}

# stream_client N: logstream connections of up to 5 s until END; appends one line per
# connection to $TMP/sse.N: "<http code> <data events> <time to first byte, s>".
stream_client() {
    trap end_client TERM
    : >"$TMP/sse.$1"
    while [ ! -e "$TMP/stop" ]; do
        left=$((END - $(date +%s)))
        [ $left -ge 1 ] || break
        t=$((left < 5 ? left : 5))
        fetch "$TMP/ssebody.$1" '%{http_code} %{time_starttransfer}' -N --max-time "$t" \
            "$RUN/logstream"
        events=$(grep -c '^data: ' "$TMP/ssebody.$1")
        echo "$CODE $events $TIME" >>"$TMP/sse.$1"
        if [ "$CODE" != 200 ] || [ "$events" -lt 1 ]; then
            {
                echo "== stream $1: $CODE, $events events"
                head -c 2000 "$TMP/ssebody.$1"
            } >>"$TMP/failures"
        fi
    done
}

# churn: submit a small run (201, queued behind the training run) and cancel it (200, CANCELED)
# until END; one line per request in $TMP/submit and $TMP/cancel: "<ok 0|1> <seconds>".
churn() {
    trap end_client TERM
    : >"$TMP/submit"
    : >"$TMP/cancel"
    n=0
    while [ ! -e "$TMP/stop" ] && [ "$(date +%s)" -lt "$END" ]; do
        n=$((n + 1))
        body="{\"name\": \"q$n\", \"config\": {\"model\": {\"name\": \"mlp\"}, \"data\": {\"train_data\": \"fmnist-test\"}, \"hyper_parameters\": {\"epochs\": 1}}}"
        fetch "$TMP/churn.body" '%{http_code} %{time_total}' --max-time 10 -X POST -d "$body" \
            "$API/experiments/$EXP/runs"
        ok=0
        [ "$CODE" = 201 ] && grep -q '"status": *"CREATED"' "$TMP/churn.body" && ok=1
        echo "$ok $TIME" >>"$TMP/submit"
        [ $ok = 1 ] || {
            echo "== POST runs q$n: $CODE"
            head -c 2000 "$TMP/churn.body"
            echo
        } >>"$TMP/failures"
        fetch "$TMP/churn.body" '%{http_code} %{time_total}' --max-time 10 -X POST \
            "$API/experiments/$EXP/runs/q$n/cancel"
        ok=0
        [ "$CODE" = 200 ] && grep -q '"status": *"CANCELED"' "$TMP/churn.body" && ok=1
        echo "$ok $TIME" >>"$TMP/cancel"
        [ $ok = 1 ] || {
            echo "== POST runs/q$n/cancel: $CODE"
            head -c 2000 "$TMP/churn.body"
            echo
        } >>"$TMP/failures"
    done
}

echo "== load for ${SECS}s: wrk on status (32), metrics (16), run list (8); $STREAMS logstream clients; submit+cancel"
: >"$TMP/failures"
wrk_run status 32 "$RUN/status" &
BG="$BG $!"
wrk_run metrics 16 "$RUN/metrics" &
BG="$BG $!"
wrk_run list 8 "$API/experiments/$EXP/runs" &
BG="$BG $!"
s=1
while [ $s -le "$STREAMS" ]; do
    stream_client $s &
    BG="$BG $!"
    s=$((s + 1))
done
churn &
BG="$BG $!"
for p in $BG; do
    wait "$p"
done
BG=

# ---- checks after the load ----

ERRORS=0
fail() {
    echo "load: FAIL: $*" >&2
    ERRORS=$((ERRORS + 1))
}

ALIVE=0
kill -0 "$DAEMON" 2>/dev/null && [ "$(curl -s -o /dev/null --max-time 5 -w '%{http_code}' \
    "$API/health")" = 200 ] && ALIVE=1
[ $ALIVE = 1 ] || fail "the daemon is not alive"
EPOCHS_AFTER=$(epochs)
req GET "/experiments/$EXP/runs/train/status" >/dev/null
TRAIN_STATUS=$(sed -n 's/.*"status": *"\([A-Z]*\)".*/\1/p' "$TMP/body")
case $TRAIN_STATUS in
STARTED | FINISHED) ;;
*) fail "the training run is ${TRAIN_STATUS:-unknown}: $(cat "$TMP/body")" ;;
esac
# Every submitted run must be CANCELED (none started, none lost): count statuses in the list.
: >"$TMP/statuses"
off=0
while :; do
    [ "$(req GET "/experiments/$EXP/runs?limit=1000&offset=$off")" = 200 ] || {
        fail "GET runs?offset=$off: $(cat "$TMP/body")"
        break
    }
    tr ',{' '\n' <"$TMP/body" | sed -n 's/^ *"status": *"\([A-Z]*\)".*/\1/p' >"$TMP/page"
    [ -s "$TMP/page" ] || break
    cat "$TMP/page" >>"$TMP/statuses"
    off=$((off + 1000))
done
CANCELED=$(grep -c '^CANCELED$' "$TMP/statuses")
OTHER=$(grep -vc '^CANCELED$\|^STARTED$\|^FINISHED$' "$TMP/statuses")
LOGERR=$(grep -c ' error ' "$TMP/finetunerd.log")
[ "$LOGERR" -eq 0 ] || fail "the daemon logged $LOGERR error line(s): $(grep ' error ' \
    "$TMP/finetunerd.log" | head -5)"

# ---- the table ----

# pct P FILE: the P-th percentile of the numbers in FILE (nearest rank), or nan.
pct() {
    sort -g "$2" | awk -v p="$1" '{ v[NR] = $1 } END {
        if (NR == 0) { print "nan"; exit }
        i = int(p / 100 * NR + 0.999999); if (i < 1) i = 1; print v[i] }'
}

ROWS=
row() { # name conns requests rps p50_ms p99_ms errors
    printf '%-30s %6s %9s %10s %9s %9s %7s\n' "$@"
    ROWS="$ROWS${ROWS:+,
}    {\"endpoint\": \"$1\", \"clients\": $2, \"requests\": $3, \"requests_per_s\": $4, \"p50_ms\": $5, \"p99_ms\": $6, \"errors\": $7}"
    [ "$7" = 0 ] || fail "$1: $7 error(s)"
}

printf '%-30s %6s %9s %10s %9s %9s %7s\n' endpoint conns requests "req/s" "p50 ms" "p99 ms" errors
for w in status:32 metrics:16 list:8; do
    name=${w%%:*}
    line=$(grep '^WRK_REPORT' "$TMP/wrk.$name")
    if [ -z "$line" ]; then
        fail "wrk on $name printed no report: $(cat "$TMP/wrk.$name")"
        continue
    fi
    # shellcheck disable=SC2046 # the values of "key=value ..."
    set -- $(echo "$line" | tr ' ' '\n' | sed -n 's/^[a-z0-9_]*=//p')
    # requests duration_us p50 p99 max connect read write timeout status
    errs=$(($6 + $7 + $8 + $9 + ${10}))
    [ $errs = 0 ] || echo "   wrk $name: connect $6, read $7, write $8, timeout $9, status>=400 ${10}" >&2
    case $name in
    status) path="GET runs/train/status" ;;
    metrics) path="GET runs/train/metrics" ;;
    list) path="GET experiments/$EXP/runs" ;;
    esac
    row "$path" "${w#*:}" "$1" "$(awk -v n="$1" -v d="$2" 'BEGIN { printf "%.1f", n / (d / 1e6) }')" \
        "$(awk -v u="$3" 'BEGIN { printf "%.2f", u / 1000 }')" \
        "$(awk -v u="$4" 'BEGIN { printf "%.2f", u / 1000 }')" "$errs"
done

# curl's rows: requests/s over SECS; latency from the per-request times.
curl_row() { # name clients file-of-"ok seconds"
    n=$(wc -l <"$3")
    bad=$(awk '$1 != 1' "$3" | wc -l)
    awk '{ print $2 * 1000 }' "$3" >"$TMP/lat"
    row "$1" "$2" "$n" "$(awk -v n="$n" -v s="$SECS" 'BEGIN { printf "%.1f", n / s }')" \
        "$(printf '%.2f' "$(pct 50 "$TMP/lat")")" "$(printf '%.2f' "$(pct 99 "$TMP/lat")")" "$bad"
}
curl_row "POST runs (submit)" 1 "$TMP/submit"
curl_row "POST runs/{run}/cancel" 1 "$TMP/cancel"
SUBMITTED=$(awk '$1 == 1' "$TMP/submit" | wc -l)

# The log streams: one line per connection; latency = time to the first byte.
cat "$TMP"/sse.[0-9]* 2>/dev/null | awk '{ print ($1 == 200 && $2 >= 1) ? 1 : 0, $3 }' >"$TMP/sse"
STREAM_OK=0
s=1
while [ $s -le "$STREAMS" ]; do
    # ok: at least one connection, and every connection a 200 with at least one event
    if [ -s "$TMP/sse.$s" ] && awk '$1 != 200 || $2 < 1 { exit 1 }' "$TMP/sse.$s"; then
        STREAM_OK=$((STREAM_OK + 1))
    fi
    s=$((s + 1))
done
curl_row "GET runs/train/logstream (TTFB)" "$STREAMS" "$TMP/sse"
EVENTS=$(cat "$TMP"/sse.[0-9]* | awk '{ s += $2 } END { print s + 0 }')

echo
echo "submissions: $SUBMITTED done, $(awk '$1 != 1' "$TMP/submit" | wc -l) failed;" \
    "cancels: $(awk '$1 == 1' "$TMP/cancel" | wc -l) done, $(awk '$1 != 1' "$TMP/cancel" | wc -l) failed"
echo "runs in the experiment after the load: $CANCELED CANCELED, $OTHER neither CANCELED nor the training run"
echo "logstream clients ok: $STREAM_OK of $STREAMS ($EVENTS data events)"
echo "training run: $TRAIN_STATUS, epochs $EPOCHS_BEFORE -> $EPOCHS_AFTER during the load; daemon alive: $([ $ALIVE = 1 ] && echo yes || echo no);" \
    "daemon error log lines: $LOGERR"
[ "$STREAM_OK" -eq "$STREAMS" ] || fail "only $STREAM_OK of $STREAMS logstream clients got events on every connection"
[ "$CANCELED" -eq "$SUBMITTED" ] || fail "$SUBMITTED runs submitted but $CANCELED CANCELED"
[ "$OTHER" -eq 0 ] || fail "$OTHER submitted run(s) are neither CANCELED nor training"
if [ -s "$TMP/failures" ]; then
    echo "== failed requests (first 60 lines):" >&2
    head -60 "$TMP/failures" >&2
fi

mkdir -p "$(dirname "$JSON")"
cat >"$JSON" <<EOF
{
  "seconds": $SECS,
  "endpoints": [
$ROWS
  ],
  "submissions": {"done": $SUBMITTED, "failed": $(awk '$1 != 1' "$TMP/submit" | wc -l)},
  "cancels": {"done": $(awk '$1 == 1' "$TMP/cancel" | wc -l), "failed": $(awk '$1 != 1' "$TMP/cancel" | wc -l)},
  "logstream": {"clients": $STREAMS, "clients_ok": $STREAM_OK, "events": $EVENTS},
  "training_run_status": "$TRAIN_STATUS",
  "training_epochs": {"before": $EPOCHS_BEFORE, "after": $EPOCHS_AFTER},
  "daemon_alive": $([ $ALIVE = 1 ] && echo true || echo false),
  "daemon_error_log_lines": $LOGERR,
  "errors": $ERRORS
}
EOF
echo "(as JSON in $JSON)"
if [ $ERRORS -ne 0 ]; then
    echo "load: $ERRORS check(s) failed" >&2
    exit 1
fi
echo "load: OK, no errors"
