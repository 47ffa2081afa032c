#!/usr/bin/env bash
# Rollback of USB DFU nodes by reflashing the previous image from the store, end to end over
# MQTT under the umockdev DFU emulator (tools/sim/dfu-sim): after v1 is on two DFU 1.1 boards,
# an atomic deployment of v2 in which board B fails mid-download (an errWRITE armed through the
# emulator's control FIFO) reverts B and board A, which already took v2; both boards' memory
# holds v1 byte for byte again and the final report is failed with per-node reverted states.
set -u

: "${GW_SRC:?GW_SRC must name the source directory}"
E2E_NAME=rollback-dfu
# shellcheck source=lib.sh
. "$GW_SRC/tests/integration/lib.sh"

require_dfu_sim

gw="gw-e2e-rollback-dfu"
prefix=gatewayd/$gw
mkdir -p "$work/www" "$work/state"
gw_start_broker "$work"
gw_start_http "$work/www"
"$GWM" keygen --type ed25519 --out "$work/release" >/dev/null ||
        { echo "FAIL: gwmanifest keygen"; exit 1; }

watch_prefix

# The emulator: two DFU 1.1 boards, A (dump sim.dump) and B (sim.dump.2).
rm -f "$work/sim.env"
"$SIM" --serial A --serial B --env-file "$work/sim.env" --control "$work/sim.ctl" \
        --report "$work/sim.json" --dump "$work/sim.dump" >/dev/null 2>"$work/sim.log" &
sim_pid=$!
GW_PIDS+=("$sim_pid")
gw_wait_for 10 test -s "$work/sim.env" || gw_die "dfu-sim did not come up"

cat >"$work/gw.yaml" <<CONF
gateway:
  id: $gw
state-dir: state
log-level: debug
mqtt:
  host: 127.0.0.1
  port: $GW_BROKER_PORT
trust:
  public-keys: [release.pub]
nodes:
  - name: dfu-A
    transport: { type: usb, usb: "1d50:6089", serial: A }
    protocol: { type: dfu, alt: 0 }
  - name: dfu-B
    transport: { type: usb, usb: "1d50:6089", serial: B }
    protocol: { type: dfu, alt: 0 }
CONF
"$GWD" --check-config "$work/gw.yaml" >/dev/null 2>"$work/check-config.log" || {
        if grep -qi "usb" "$work/check-config.log"; then
                echo "SKIP: gatewayd refuses a usb node (built without the usb transport?):"
                cat "$work/check-config.log"
                exit 77
        fi
        echo "FAIL: the test configuration is refused:"
        cat "$work/check-config.log"
        exit 1
}
# shellcheck disable=SC2046
env $(cat "$work/sim.env") "$GWD" -c "$work/gw.yaml" 2>"$work/gatewayd.log" &
gwpid=$!
GW_PIDS+=("$gwpid")

# stop_pid PID: SIGTERM, then SIGKILL after 10 s.
stop_pid() {
        local p=$1 _
        kill -TERM "$p" 2>/dev/null
        for _ in $(seq 1 100); do
                kill -0 "$p" 2>/dev/null || break
                sleep 0.1
        done
        kill -9 "$p" 2>/dev/null
        wait "$p" 2>/dev/null
}

seq_no=$(date +%s)
expires=$(date -u -d '+1 day' +%Y-%m-%dT%H:%M:%SZ)
# manifest ID ATOMIC VERSION: fw-a VERSION (www/a-VERSION.bin) to dfu-A, then fw-b VERSION
# (www/b-VERSION.bin) to dfu-B, one node at a time; signed and published as the desired state.
manifest() {
        local id=$1 atomic=$2 v=$3 n f
        seq_no=$((seq_no + 1))
        {
                printf 'kind: gatewayd/manifest\nformat: 1\nid: %s\nsequence: %s\n' "$id" "$seq_no"
                printf 'expires: %s\npolicy: { parallel: 1, atomic: %s }\nimages:\n' "$expires" "$atomic"
                for n in a b; do
                        f=$n-$v.bin
                        echo "  - name: fw-$n"
                        echo "    version: $v"
                        echo "    targets: { node: dfu-${n^^} }"
                        echo "    protocol: dfu"
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
        gw_wait_for 30 q final "$work/sub.log" "$prefix/deployments/$1" >/dev/null
        q final "$work/sub.log" "$prefix/deployments/$1"
}
states() { q states "$work/sub.log" "$prefix/nodes/$1/status" "$2"; }
# report: asks the emulator for its report now and waits until it is rewritten.
report() {
        local before
        before=$(stat -c %.9Y.%i.%s "$work/sim.json" 2>/dev/null)
        kill -USR1 "$sim_pid"
        gw_wait_for 5 sh -c "[ \"\$(stat -c %.9Y.%i.%s '$work/sim.json' 2>/dev/null)\" != '$before' ]" ||
                sleep 0.5
}
# dev SERIAL KEY: a per-device member of the last report.
dev() {
        python3 -c 'import json,sys
print(next(d for d in json.load(open(sys.argv[1]))["devices"] if d["serial"] == sys.argv[2])[sys.argv[3]])' \
                "$work/sim.json" "$1" "$2"
}
blocks_of() { echo $((($(stat -c %s "$work/www/$1") + 1023) / 1024)); }
sha() { sha256sum "$work/www/$1" | cut -d' ' -f1; }

# Images of different sizes: a v2 longer than v1, so that a rollback must really rewrite the
# start of the memory (v2's tail past v1's end may stay).
head -c 5000 /dev/urandom >"$work/www/a-1.0.0.bin"
head -c 4100 /dev/urandom >"$work/www/b-1.0.0.bin"
head -c 7300 /dev/urandom >"$work/www/a-2.0.0.bin"
head -c 6200 /dev/urandom >"$work/www/b-2.0.0.bin"

# ---- 1. v1 on both boards ---------------------------------------------------------------------
manifest r1 false 1.0.0
final=$(wait_final r1)
check "r1: v1 reaches both boards (got $(q get "$final" state) $(q get "$final" error.code) $(q get "$final" error.message))" \
        test "$(q get "$final" state)" = success
for n in A B; do
        check "r1: dfu-$n is success" test "$(q get "$final" "nodes.dfu-$n.state")" = success
done
report
a_r1=$(dev A data_blocks)
b_r1=$(dev B data_blocks)
check "r1: each board received its v1 blocks (A $a_r1, B $b_r1)" \
        test "$a_r1" = "$(blocks_of a-1.0.0.bin)" -a "$b_r1" = "$(blocks_of b-1.0.0.bin)"

# ---- 2. Atomic v2: B fails at its 3rd data block after A took v2; both go back to v1 ---------
b_err=$(dev B errors_reported)
timeout 5 sh -c "printf '@B error errWRITE:3\\n' >'$work/sim.ctl'" || fail "cannot arm board B"
manifest r2 true 2.0.0
final=$(wait_final r2)
check "r2 atomic: the deployment fails (got $(q get "$final" state))" \
        test "$(q get "$final" state)" = failed
check "r2 atomic: the error is B's original failure, flash-failed (got '$(q get "$final" error.code)': $(q get "$final" error.message))" \
        test "$(q get "$final" error.code)" = flash-failed
for n in A B; do
        check "r2 atomic: dfu-$n is reverted in the final report (got $(q get "$final" "nodes.dfu-$n.state"))" \
                test "$(q get "$final" "nodes.dfu-$n.state")" = reverted
        check "r2 atomic: the final report says dfu-$n runs fw-${n,,} 1.0.0 again (got $(q get "$final" "nodes.dfu-$n.image") $(q get "$final" "nodes.dfu-$n.version"))" \
                test "$(q get "$final" "nodes.dfu-$n.image")/$(q get "$final" "nodes.dfu-$n.version")" = "fw-${n,,}/1.0.0"
done
check "r2 atomic: dfu-B carries its flash-failed error" \
        test "$(q get "$final" nodes.dfu-B.error.code)" = flash-failed
check "r2 atomic: dfu-A, rolled back only because of atomic, has no error ($(q get "$final" nodes.dfu-A.error))" \
        test -z "$(q get "$final" nodes.dfu-A.error)"
st=$(states dfu-A r2)
check "r2 atomic: dfu-A took v2 and was then rolled back ($st)" \
        test "$st" = "queued downloading verifying flashing checking success reverting reverted"
st=$(states dfu-B r2)
check "r2 atomic: dfu-B failed flashing and was rolled back ($st)" \
        test "$st" = "queued downloading verifying flashing reverting reverted"
last=$(q last "$work/sub.log" "$prefix/nodes/dfu-B/status")
check "r2 atomic: dfu-B's reverting/reverted status names v1 ($last)" \
        test "$(q get "$last" image)/$(q get "$last" version)" = fw-b/1.0.0

report
a_r2=$(dev A data_blocks)
b_r2=$(dev B data_blocks)
check "r2 atomic: board B reported the armed errWRITE ($b_err -> $(dev B errors_reported))" \
        test "$(dev B errors_reported)" -gt "$b_err"
check "r2 atomic: board A received all of v2 and then all of v1 ($a_r1 -> $a_r2)" \
        test "$((a_r2 - a_r1))" -eq "$(($(blocks_of a-2.0.0.bin) + $(blocks_of a-1.0.0.bin)))"
# The emulator counts the refused 3rd DNLOAD too: it carried data.
check "r2 atomic: board B got 3 blocks of v2 (the 3rd refused), then all of v1 ($b_r1 -> $b_r2)" \
        test "$((b_r2 - b_r1))" -eq "$((3 + $(blocks_of b-1.0.0.bin)))"
for n in A B; do
        rec=$(cat "$work/state/nodes/dfu-$n.json" 2>/dev/null)
        check "journal: dfu-$n runs fw-${n,,} 1.0.0 again, with v1's hash ($rec)" \
                test "$(q get "$rec" image)/$(q get "$rec" version)/$(q get "$rec" sha256)" = \
                "fw-${n,,}/1.0.0/$(sha "${n,,}-1.0.0.bin")"
done

# ---- 3. The boards' memory ---------------------------------------------------------------------
stop_pid "$gwpid"
stop_pid "$sim_pid"
check "dump: board A's memory holds v1 byte for byte" \
        cmp -s -n "$(stat -c %s "$work/www/a-1.0.0.bin")" "$work/www/a-1.0.0.bin" "$work/sim.dump"
check "dump: board B's memory holds v1 byte for byte" \
        cmp -s -n "$(stat -c %s "$work/www/b-1.0.0.bin")" "$work/www/b-1.0.0.bin" "$work/sim.dump.2"

if [ "$failures" -ne 0 ]; then
        echo "--- gatewayd log (last 40 lines) ---"
        tail -n 40 "$work/gatewayd.log"
        exit 1
fi
exit 0
