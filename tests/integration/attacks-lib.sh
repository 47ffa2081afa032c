# Shared by the attack tests (attacks-*.sh): a broker, a hostile HTTP server (evil-http.py), two
# simulated YMODEM nodes, signing keys, gatewayd started and restarted (also under faketime),
# and helpers that author manifests and keys documents with the real gwmanifest. Set E2E_NAME
# and call attacks_setup TRUST-YAML-LINES first.
# shellcheck shell=bash
set -u
# shellcheck source=lib.sh
. "$GW_SRC/tests/integration/lib.sh"

gw="gw-e2e-$E2E_NAME"
prefix=gatewayd/$gw
baud=921600
gwpid=
seq_no=1000
expires=$(date -u -d '+1 day' +%Y-%m-%dT%H:%M:%SZ)

# keygen NAME TYPE: $work/NAME (private) and $work/NAME.pub.
keygen() { "$GWM" keygen --type "$2" --out "$work/$1" >/dev/null || { echo "FAIL: keygen $1"; exit 1; }; }

# keys_body VERSION THRESHOLD KEY...: an unsigned gatewayd/keys body.
keys_body() {
        local k
        printf 'kind: gatewayd/keys\nformat: 1\nversion: %s\nthreshold: %s\nkeys:\n' "$1" "$2"
        shift 2
        for k in "$@"; do
                printf '  - public: |\n'
                sed 's/^/      /' "$work/$k.pub"
        done
}

# attacks_setup TRUST-LINES: starts the broker, the HTTP server, node-1 and node-2, and writes
# $work/gatewayd.yaml with TRUST-LINES as its trust: section (indented by the caller).
attacks_setup() {
        mkdir -p "$work/www" "$work/state"
        gw_start_broker "$work"
        start_evil_http "$work/www" "$work/http.log"
        gw_start_sim node-1 "$work" "$baud"
        gw_start_sim node-2 "$work" "$baud"
        cat >"$work/gatewayd.yaml" <<CONF
gateway:
  id: $gw
  hardware: gw-e2e-hw
state-dir: state
log-level: debug
mqtt:
  host: 127.0.0.1
  port: $GW_BROKER_PORT
limits:
  manifest-size: 8192
fetch:
  min-rate: 2000
  rate-window: 2
  deadline: 3
  connect-timeout: 2
trust:
$1
nodes:
  - name: node-1
    class: motor
    hardware: { chip-id: "0x413" }
    transport: { type: uart, port: $work/node-1.tty, baud: $baud }
    protocol: { type: ymodem, start-timeout-ms: 2000 }
  - name: node-2
    class: sensor
    transport: { type: uart, port: $work/node-2.tty, baud: $baud }
    protocol: { type: ymodem, start-timeout-ms: 2000 }
CONF
        "$GWD" --check-config "$work/gatewayd.yaml" >/dev/null 2>"$work/check-config.log" ||
                { echo "FAIL: the test configuration is refused:"; cat "$work/check-config.log"; exit 1; }
        watch_prefix
}

online_count() { q count "$work/sub.log" "$prefix/state" online; }
# start_gwd [WRAPPER...]: starts gatewayd (under WRAPPER, e.g. faketime) and waits until it is
# online on the broker.
start_gwd() {
        local before
        before=$(online_count)
        "$@" "$GWD" -c "$work/gatewayd.yaml" 2>>"$work/gatewayd.log" &
        gwpid=$!
        GW_PIDS+=("$gwpid")
        gw_wait_for 10 test "$(online_count)" -gt "$before" ||
                { echo "FAIL: gatewayd did not come online"; tail -n 20 "$work/gatewayd.log"; exit 1; }
}
stop_gwd() {
        kill "$gwpid" 2>/dev/null
        timeout 10 tail --pid="$gwpid" -f /dev/null 2>/dev/null || kill -9 "$gwpid" 2>/dev/null
        wait "$gwpid" 2>/dev/null
}

# head_ ID [EXPIRES [SEQUENCE [POLICY-EXTRA]]]: a manifest body's start; the sequence defaults to
# the next of a counter.
head_() {
        seq_no=$((seq_no + 1))
        echo "kind: gatewayd/manifest"
        echo "format: 1"
        echo "id: $1"
        echo "sequence: ${3:-$seq_no}"
        echo "expires: ${2:-$expires}"
        echo "policy: { parallel: 2${4:+, $4} }"
        echo "images:"
}
# img NAME VERSION TARGET FILE [URL [HARDWARE [PROTOCOL [MIRRORS]]]]: one image; TARGET is
# "node: X" or "class: X"; size and hash are FILE's (in www/).
img() {
        local f=$work/www/$4
        echo "  - name: $1"
        echo "    version: $2"
        echo "    targets: { $3 }"
        [ -n "${6:-}" ] && echo "    hardware: { $6 }"
        echo "    protocol: ${7:-ymodem}"
        echo "    size: $(stat -c %s "$f")"
        echo "    sha256: $(sha256sum "$f" | cut -d' ' -f1)"
        echo "    url: ${5:-$4}"
        [ -n "${8:-}" ] && echo "    mirrors: [$8]"
        return 0
}
# sign FILE KEY...: one signature per key.
sign() {
        local f=$1 k
        shift
        for k in "$@"; do
                "$GWM" sign --key "$work/$k" "$f" >/dev/null || { echo "FAIL: sign $f with $k"; exit 1; }
        done
}
# deploy PAYLOAD: publishes the desired state, first noting what the nodes hold.
deploy() {
        flashed_before=$(flashed)
        mosquitto_pub -h 127.0.0.1 -p "$GW_BROKER_PORT" -q 1 -r -t "$prefix/deploy" -m "$1"
}
# deploy_url ID [FILE]: deploys http://.../FILE (default ID.yaml) as deployment ID.
deploy_url() { deploy "{\"id\":\"$1\",\"manifest_url\":\"http://127.0.0.1:$EVIL_PORT/${2:-$1.yaml}\"}"; }
wait_final() {
        gw_wait_for 30 q final "$work/sub.log" "$prefix/deployments/$1" >/dev/null
        q final "$work/sub.log" "$prefix/deployments/$1"
}
# flashed: what the nodes have received (report lines, files stored).
flashed() {
        local n
        for n in 1 2; do
                printf '%s/%s ' "$(wc -l 2>/dev/null <"$work/node-$n.report" || echo 0)" \
                        "$(find "$work/node-$n.out" -type f | wc -l)"
        done
}

# expect NAME ID STATE CODE: the final report of ID has STATE and CODE, nothing reached a node,
# and gatewayd still runs. Call right after publishing.
expect() {
        local name=$1 id=$2 state=$3 code=$4 final
        final=$(wait_final "$id")
        check "$name: deployments/$id ends $state (got '$(q get "$final" state)')" \
                test "$(q get "$final" state)" = "$state"
        check "$name: the error code is $code (got '$(q get "$final" error.code)')" \
                test "$(q get "$final" error.code)" = "$code"
        check "$name: nothing was flashed" test "$(flashed)" = "$flashed_before"
        check "$name: gatewayd is still running" kill -0 "$gwpid"
}
# expect_success NAME ID NODE FILE VERSION: ID succeeded and NODE holds FILE as NAME-VERSION.bin.
expect_success() {
        local name=$1 id=$2 node=$3 file=$4 stored=$5 final
        final=$(wait_final "$id")
        check "$name: deployments/$id ends success (got '$(q get "$final" state)' '$(q get "$final" error.code)' '$(q get "$final" error.message)')" \
                test "$(q get "$final" state)" = success
        check "$name: $node holds the image" cmp -s "$work/www/$file" "$work/$node.out/$stored"
}

attacks_finish() {
        if [ "$failures" -ne 0 ]; then
                echo "--- gatewayd log (last 60 lines) ---"
                tail -n 60 "$work/gatewayd.log"
                exit 1
        fi
        exit 0
}
