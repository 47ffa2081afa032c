#!/usr/bin/env bash
# Bad input on <prefix>/deploy (and <prefix>/cancel) never stops gatewayd, and every refused
# request ends as a clear rejection upstream: on <prefix>/deployments/<id> (retained) when its id
# could be read, on <prefix>/deployments/invalid when not. A clearing (empty) retained message is
# no error. A good deployment works afterwards.
set -u

: "${GW_SRC:?GW_SRC must name the source directory}"
E2E_NAME=bad-input
# shellcheck source=lib.sh
. "$GW_SRC/tests/integration/lib.sh"

# ---- The parts --------------------------------------------------------------------------------
gw="gw-e2e-bad"
prefix=gatewayd/$gw
baud=921600
max_payload=4096
mkdir -p "$work/www" "$work/state"
gw_start_broker "$work"
gw_start_http "$work/www"
gw_start_sim node-1 "$work" "$baud"
"$GWM" keygen --type ed25519 --out "$work/release" >/dev/null ||
        { echo "FAIL: gwmanifest keygen"; exit 1; }

cat >"$work/gatewayd.yaml" <<CONF
gateway:
  id: $gw
state-dir: state
log-level: info
mqtt:
  host: 127.0.0.1
  port: $GW_BROKER_PORT
  max-payload: $max_payload
trust:
  public-keys: [release.pub]
nodes:
  - name: node-1
    transport: { type: uart, port: $work/node-1.tty, baud: $baud }
    protocol: { type: ymodem }
CONF
"$GWD" --check-config "$work/gatewayd.yaml" >/dev/null 2>"$work/check-config.log" ||
        { echo "FAIL: the test configuration is refused:"; cat "$work/check-config.log"; exit 1; }

# A node's options are checked before anything opens: a misspelt key or a bad value is
# refused by --check-config and by the daemon itself, each at its line and column, naming the
# plugin and the option, with the keys the plugin does read.
sed -e "s/baud: $baud/baudrate: $baud/" -e 's/{ type: ymodem }/{ type: ymodem, ack-timeout-ms: 0 }/' \
        "$work/gatewayd.yaml" >"$work/bad-options.yaml"
"$GWD" --check-config "$work/bad-options.yaml" >/dev/null 2>"$work/bad-options.log"
rc=$?
check "bad node options: --check-config exits 1 (got $rc)" test "$rc" -eq 1
check "bad node options: the misspelt transport key is named, with the keys uart reads" \
        grep -q "bad-options.yaml:1[0-9]:[0-9]*: node node-1: transport uart: unknown option 'baudrate' (it reads port, baud," \
        "$work/bad-options.log"
sed "s/baudrate: $baud/baud: $baud/" "$work/bad-options.yaml" >"$work/bad-value.yaml"
"$GWD" --check-config "$work/bad-value.yaml" >/dev/null 2>"$work/bad-value.log"
rc=$?
check "bad protocol value: --check-config exits 1 (got $rc)" test "$rc" -eq 1
check "bad protocol value: the option and its range are named" \
        grep -q "node node-1: protocol ymodem: option ack-timeout-ms: expected 1 to 3600000" \
        "$work/bad-value.log"
timeout 10 "$GWD" -c "$work/bad-value.yaml" >/dev/null 2>"$work/bad-value-run.log"
rc=$?
check "bad protocol value: gatewayd refuses to start (exit $rc)" test "$rc" -eq 1
check "bad protocol value: ... and says why" grep -q "option ack-timeout-ms" \
        "$work/bad-value-run.log"

watch_prefix

"$GWD" -c "$work/gatewayd.yaml" 2>"$work/gatewayd.log" &
gwpid=$!
GW_PIDS+=("$gwpid")

retained() {
        mosquitto_sub -h 127.0.0.1 -p "$GW_BROKER_PORT" -C 1 -W 3 -F '%r %p' -t "$1" 2>/dev/null
}
online() { retained "$prefix/state" | grep -q '"online"'; }
gw_wait_for 10 online || { echo "FAIL: gatewayd did not come online"; exit 1; }

pub() { mosquitto_pub -h 127.0.0.1 -p "$GW_BROKER_PORT" -q 1 "$@"; }
url="http://127.0.0.1:$GW_HTTP_PORT/good.yaml"
# all_reports: how many messages arrived on any deployments/ topic so far.
all_reports() { grep -c "^[01] $prefix/deployments/" "$work/sub.log"; }
more_than() { [ "$(q n "$work/sub.log" "$1")" -gt "$2" ]; }

# rejected NAME WHERE CODE PAYLOAD: publishes PAYLOAD on deploy (retained, as a server does) and
# expects a new rejection with CODE on deployments/WHERE (WHERE = the id, or "invalid").
rejected() {
        local name=$1 where=$2 code=$3 topic=$prefix/deployments/$2 n0 last r
        n0=$(q n "$work/sub.log" "$topic")
        printf '%s' "$4" >"$work/payload"
        pub -r -t "$prefix/deploy" -f "$work/payload"
        if ! gw_wait_for 10 more_than "$topic" "$n0"; then
                fail "$name: no report on deployments/$where"
                check "$name: gatewayd is still running" kill -0 "$gwpid"
                return
        fi
        last=$(q last "$work/sub.log" "$topic")
        check "$name: deployments/$where says rejected" test "$(q get "$last" state)" = rejected
        check "$name: the error code is $code (got '$(q get "$last" error.code)')" \
                test "$(q get "$last" error.code)" = "$code"
        check "$name: the rejection has a message" test -n "$(q get "$last" error.message)"
        if [ "$where" != invalid ]; then
                r=$(retained "$topic")
                check "$name: the rejection of $where is retained" \
                        test "${r%% *}" = 1 -a "$(q get "${r#* }" state 2>/dev/null)" = rejected
        fi
        check "$name: gatewayd is still running" kill -0 "$gwpid"
}

long_id=$(printf 'x%.0s' $(seq 1 129))
rejected "malformed JSON" invalid payload-invalid '{"id":"b-json","manifest_url":'
rejected "JSON that is not an object" invalid payload-invalid '["b-array"]'
rejected "duplicate member names" invalid payload-invalid \
        "{\"id\":\"b-dup\",\"id\":\"b-dup2\",\"manifest_url\":\"$url\"}"
rejected "nested deeper than 4 levels" invalid payload-invalid \
        "{\"id\":\"b-deep\",\"manifest_url\":\"$url\",\"x\":{\"a\":{\"b\":{\"c\":1}}}}"
rejected "id with a slash" invalid payload-invalid "{\"id\":\"b/slash\",\"manifest_url\":\"$url\"}"
rejected "id of 129 characters" invalid payload-invalid "{\"id\":\"$long_id\",\"manifest_url\":\"$url\"}"
rejected "id that is a number" invalid payload-invalid "{\"id\":42,\"manifest_url\":\"$url\"}"
rejected "missing id" invalid payload-invalid "{\"manifest_url\":\"$url\"}"
rejected "both manifest and manifest_url" b-both payload-invalid \
        "{\"id\":\"b-both\",\"manifest_url\":\"$url\",\"manifest\":\"$(printf 'kind: x\n' | base64 -w0)\"}"
rejected "neither manifest nor manifest_url" b-neither payload-invalid '{"id":"b-neither"}'
rejected "relative manifest_url" b-relurl payload-invalid '{"id":"b-relurl","manifest_url":"good.yaml"}'
rejected "manifest_url null" b-null payload-invalid '{"id":"b-null","manifest_url":null}'
rejected "manifest that is not base64" b-b64 payload-invalid '{"id":"b-b64","manifest":"not base64!"}'

# Over mqtt.max-payload but under the maximum packet size gatewayd gives the broker (max-payload
# plus its allowance for the packet header): the broker delivers it, gatewayd refuses it unread.
pad=$(head -c 4500 /dev/zero | tr '\0' 'a')
rejected "payload of 4.5 KB over max-payload 4096" invalid payload-too-large \
        "{\"id\":\"b-big\",\"manifest_url\":\"$url\",\"pad\":\"$pad\"}"

# 10 KB: over the maximum packet size gatewayd announced, so the broker must not deliver it at
# all (mqtt.md: "a conforming broker does not even deliver it"). Whatever the broker does,
# gatewayd must neither crash nor run it, and must stay connected.
n0=$(all_reports)
pad=$(head -c 10240 /dev/zero | tr '\0' 'a')
printf '{"id":"b-huge","manifest_url":"%s","pad":"%s"}' "$url" "$pad" >"$work/payload"
pub -r -t "$prefix/deploy" -f "$work/payload"
sleep 1.5
last=$(q last "$work/sub.log" "$prefix/deployments/invalid")
if [ "$(all_reports)" -gt "$n0" ]; then
        check "payload of 10 KB: the only report is payload-too-large on deployments/invalid" \
                test "$(all_reports)" -eq $((n0 + 1)) -a "$(q get "$last" error.code)" = payload-too-large
else
        echo "NOTE: payload of 10 KB: the broker did not deliver it (over the announced maximum packet size)"
fi
check "payload of 10 KB: no deployment b-huge was started" \
        test "$(q n "$work/sub.log" "$prefix/deployments/b-huge")" -eq 0
check "payload of 10 KB: gatewayd is still running" kill -0 "$gwpid"
check "payload of 10 KB: gatewayd is still online" online

# An empty retained message clears the desired state: no report, no error, nothing flashed.
n0=$(all_reports)
errs0=$(grep -c -i 'error\|warning' "$work/gatewayd.log")
pub -r -t "$prefix/deploy" -n
sleep 1.5
check "empty retained deploy message: no report at all" test "$(all_reports)" -eq "$n0"
check "empty retained deploy message: nothing logged as a warning or error" \
        test "$(grep -c -i 'error\|warning' "$work/gatewayd.log")" -eq "$errs0"
check "empty retained deploy message: the broker no longer holds a desired state" \
        test -z "$(retained "$prefix/deploy")"
check "empty retained deploy message: gatewayd is still running" kill -0 "$gwpid"

# Garbage on the cancel topic is ignored.
n0=$(all_reports)
pub -t "$prefix/cancel" -m '{"id":'
pub -t "$prefix/cancel" -m '{"id":"no-such-deployment"}'
pub -t "$prefix/cancel" -n
sleep 1
check "bad cancel messages: no report" test "$(all_reports)" -eq "$n0"
check "bad cancel messages: gatewayd is still running" kill -0 "$gwpid"

check "nothing reached the node during all that" test ! -s "$work/node-1.report"

# ---- A good deployment afterwards (with a member the gateway does not know: ignored) -----------
# The image is large enough (64 KiB, about 0.7 s on the line) to publish bad input while it runs.
head -c 65536 /dev/urandom >"$work/www/app.bin"
{
        echo "kind: gatewayd/manifest"
        echo "format: 1"
        echo "id: good"
        echo "sequence: $(date +%s)"
        echo "expires: $(date -u -d '+1 day' +%Y-%m-%dT%H:%M:%SZ)"
        echo "images:"
        echo "  - name: app"
        echo "    version: 1.0.0"
        echo "    targets: { node: node-1 }"
        echo "    protocol: ymodem"
        echo "    size: 65536"
        echo "    sha256: $(sha256sum "$work/www/app.bin" | cut -d' ' -f1)"
        echo "    url: app.bin"
} >"$work/www/good.yaml"
"$GWM" sign --key "$work/release" "$work/www/good.yaml" >/dev/null
pub -r -t "$prefix/deploy" -m "{\"id\":\"good\",\"manifest_url\":\"$url\",\"x-future\":{\"a\":1}}"
flashing() { grep -q "^[01] $prefix/nodes/node-1/status {\"state\":\"flashing\"" "$work/sub.log"; }
if gw_wait_for 20 flashing; then
        # Neither bad input nor a cleared desired state may disturb a running deployment.
        n0=$(q n "$work/sub.log" "$prefix/deployments/invalid")
        pub -r -t "$prefix/deploy" -m '{"id":"b-during",'
        pub -r -t "$prefix/deploy" -n
        gw_wait_for 10 more_than "$prefix/deployments/invalid" "$n0"
        check "bad input during a deployment: rejected as payload-invalid" \
                test "$(q get "$(q last "$work/sub.log" "$prefix/deployments/invalid")" error.code)" = payload-invalid
else
        fail "the good deployment never started flashing"
fi
gw_wait_for 30 q final "$work/sub.log" "$prefix/deployments/good" >/dev/null
final=$(q final "$work/sub.log" "$prefix/deployments/good")
check "after the bad input: a good deployment succeeds (got '$(q get "$final" state)')" \
        test "$(q get "$final" state)" = success
check "after the bad input: the deployment was not disturbed by bad input or a cleared state" \
        test "$(q get "$final" nodes.node-1.state)" = success
check "after the bad input: the node holds the image" \
        cmp -s "$work/www/app.bin" "$work/node-1.out/app-1.0.0.bin"

if [ "$failures" -ne 0 ]; then
        echo "--- gatewayd log (last 40 lines) ---"
        tail -n 40 "$work/gatewayd.log"
        exit 1
fi
exit 0
