#!/usr/bin/env bash
# End to end over MQTT with two UDS ECUs on one simulated CAN bus: gatewayd's two nodes name the
# same slcan port (can-sim's pty) with different ids. Each image carries its version in a header
# that the simulated ECU reports as F195 once it runs it (can-sim's version-at), so identify after
# the install proves the new image runs. d1: ECU A takes 1.1.0. d2, atomic: A takes 2.0.0, then B
# refuses RequestDownload (uploadDownloadNotAccepted): A is rolled back by reflashing 1.1.0 from
# the store (its flash holds 1.1.0 again, state reverted), B has no previous image and fails with
# the NRC's name. d3: both take 3.0.0, two sessions at once on the bus, and report it. d4: an
# image whose hardware map names B's serial is refused for A before anything is written.
set -u

: "${GW_SRC:?GW_SRC must name the source directory}"
E2E_NAME=deploy-can
# shellcheck source=lib.sh
. "$GW_SRC/tests/integration/lib.sh"

SIM=$GW_BUILD/tools/sim/can-sim
MODULE=$GW_BUILD/tools/sim/libuds-seedkey.so
if [ ! -x "$SIM" ] || [ ! -f "$MODULE" ]; then
        echo "FAIL: can-sim or the uds seed-to-key module was not built"
        exit 1
fi

gw="gw-e2e-can"
prefix=gatewayd/$gw
mkdir -p "$work/www" "$work/state" "$work/dump"
gw_start_broker "$work"
gw_start_http "$work/www"

# The bus: ECU A on 0x7e0/0x7e8, ECU B on 0x7e1/0x7e9; F195 after a passing check and a reset is
# the string at offset 0 of the image (its header).
"$SIM" --link "$work/bus.tty" --report "$work/bus.json" --dump-dir "$work/dump" \
        --control "$work/bus.ctl" --trace "$work/bus.trace" --seed 11 -v \
        --ecu ecu-a,tx=0x7e0,rx=0x7e8,serial=ECU-A-0001,version=1.0.0,hardware=HW-A,version-at=0 \
        --ecu ecu-b,tx=0x7e1,rx=0x7e9,serial=ECU-B-0002,version=0.9.0,hardware=HW-B,version-at=0 \
        >"$work/sim.out" 2>"$work/sim.log" &
GW_PIDS+=($!)
gw_wait_for 10 grep -q '^can-sim: ready' "$work/sim.out" || { echo "FAIL: can-sim did not get ready"; exit 1; }

"$GWM" keygen --type ed25519 --out "$work/release" >/dev/null ||
        { echo "FAIL: gwmanifest keygen"; exit 1; }
{
        printf 'gateway:\n  id: %s\nstate-dir: state\nlog-level: info\n' "$gw"
        printf 'mqtt:\n  host: 127.0.0.1\n  port: %s\n' "$GW_BROKER_PORT"
        printf 'trust:\n  public-keys: [release.pub]\nnodes:\n'
        for n in a:0x7e0:0x7e8 b:0x7e1:0x7e9; do
                IFS=: read -r name tx rx <<<"$n"
                printf '  - name: ecu-%s\n    class: can-ecu\n' "$name"
                printf '    transport: { type: can, port: %s/bus.tty, bitrate: 500000, tx-id: %s, rx-id: %s }\n' \
                        "$work" "$tx" "$rx"
                printf '    protocol: { type: uds, seedkey-module: %s }\n' "$MODULE"
        done
} >"$work/gatewayd.yaml"
"$GWD" --check-config "$work/gatewayd.yaml" >/dev/null 2>"$work/check-config.log" || {
        echo "FAIL: the test configuration is refused:"
        cat "$work/check-config.log"
        exit 1
}

watch_prefix
"$GWD" -c "$work/gatewayd.yaml" 2>"$work/gatewayd.log" &
gwpid=$!
GW_PIDS+=("$gwpid")

seq_no=$(date +%s)
expires=$(date -u -d '+1 day' +%Y-%m-%dT%H:%M:%SZ)
# image NODE VERSION: www/NODE-VERSION.bin: its version and a NUL, then random bytes (20-28 KB).
image() {
        local f=$work/www/$1-$2.bin
        [ -f "$f" ] && return 0
        { printf '%s\0' "$2"; head -c $((20000 + RANDOM % 8000)) /dev/urandom; } >"$f"
}
# manifest ID ATOMIC PARALLEL VERSION NODE[:HARDWARE]...: VERSION to each NODE (ecu-a, ecu-b),
# with an image hardware map serial: HARDWARE when given; published as the desired state.
manifest() {
        local id=$1 atomic=$2 par=$3 v=$4 spec n hw f
        shift 4
        seq_no=$((seq_no + 1))
        {
                printf 'kind: gatewayd/manifest\nformat: 1\nid: %s\nsequence: %s\n' "$id" "$seq_no"
                printf 'expires: %s\npolicy: { parallel: %s, atomic: %s }\nimages:\n' "$expires" \
                        "$par" "$atomic"
                for spec in "$@"; do
                        n=${spec%%:*}
                        hw=${spec#*:}
                        [ "$hw" = "$spec" ] && hw=
                        image "$n" "$v"
                        f=$n-$v.bin
                        echo "  - name: app-$n"
                        echo "    version: $v"
                        echo "    targets: { node: $n }"
                        echo "    protocol: uds"
                        echo "    options: { address: 0x8000 }"
                        if [ -n "$hw" ]; then echo "    hardware: { serial: $hw }"; fi
                        echo "    size: $(stat -c %s "$work/www/$f")"
                        echo "    sha256: $(sha256sum "$work/www/$f" | cut -d' ' -f1)"
                        echo "    url: $f"
                done
        } >"$work/www/$id.yaml"
        "$GWM" sign --key "$work/release" "$work/www/$id.yaml" >/dev/null
        mosquitto_pub -h 127.0.0.1 -p "$GW_BROKER_PORT" -q 1 -r -t "$prefix/deploy" \
                -m "{\"id\":\"$id\",\"manifest_url\":\"http://127.0.0.1:$GW_HTTP_PORT/$id.yaml\"}"
}
wait_final() {
        gw_wait_for 40 q final "$work/sub.log" "$prefix/deployments/$1" >/dev/null
        q final "$work/sub.log" "$prefix/deployments/$1"
}
states() { q states "$work/sub.log" "$prefix/nodes/$1/status" "$2"; }
# snapshot: the simulator writes its report and both flash dumps now.
snapshot() {
        timeout 5 sh -c "printf 'report\\n' >'$work/bus.ctl'" || fail "cannot reach can-sim's control"
        sleep 0.3
}
# ecu NAME EXPR: a value from ECU NAME's part of the report (e indexes it).
ecu() {
        python3 -c 'import json,sys
r = json.load(open(sys.argv[1]))
e = [x for x in r["ecus"] if x["name"] == sys.argv[2]][0]
print(eval(sys.argv[3]))' "$work/bus.json" "$1" "$2"
}
# holds NAME VERSION: the ECU's flash holds NAME-VERSION.bin at 0x8000.
holds() {
        local f=$work/www/$1-$2.bin
        cmp -s -n "$(stat -c %s "$f")" "$f" <(tail -c +$((0x8000 + 1)) "$work/dump/$1.bin")
}

# ---- d1: ECU A takes 1.1.0 ----------------------------------------------------------------------
manifest d1 false 1 1.1.0 ecu-a
final=$(wait_final d1)
check "d1: ecu-a takes 1.1.0 (got $(q get "$final" state): $(q get "$final" error.message))" \
        test "$(q get "$final" state)/$(q get "$final" nodes.ecu-a.version)" = success/1.1.0
st=$(states ecu-a d1)
check "d1: ecu-a was asked what it runs after the install ($st)" \
        eval 'case "$st" in *"flashing checking success") true ;; *) false ;; esac'
snapshot
check "d1: ecu-a's flash holds 1.1.0, and it reports 1.1.0 (F195)" \
        eval 'holds ecu-a 1.1.0 && [ "$(ecu ecu-a "e[\"version\"]")" = 1.1.0 ]'

# ---- d2: atomic; B refuses RequestDownload after A took 2.0.0 ------------------------------------
timeout 5 sh -c "printf 'nrc ecu-b/0x34:0x70\\n' >'$work/bus.ctl'" || fail "cannot arm the NRC"
manifest d2 true 1 2.0.0 ecu-a ecu-b
final=$(wait_final d2)
check "d2: the deployment fails with ecu-b's flash-failed (got $(q get "$final" state) $(q get "$final" error.code): $(q get "$final" error.message))" \
        test "$(q get "$final" state)/$(q get "$final" error.code)" = failed/flash-failed
check "d2: ecu-b failed with the NRC by name ($(q get "$final" nodes.ecu-b.error.message))" \
        eval 'test "$(q get "$final" nodes.ecu-b.state)" = failed &&
                q get "$final" nodes.ecu-b.error.message | grep -q "RequestDownload: negative response 0x70 uploadDownloadNotAccepted"'
check "d2: ecu-a is reverted (got $(q get "$final" nodes.ecu-a.state), runs $(q get "$final" nodes.ecu-a.version))" \
        test "$(q get "$final" nodes.ecu-a.state)/$(q get "$final" nodes.ecu-a.version)" = reverted/1.1.0
st=$(states ecu-a d2 2>"$work/states.err")
mono=$?
check "d2: ecu-a took 2.0.0, then was rolled back ($st)" \
        eval 'case "$st" in *"flashing checking success reverting reverted") true ;; *) false ;; esac'
# The rollback's progress starts at 0, not at the 100 % of the image it undoes.
check "d2: ecu-a's progress never went back within a state ($(cat "$work/states.err"))" \
        test "$mono" -eq 0
st=$(states ecu-b d2)
check "d2: ecu-b failed flashing and had nothing to go back to ($st)" \
        eval 'case "$st" in *"flashing failed") true ;; *) false ;; esac'
snapshot
check "d2: ecu-a's flash holds 1.1.0 again, reflashed from the store, and it reports 1.1.0" \
        eval 'holds ecu-a 1.1.0 && [ "$(ecu ecu-a "e[\"version\"]")" = 1.1.0 ]'
check "d2: ecu-a was written twice in d2 (2.0.0, then 1.1.0), ecu-b never" \
        eval '[ "$(ecu ecu-a "e[\"services\"][\"0x34\"]")" = 3 ] && [ "$(ecu ecu-b "e[\"bytes_programmed\"]")" = 0 ]'
grep -q 'ecu-a: rolled back to app-ecu-a 1.1.0' "$work/gatewayd.log" ||
        fail "d2: gatewayd did not log ecu-a's rollback"

# ---- d3: both take 3.0.0, at once on the one bus ------------------------------------------------
manifest d3 true 2 3.0.0 ecu-a ecu-b
final=$(wait_final d3)
check "d3: both ECUs take 3.0.0 (got $(q get "$final" state): $(q get "$final" error.message))" \
        test "$(q get "$final" state)" = success
for n in ecu-a ecu-b; do
        check "d3: $n reports 3.0.0 in the final report" \
                test "$(q get "$final" "nodes.$n.state")/$(q get "$final" "nodes.$n.version")" = success/3.0.0
        check "d3: gatewayd read 3.0.0 from $n after the install" \
                grep -q "$n: checked: it answers with version 3.0.0" "$work/gatewayd.log"
done
snapshot
check "d3: both flashes hold 3.0.0 and both ECUs run it" \
        eval 'holds ecu-a 3.0.0 && holds ecu-b 3.0.0 &&
                [ "$(ecu ecu-a "e[\"version\"]")/$(ecu ecu-b "e[\"version\"]")" = 3.0.0/3.0.0 ]'
# Both were programmed at the same time: A's TransferData first frames (0x7e0, "1x xx 36") fall
# between B's first and last ones on the bus (B took blocks only in d3).
check "d3: the two ECUs were programmed at once on the one bus" \
        python3 - "$work/bus.trace" <<'PY'
import sys
t = {"7e0": [], "7e1": []}
for line in open(sys.argv[1]):
    f = line.split()
    if len(f) > 7 and f[3] == "host" and f[4] in t and f[7][0] == "1" and f[7][4:6] == "36":
        t[f[4]].append(int(f[1]))
b0, b1 = min(t["7e1"]), max(t["7e1"])
sys.exit(0 if sum(1 for x in t["7e0"] if b0 < x < b1) >= 5 else 1)
PY

# ---- d4: the hardware map names B's serial: refused for A before anything is written -----------
blocks=$(ecu ecu-a 'e["services"].get("0x34", 0)')
manifest d4 false 1 4.0.0 ecu-a:ECU-B-0002
final=$(wait_final d4)
check "d4: refused as node-incompatible (got $(q get "$final" state) $(q get "$final" error.code): $(q get "$final" error.message))" \
        test "$(q get "$final" state)/$(q get "$final" error.code)" = failed/node-incompatible
check "d4: the reason names the serial ($(q get "$final" error.message))" \
        eval 'q get "$final" error.message | grep -q "serial"'
snapshot
check "d4: nothing was written to ecu-a (no RequestDownload, still 3.0.0)" \
        eval '[ "$(ecu ecu-a "e[\"services\"].get(\"0x34\", 0)")" = "$blocks" ] && holds ecu-a 3.0.0 &&
                [ "$(ecu ecu-a "e[\"version\"]")" = 3.0.0 ]'

if [ "$failures" -ne 0 ]; then
        echo "--- gatewayd log (last 40 lines) ---"
        tail -n 40 "$work/gatewayd.log"
        exit 1
fi
exit 0
