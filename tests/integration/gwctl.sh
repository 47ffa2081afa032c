#!/bin/bash
# gwctl against a real mosquitto broker, with gatewayd's publications simulated by
# mosquitto_pub: what deploy, cancel and clear publish; watch's progress lines and exit status
# on success, failure, rejection and timeout; retained results of an earlier run; stale and
# hostile payloads; status. Env: GW_BUILD (build root).
set -u

GWCTL="${GW_BUILD:?GW_BUILD not set}/tools/gwctl"

for p in mosquitto mosquitto_pub mosquitto_sub python3; do
        if ! command -v "$p" >/dev/null; then
                echo "SKIP: $p is not installed"
                exit 77
        fi
done
if [ ! -x "$GWCTL" ]; then
        echo "SKIP: $GWCTL is not built"
        exit 77
fi

T=$(mktemp -d)
BROKER_PID=
cleanup() {
        # Only what this script started: the broker and the gwctl/mosquitto_sub jobs.
        for j in $(jobs -p); do kill "$j" 2>/dev/null; done
        [ -n "$BROKER_PID" ] && kill "$BROKER_PID" 2>/dev/null
        wait 2>/dev/null
        rm -rf "$T"
}
trap cleanup EXIT
cd "$T" || exit 1

failures=0
pass() { echo "PASS: $*"; }
fail() {
        echo "FAIL: $*"
        failures=$((failures + 1))
}
check() { # description, command...
        local what=$1
        shift
        if "$@"; then pass "$what"; else fail "$what"; fi
}

# A free port: bind to 0 and let the kernel choose.
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >broker.conf <<EOF
listener $PORT 127.0.0.1
allow_anonymous true
user root
persistence false
EOF
mosquitto -c broker.conf >broker.log 2>&1 &
BROKER_PID=$!
up=0
for _ in $(seq 50); do
        if mosquitto_pub -p "$PORT" -t gwctl-test/ping -m x 2>/dev/null; then
                up=1
                break
        fi
        sleep 0.1
done
if [ $up != 1 ]; then
        echo "FAIL: the broker did not start"
        cat broker.log
        exit 1
fi

B=(--broker "127.0.0.1:$PORT")
pub() { mosquitto_pub -p "$PORT" -q 1 "$@"; }
# The retained message on a topic, or nothing after 1 s.
retained() { mosquitto_sub -p "$PORT" -t "$1" -C 1 -W 1 --retained-only 2>/dev/null; }
# Waits (at most 5 s) until FILE contains PATTERN.
wait_for() {
        for _ in $(seq 50); do
                grep -q -- "$2" "$1" 2>/dev/null && return 0
                sleep 0.1
        done
        echo "  (timed out waiting for '$2' in $1)"
        return 1
}
# Waits (at most 15 s) for the background job PID; its exit status in $RC.
finish() {
        local pid=$1
        for _ in $(seq 150); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
                kill "$pid"
                echo "  (gwctl did not exit; killed)"
        fi
        wait "$pid"
        RC=$?
}
status_msg() { # deployment state progress
        printf '{"state":"%s","deployment":"%s","image":"fw","version":"1.4.2","progress":%d,"bytes":%d,"total":131072,"rate_bps":11264,"ts":"2026-11-22T00:00:00Z"}' \
                "$2" "$1" "$3" $(($3 * 1310))
}

# ---- Usage errors: exit 2 ------------------------------------------------------------------
usage_case() { # description, args...
        local what=$1
        shift
        "$GWCTL" "$@" >/dev/null 2>&1
        local rc=$?
        if [ $rc = 2 ]; then pass "usage: $what"; else fail "usage: $what (exit $rc, want 2)"; fi
}
usage_case "no command"
usage_case "unknown command" frobnicate --gateway g
usage_case "deploy without --id" deploy --gateway g --manifest-url http://x/m
usage_case "deploy with both manifest options" deploy --gateway g --id a --manifest-url http://x/m --manifest /dev/null
usage_case "deploy with a bad id" deploy --gateway g --id 'a/b' --manifest-url http://x/m
usage_case "deploy with a bad URL" deploy --gateway g --id a --manifest-url 'ftp://x/m'
usage_case "no gateway" watch --id a
usage_case "gateway and prefix" watch --gateway g --prefix p --id a
usage_case "prefix with a wildcard" status --prefix 'gatewayd/+'
usage_case "option of another command" status --gateway g --id a
usage_case "bad broker port" status --gateway g --broker 127.0.0.1:99999
usage_case "bad timeout" watch --gateway g --timeout -1
usage_case "tls cert without key" status --gateway g --tls-cert c.pem
usage_case "cancel without --id" cancel --gateway g
for cmd in "" deploy watch cancel clear status; do
        # shellcheck disable=SC2086
        if "$GWCTL" $cmd --help | grep -q "^Usage: gwctl"; then
                pass "help: gwctl $cmd --help"
        else
                fail "help: gwctl $cmd --help"
        fi
done

# ---- deploy, cancel, clear: what reaches the broker ----------------------------------------
"$GWCTL" deploy "${B[@]}" --gateway gw-a --id rel-1 --manifest-url https://updates.example.com/m.yaml >out 2>err
rc=$?
check "deploy --manifest-url exits 0" [ $rc = 0 ]
check "deploy --manifest-url publishes the retained desired state" \
        [ "$(retained gatewayd/gw-a/deploy)" = '{"id":"rel-1","manifest_url":"https://updates.example.com/m.yaml"}' ]

head -c 3001 /dev/urandom >manifest.bin
"$GWCTL" deploy "${B[@]}" --prefix site/gw-b --id rel-2 --manifest manifest.bin >out 2>err
rc=$?
retained site/gw-b/deploy >deploy.json
check "deploy --manifest exits 0" [ $rc = 0 ]
check "deploy --manifest sends the file in base64" python3 -c '
import base64, json, sys
m = json.load(open("deploy.json"))
assert list(m) == ["id", "manifest"] and m["id"] == "rel-2", m
assert base64.b64decode(m["manifest"], validate=True) == open("manifest.bin", "rb").read()
'
"$GWCTL" deploy "${B[@]}" --gateway gw-c --id big --manifest manifest.bin --max-payload 1024 >out 2>err
rc=$?
check "deploy refuses a manifest over --max-payload (exit 1)" [ $rc = 1 ]
check "deploy over --max-payload says why" grep -q "max-payload" err
check "deploy over --max-payload publishes nothing" [ -z "$(retained gatewayd/gw-c/deploy)" ]

mosquitto_sub -p "$PORT" -t gatewayd/gw-a/cancel -C 1 -W 5 >cancel.out 2>/dev/null &
sub=$!
sleep 0.3 # mosquitto_sub has no ready signal; a missed message fails the check below
"$GWCTL" cancel "${B[@]}" --gateway gw-a --id rel-1 >out 2>err
rc=$?
finish $sub
check "cancel exits 0" [ $rc = 0 ]
check "cancel publishes {\"id\"}" [ "$(cat cancel.out)" = '{"id":"rel-1"}' ]

"$GWCTL" clear "${B[@]}" --gateway gw-a >out 2>err
rc=$?
check "clear exits 0" [ $rc = 0 ]
check "clear removes the retained desired state" [ -z "$(retained gatewayd/gw-a/deploy)" ]

# ---- watch: progress lines and the outcome ---------------------------------------------------
P=gatewayd/gw-w
# Stale: a status of another deployment, and an idle one.
pub -r -t $P/nodes/old-node/status -m "$(status_msg other-rel flashing 30)"
pub -r -t $P/nodes/idle-node/status -m '{"state":"idle","version":"1.4.1","ts":"2026-11-22T00:00:00Z"}'
"$GWCTL" watch "${B[@]}" --gateway gw-w --id w1 --timeout 20 >out 2>err &
pid=$!
wait_for out "watching deployment w1"
pub -t $P/deployments/w1 -m '{"id":"w1","state":"accepted","manifest_sha256":"00","nodes":["node-1","node-2"],"ts":"2026-11-22T00:00:00Z"}'
for p in 0 5 10 15 20 25 30 35 40 45 50 55 60 65 70 75 80 85 90 95 100; do
        pub -r -t $P/nodes/node-1/status -m "$(status_msg w1 flashing $p)"
done
pub -r -t $P/nodes/node-1/status -m '{"state":"success","deployment":"w1","image":"fw","version":"1.4.2","ts":"2026-11-22T00:00:00Z"}'
pub -t $P/deployments/w1 -m '{"id":"w1","state":"running","nodes":{"node-1":{"state":"success","progress":100},"node-2":{"state":"flashing","progress":42}},"ts":"2026-11-22T00:00:00Z"}'
pub -r -t $P/deployments/w1 -m '{"id":"w1","state":"success","nodes":{"node-1":{"state":"success","image":"fw","version":"1.4.2"},"node-2":{"state":"success","image":"fw","version":"1.4.2"}},"ts":"2026-11-22T00:00:00Z"}'
finish $pid
check "watch: success exits 0" [ $RC = 0 ]
check "watch: one line per 10 % of progress" \
        [ "$(grep -c '^node-1: flashing' out)" = 11 ]
check "watch: 10 %, 50 % and 100 % lines" grep -q "^node-1: flashing 50% (64.0 KiB of 128.0 KiB, 11.0 KiB/s)" out
check "watch: no line for 5 % steps" bash -c "! grep -q '^node-1: flashing 55%' out"
check "watch: a line per state change" grep -q "^node-1: success$" out
check "watch: progress from the running report" grep -q "^node-2: flashing 42%" out
check "watch: accepted is shown" grep -q "accepted for 2 node(s)" out
check "watch: the final result is shown" grep -q "^deployment w1: success" out
check "watch: stale statuses of other deployments are ignored" bash -c "! grep -q 'old-node\|idle-node' out"
check "watch: no escape sequences through a pipe" bash -c "! grep -q \$'\\033' out"

# A node's install tried again (node retries): the status says attempt 2, progress starts over,
# and watch prints a line for it.
"$GWCTL" watch "${B[@]}" --gateway gw-w --id w9 --timeout 20 >out9 2>err9 &
pid=$!
wait_for out9 "watching deployment w9"
pub -r -t $P/nodes/node-1/status -m "$(status_msg w9 flashing 60)"
pub -r -t $P/nodes/node-1/status -m '{"state":"flashing","deployment":"w9","image":"fw","version":"1.4.2","progress":0,"bytes":0,"total":131072,"attempt":2,"ts":"2026-11-22T00:00:00Z"}'
pub -r -t $P/deployments/w9 -m '{"id":"w9","state":"success","nodes":{"node-1":{"state":"success","image":"fw","version":"1.4.2"}},"ts":"2026-11-22T00:00:00Z"}'
finish $pid
check "watch: a second attempt is shown, its progress from 0" \
        grep -q "^node-1: flashing (attempt 2) 0% (0 B of 128.0 KiB)" out9

# A watch that starts after the end: the retained final is the answer.
"$GWCTL" watch "${B[@]}" --gateway gw-w --id w1 --timeout 5 >out 2>err
check "watch: a retained final result is accepted (exit 0)" [ $? = 0 ]

# Failure, with a hostile error message.
"$GWCTL" watch "${B[@]}" --gateway gw-w --id w2 --timeout 20 >out 2>err &
pid=$!
wait_for out "watching deployment w2"
pub -r -t $P/nodes/node-2/status -m '{"state":"failed","deployment":"w2","image":"fw","version":"1.4.2","error":{"code":"flash-failed","message":"node-2: no ACK \u001b[2J for block 7"},"ts":"2026-11-22T00:00:00Z"}'
pub -r -t $P/deployments/w2 -m '{"id":"w2","state":"failed","error":{"code":"verify-failed","message":"node-2 failed; atomic deployment rolled back"},"nodes":{"node-1":{"state":"reverted","image":"fw","version":"1.4.1"},"node-2":{"state":"failed","image":"fw","version":"1.4.1","error":{"code":"flash-failed","message":"no ACK"}}},"ts":"2026-11-22T00:00:00Z"}'
finish $pid
check "watch: failed exits 1" [ $RC = 1 ]
check "watch: failed prints the error code and message" \
        grep -q "^error: verify-failed: node-2 failed; atomic deployment rolled back" err
check "watch: node errors are printed" grep -q "node-2: flash-failed" err
check "watch: control characters from the gateway never reach the terminal" \
        bash -c "! grep -q \$'\\033' out err && grep -q 'no ACK ?\\[2J for block 7' out"

# Rejected.
"$GWCTL" watch "${B[@]}" --gateway gw-w --id w3 --timeout 20 >out 2>err &
pid=$!
wait_for out "watching deployment w3"
pub -r -t $P/deployments/w3 -m '{"id":"w3","state":"rejected","error":{"code":"threshold-not-met","message":"1 valid signature, threshold is 2"},"ts":"2026-11-22T00:00:00Z"}'
finish $pid
check "watch: rejected exits 1" [ $RC = 1 ]
check "watch: rejected prints the error code" grep -q "^error: threshold-not-met: 1 valid signature" err

# Junk: not JSON, wrong types, a report for another id in the payload; then a timeout.
"$GWCTL" watch "${B[@]}" --gateway gw-w --id w4 --timeout 1.5 >out 2>err &
pid=$!
wait_for out "watching deployment w4"
pub -t $P/deployments/w4 -m 'not json'
pub -t $P/deployments/w4 -m '{"id":"w4","state":42}'
pub -t $P/deployments/w4 -m '{"id":"w5","state":"success"}'
pub -t $P/deployments/w4 -m '[1,2,3]'
pub -t $P/nodes/node-1/status -m '{"state":"flashing","deployment":"w4","progress":"lots","bytes":-5}'
t0=$(date +%s%N)
finish $pid
el=$((($(date +%s%N) - t0) / 1000000))
check "watch: junk is not an answer; --timeout exits 1" [ $RC = 1 ]
check "watch: timeout says so" grep -q "timed out" err
check "watch: --timeout is kept (${el} ms after the junk)" [ $el -lt 3000 ]

# --json: one object per line, the last one the result.
"$GWCTL" watch "${B[@]}" --gateway gw-w --id w1 --json --timeout 5 >out 2>err
rc=$?
check "watch --json: exit 0 and a result line" python3 -c '
import json
lines = [json.loads(l) for l in open("out")]
assert lines[-1]["event"] == "result" and lines[-1]["state"] == "success", lines[-1]
' 
check "watch --json exits 0" [ $rc = 0 ]

# ---- deploy --watch: the retained result of an earlier run is not the answer -------------
P=gatewayd/gw-d
pub -r -t $P/deployments/again -m '{"id":"again","state":"failed","error":{"code":"flash-failed","message":"last week"},"nodes":{},"ts":"2026-11-22T00:00:00Z"}'
pub -r -t $P/nodes/node-1/status -m "$(status_msg again failed 10)"
mosquitto_sub -p "$PORT" -t $P/deploy -C 1 -W 10 >deploy.seen 2>/dev/null &
sub=$!
"$GWCTL" deploy "${B[@]}" --gateway gw-d --id again --manifest-url http://x/m.yaml --watch --timeout 20 >out 2>err &
pid=$!
finish $sub
check "deploy --watch publishes the desired state" grep -q '"id":"again"' deploy.seen
sleep 0.3
check "deploy --watch does not stop at an earlier run's result" kill -0 $pid
pub -t $P/deployments/again -m '{"id":"again","state":"accepted","manifest_sha256":"00","nodes":["node-1"],"ts":"2026-11-22T00:00:00Z"}'
for p in 0 50 100; do pub -r -t $P/nodes/node-1/status -m "$(status_msg again flashing $p)"; done
pub -r -t $P/deployments/again -m '{"id":"again","state":"success","nodes":{"node-1":{"state":"success","image":"fw","version":"1.4.2"}},"ts":"2026-11-22T00:00:00Z"}'
finish $pid
check "deploy --watch: success after the publish exits 0" [ $RC = 0 ]
check "deploy --watch: shows live progress" grep -q "^node-1: flashing 50%" out
check "deploy --watch: the stale status was not shown" bash -c "! grep -q '^node-1: failed' out"

# The gateway ignores an id it already did: the timeout explains.
"$GWCTL" deploy "${B[@]}" --gateway gw-d --id again --manifest-url http://x/m.yaml --watch --timeout 1 >out 2>err
rc=$?
check "deploy --watch: no answer => timeout exit 1" [ $rc = 1 ]
check "deploy --watch: the timeout mentions the earlier run" grep -q "earlier run of again ended 'success'" err

# The lead's demo path: deploy --watch with a failing deployment.
"$GWCTL" deploy "${B[@]}" --gateway gw-d --id fresh --manifest-url http://x/m.yaml --watch --timeout 20 >out 2>err &
pid=$!
wait_for out "Published deployment fresh"
pub -r -t $P/deployments/fresh -m '{"id":"fresh","state":"rejected","error":{"code":"expired","message":"expired on 2020-01-01"},"ts":"2026-11-22T00:00:00Z"}'
finish $pid
check "deploy --watch: rejected exits 1" [ $RC = 1 ]
check "deploy --watch: rejected prints the code" grep -q "^error: expired: expired on 2020-01-01" err

# ---- watch without --id: the retained desired deployment --------------------------------------
P=gatewayd/gw-n
pub -r -t $P/deploy -m '{"id":"n1","manifest_url":"http://x/m.yaml"}'
pub -r -t $P/deployments/n1 -m '{"id":"n1","state":"success","nodes":{},"ts":"2026-11-22T00:00:00Z"}'
"$GWCTL" watch "${B[@]}" --gateway gw-n --timeout 5 >out 2>err
rc=$?
check "watch without --id follows the desired deployment (exit 0)" [ $rc = 0 ]
check "watch without --id shows its result" grep -q "deployment n1: success" out
"$GWCTL" watch "${B[@]}" --gateway gw-none --timeout 5 >out 2>err
rc=$?
check "watch without --id and no desired deployment exits 1" [ $rc = 1 ]
check "watch without --id and no desired deployment says so" grep -q "pass --id" err

# ---- status ------------------------------------------------------------------------------
P=gatewayd/gw-s
pub -r -t $P/state -m '{"state":"online","version":"0.1.0","ts":"2026-11-22T00:00:00Z"}'
pub -r -t $P/inventory -m '{"nodes":[{"name":"node-1","transport":"uart","protocol":"ymodem","class":"demo-mcu","hardware":{},"version":"1.4.1"}],"ts":"2026-11-22T00:00:00Z"}'
pub -r -t $P/nodes/node-1/status -m '{"state":"idle","version":"1.4.1","ts":"2026-11-22T00:00:00Z"}'
t0=$(date +%s%N)
"$GWCTL" status "${B[@]}" --gateway gw-s >out 2>err
rc=$?
el=$((($(date +%s%N) - t0) / 1000000))
check "status exits 0" [ $rc = 0 ]
check "status shows the gateway state" grep -q "online, gatewayd 0.1.0" out
check "status lists the node" grep -q "^node-1 .*uart .*ymodem .*demo-mcu .*1.4.1 .*idle" out
check "status returns soon after the retained messages (${el} ms)" [ $el -lt 3000 ]
"$GWCTL" status "${B[@]}" --gateway gw-s --json >out 2>err
check "status --json" python3 -c '
import json
s = json.load(open("out"))
assert s["state"]["state"] == "online" and s["nodes"]["node-1"]["state"] == "idle", s
'
"$GWCTL" status "${B[@]}" --gateway gw-empty >out 2>err
check "status of an unknown gateway exits 1" [ $? = 1 ]

# ---- broker problems -----------------------------------------------------------------------
"$GWCTL" status --broker "127.0.0.1:1" --gateway gw-s --timeout 3 >out 2>err
check "no broker: exit 1" [ $? = 1 ]

# ---- mutual TLS -----------------------------------------------------------------------------
if command -v openssl >/dev/null; then
        TLS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
        (
                openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
                        -subj /CN=gwctl-test-ca -keyout ca.key -out ca.pem
                openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
                        -subj /CN=127.0.0.1 -keyout server.key -out server.csr
                printf 'subjectAltName=IP:127.0.0.1\n' >san.ext
                openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
                        -days 1 -extfile san.ext -out server.pem
                openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
                        -subj /CN=operator -keyout client.key -out client.csr
                openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
                        -days 1 -out client.pem
        ) >openssl.log 2>&1
        cat >tls.conf <<EOF
listener $TLS_PORT 127.0.0.1
allow_anonymous true
user root
persistence false
cafile $T/ca.pem
certfile $T/server.pem
keyfile $T/server.key
require_certificate true
EOF
        mosquitto -c tls.conf >tls-broker.log 2>&1 &
        tls_up=0
        for _ in $(seq 50); do
                if mosquitto_pub -h 127.0.0.1 -p "$TLS_PORT" --cafile ca.pem --cert client.pem --key client.key \
                        -t gwctl-test/ping -m x 2>/dev/null; then
                        tls_up=1
                        break
                fi
                sleep 0.1
        done
        if [ $tls_up = 1 ]; then
                "$GWCTL" deploy --broker "127.0.0.1:$TLS_PORT" --tls-ca ca.pem --tls-cert client.pem \
                        --tls-key client.key --gateway gw-t --id tls-1 \
                        --manifest-url http://x/m.yaml --timeout 5 >out 2>err
                check "TLS: deploy over mutual TLS exits 0" [ $? = 0 ]
                "$GWCTL" deploy --broker "127.0.0.1:$TLS_PORT" --tls-ca ca.pem --gateway gw-t \
                        --id tls-2 --manifest-url http://x/m.yaml --timeout 5 >out 2>err
                check "TLS: without a client certificate exits 1" [ $? = 1 ]
        else
                echo "SKIP: TLS cases: the TLS broker did not start"
        fi
else
        echo "SKIP: TLS cases: the openssl command is not installed"
fi

echo "$failures failure(s)"
[ $failures = 0 ]
