#!/usr/bin/env bash
# End to end over MQTT: a real broker, an HTTP server, three simulated YMODEM nodes and gatewayd.
# A signed deployment by manifest_url must reach every node byte for byte with the documented
# status sequence; the gateway state must be online/offline; a finished deployment must not run
# again after a restart; inline base64 manifests and file:// manifest URLs must work too; and a
# deployment interrupted by SIGTERM mid-flash must run again after the restart.
set -u

: "${GW_SRC:?GW_SRC must name the source directory}"
E2E_NAME=deploy-mqtt
# shellcheck source=lib.sh
. "$GW_SRC/tests/integration/lib.sh"

# ---- The parts --------------------------------------------------------------------------------
gw="gw-e2e-mqtt"
prefix=gatewayd/$gw
baud=921600
mkdir -p "$work/www" "$work/state"
gw_start_broker "$work"
gw_start_http "$work/www"
for n in 1 2 3; do
        gw_start_sim "node-$n" "$work" "$baud"
done
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
  reconnect-max: 2
trust:
  public-keys: [release.pub]
nodes:
CONF
for n in 1 2 3; do
        cat >>"$work/gatewayd.yaml" <<CONF
  - name: node-$n
    class: e2e-mcu
    transport: { type: uart, port: $work/node-$n.tty, baud: $baud }
    protocol: { type: ymodem }
CONF
done
"$GWD" --check-config "$work/gatewayd.yaml" >/dev/null 2>"$work/check-config.log" ||
        { echo "FAIL: the test configuration is refused:"; cat "$work/check-config.log"; exit 1; }

watch_prefix

gwpid=
start_gw() {
        "$GWD" -c "$work/gatewayd.yaml" 2>>"$work/gatewayd.log" &
        gwpid=$!
        GW_PIDS+=("$gwpid")
}
# stop_gw: SIGTERM, then the exit status (124 when it did not exit within 10 s).
stop_gw() {
        local _
        kill -TERM "$gwpid" 2>/dev/null
        for _ in $(seq 1 100); do
                kill -0 "$gwpid" 2>/dev/null || break
                sleep 0.1
        done
        if kill -0 "$gwpid" 2>/dev/null; then
                kill -9 "$gwpid"
                wait "$gwpid" 2>/dev/null
                return 124
        fi
        wait "$gwpid"
}

# retained TOPIC: "<retain flag> <payload>" of the message the broker retains on TOPIC.
retained() {
        mosquitto_sub -h 127.0.0.1 -p "$GW_BROKER_PORT" -C 1 -W 3 -F '%r %p' -t "$1" 2>/dev/null
}

seq_no=$(date +%s)
expires=$(date -u -d '+1 day' +%Y-%m-%dT%H:%M:%SZ)
# manifest FILE ID URLBASE: a signed manifest sending app-node-N.bin to node-N (N = 1..3);
# URLBASE is prefixed to each image file name (empty for relative URLs).
manifest() {
        local file=$1 id=$2 base=$3 n size sum
        seq_no=$((seq_no + 1))
        {
                echo "kind: gatewayd/manifest"
                echo "format: 1"
                echo "id: $id"
                echo "sequence: $seq_no"
                echo "expires: $expires"
                echo "policy: { parallel: 3 }"
                echo "images:"
                for n in 1 2 3; do
                        size=$(stat -c %s "$work/www/$id-node-$n.bin")
                        sum=$(sha256sum "$work/www/$id-node-$n.bin" | cut -d' ' -f1)
                        echo "  - name: app-node-$n"
                        echo "    version: $id.$n"
                        echo "    targets: { node: node-$n }"
                        echo "    protocol: ymodem"
                        echo "    size: $size"
                        echo "    sha256: $sum"
                        echo "    url: $base$id-node-$n.bin"
                done
        } >"$file"
        "$GWM" sign --key "$work/release" "$file" >/dev/null
}
# images ID: three different images of different sizes (not multiples of the block size).
images() {
        local n
        for n in 1 2 3; do
                head -c $((1000 + n * 2345)) /dev/urandom >"$work/www/$1-node-$n.bin"
        done
}
deploy() { mosquitto_pub -h 127.0.0.1 -p "$GW_BROKER_PORT" -q 1 -r -t "$prefix/deploy" -m "$1"; }
# wait_final ID: waits up to 30 s for the final report of ID and prints it.
wait_final() {
        gw_wait_for 30 q final "$work/sub.log" "$prefix/deployments/$1" >/dev/null
        q final "$work/sub.log" "$prefix/deployments/$1"
}
# nodes_hold ID: every node holds exactly its image of deployment ID.
nodes_hold() {
        local n ok=0
        for n in 1 2 3; do
                if ! cmp -s "$work/www/$1-node-$n.bin" "$work/node-$n.out/app-node-$n-$1.$n.bin"; then
                        echo "  node-$n does not hold $1-node-$n.bin" >&2
                        ok=1
                fi
        done
        return $ok
}
reports() { cat "$work"/node-*.report 2>/dev/null | wc -l; }

start_gw

# ---- 1. A deployment by manifest_url over HTTP --------------------------------------------------
images d1
manifest "$work/www/d1.yaml" d1 ""
deploy "{\"id\":\"d1\",\"manifest_url\":\"http://127.0.0.1:$GW_HTTP_PORT/d1.yaml\"}"
final=$(wait_final d1)
check "http manifest_url: the final report of d1 says success" \
        test "$(q get "$final" state)" = success
for n in 1 2 3; do
        check "http manifest_url: d1 final report lists node-$n as success" \
                test "$(q get "$final" "nodes.node-$n.state")" = success
done
r=$(retained "$prefix/deployments/d1")
check "http manifest_url: the final report of d1 is retained" \
        test "${r%% *}" = 1 -a "$(q get "${r#* }" state 2>/dev/null)" = success
check "http manifest_url: every node holds its image byte for byte" nodes_hold d1
for n in 1 2 3; do
        st=$(q states "$work/sub.log" "$prefix/nodes/node-$n/status" d1)
        rc=$?
        check "node-$n status went queued downloading verifying flashing success ($st)" \
                test "$st" = "queued downloading verifying flashing success"
        check "node-$n status progress never went backwards within a state" test $rc -eq 0
done
r=$(retained "$prefix/state")
check "gateway state is online and retained" \
        test "${r%% *}" = 1 -a "$(q get "${r#* }" state 2>/dev/null)" = online

# ---- 2. Clean shutdown ------------------------------------------------------------------------
stop_gw
rc=$?
check "SIGTERM: gatewayd exits with status 0 (got $rc)" test $rc -eq 0
r=$(retained "$prefix/state")
check "SIGTERM: gateway state becomes offline, retained" \
        test "${r%% *}" = 1 -a "$(q get "${r#* }" state 2>/dev/null)" = offline

# ---- 3. The same deployment after a restart is not run again --------------------------------
before_reports=$(reports)
before_accepted=$(q count "$work/sub.log" "$prefix/deployments/d1" accepted)
before_final=$(q count "$work/sub.log" "$prefix/deployments/d1" success)
first_final=$(q final "$work/sub.log" "$prefix/deployments/d1")
log_lines=$(wc -l <"$work/gatewayd.log")
start_gw
online() { retained "$prefix/state" | grep -q '"online"'; }
gw_wait_for 10 online
r=$(retained "$prefix/state")
check "restart: gateway state is online again" \
        test "$(q get "${r#* }" state 2>/dev/null)" = online
# The retained deploy message comes back on subscribe; publish it once more on top.
deploy "{\"id\":\"d1\",\"manifest_url\":\"http://127.0.0.1:$GW_HTTP_PORT/d1.yaml\"}"
already() { [ "$(tail -n +$((log_lines + 1)) "$work/gatewayd.log" | grep -c 'already done')" -ge 2 ]; }
gw_wait_for 10 already || sleep 1
sleep 1
check "restart: the same deployment (id and manifest) does not reach the nodes again" \
        test "$(reports)" -eq "$before_reports"
check "restart: the same deployment is not accepted again" \
        test "$(q count "$work/sub.log" "$prefix/deployments/d1" accepted)" -eq "$before_accepted"
check "restart: gatewayd is still running" kill -0 "$gwpid"
# ... but its final report is published again, as the journal kept it (a broker that lost it,
# or a power cut between the journal and the publication, gets it back).
check "restart: d1's final report is published again ($before_final before)" \
        test "$(q count "$work/sub.log" "$prefix/deployments/d1" success)" -gt "$before_final"
check "restart: ... the very report of the run (same ts, same nodes)" \
        test "$(q final "$work/sub.log" "$prefix/deployments/d1")" = "$first_final"

# ---- 4. An inline base64 manifest with absolute image URLs --------------------------------------
images d2
manifest "$work/d2.yaml" d2 "http://127.0.0.1:$GW_HTTP_PORT/"
deploy "{\"id\":\"d2\",\"manifest\":\"$(base64 -w0 "$work/d2.yaml")\"}"
final=$(wait_final d2)
check "inline manifest: the final report of d2 says success" \
        test "$(q get "$final" state)" = success
check "inline manifest: every node holds its image byte for byte" nodes_hold d2

# ---- 5. A file:// manifest_url with relative image URLs -----------------------------------------
images d3
manifest "$work/www/d3.yaml" d3 ""
deploy "{\"id\":\"d3\",\"manifest_url\":\"file://$work/www/d3.yaml\"}"
final=$(wait_final d3)
check "file:// manifest_url: the final report of d3 says success" \
        test "$(q get "$final" state)" = success
check "file:// manifest_url: every node holds its image byte for byte" nodes_hold d3

# ---- 6. SIGTERM in the middle of flashing: after the restart the deployment runs again ------------
# daemon.c on SIGTERM: "the desired state is still retained on the broker, so the deployment
# runs again after the restart". node-1's image takes about 2 s on the line.
images d4
head -c 196608 /dev/urandom >"$work/www/d4-node-1.bin"
manifest "$work/www/d4.yaml" d4 ""
deploy "{\"id\":\"d4\",\"manifest_url\":\"http://127.0.0.1:$GW_HTTP_PORT/d4.yaml\"}"
midflash() {
        grep -q "^[01] $prefix/nodes/node-1/status {\"state\":\"flashing\",\"deployment\":\"d4\".*\"progress\":[1-9]" \
                "$work/sub.log"
}
if gw_wait_for 20 midflash; then
        stop_gw
        rc=$?
        check "SIGTERM while flashing: gatewayd exits with status 0 (got $rc)" test $rc -eq 0
        log_lines=$(wc -l <"$work/gatewayd.log")
        start_gw
        # Done waiting when d4 succeeded, or when the restarted gatewayd said it will not run it.
        d4over() {
                [ "$(q get "$(q final "$work/sub.log" "$prefix/deployments/d4")" state)" = success ] ||
                        tail -n +$((log_lines + 1)) "$work/gatewayd.log" | grep -q 'd4 .*already done'
        }
        gw_wait_for 20 d4over
        final=$(q final "$work/sub.log" "$prefix/deployments/d4")
        check "SIGTERM while flashing: after the restart d4 runs again and succeeds (last final: $(q get "$final" state) $(q get "$final" error.code))" \
                test "$(q get "$final" state)" = success
        check "SIGTERM while flashing: after the restart every node holds its d4 image" nodes_hold d4
else
        fail "SIGTERM while flashing: d4 never reached node-1's flashing state"
fi

stop_gw
rc=$?
check "SIGTERM after the deployments: gatewayd exits with status 0 (got $rc)" test $rc -eq 0

if [ "$failures" -ne 0 ]; then
        echo "--- gatewayd log (last 30 lines) ---"
        tail -n 30 "$work/gatewayd.log"
        exit 1
fi
exit 0
