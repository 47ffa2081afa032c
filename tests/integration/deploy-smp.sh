#!/usr/bin/env bash
# MQTT deployments to two SMP nodes, each an smp-sim (a simulated MCUboot device) on its own pty:
# a deployment both nodes take (each ends running its new image, confirmed: MCUboot's test swap,
# reset, confirm), then an atomic one in which node-2's new image does not confirm (it crashes
# after the swap and MCUboot reverts it): node-2 is reported failed with the revert named, and
# node-1, which had taken its new image, is rolled back by the engine from its store (an
# upload, test, reset and confirm of its previous image) and reported reverted. After each
# install the engine checks the node with identify(), whose version must match the manifest's.
set -u

: "${GW_SRC:?GW_SRC must name the source directory}"
E2E_NAME=deploy-smp
# shellcheck source=lib.sh
. "$GW_SRC/tests/integration/lib.sh"

SIM=$GW_BUILD/tools/sim/smp-sim
MKIMG=$GW_SRC/tools/sim/mcuboot-image.py
PY=/usr/bin/python3
if [ ! -x "$SIM" ]; then
        echo "SKIP: tools/sim/smp-sim was not built (libcbor development files missing)"
        exit 77
fi
if [ ! -x "$PY" ]; then
        echo "SKIP: /usr/bin/python3 is missing"
        exit 77
fi

gw="gw-e2e-smp"
prefix=gatewayd/$gw
baud=1000000
mkdir -p "$work/www" "$work/state"
gw_start_broker "$work"
gw_start_http "$work/www"
"$GWM" keygen --type ed25519 --out "$work/release" >/dev/null ||
        { echo "FAIL: gwmanifest keygen"; exit 1; }

mkimg() { "$PY" "$MKIMG" "$@"; }
# Each node starts running its own 0.9.0; the deployments bring 1.0.0, then 2.0.0.
for n in 1 2; do
        mkimg --version 0.9.0 --size 9000 --seed $((n * 10)) "$work/node-$n-0.9.0.bin"
        # With a build number: the device prints 1.0.0.3, the manifest says 1.0.0+3.
        mkimg --version 1.0.0+3 --size $((20000 + n * 3000)) --seed $((n * 10 + 1)) \
                "$work/www/app-node-$n-1.0.0.bin"
        mkimg --version 2.0.0 --size $((25000 + n * 3000)) --seed $((n * 10 + 2)) \
                "$work/www/app-node-$n-2.0.0.bin"
done

for n in 1 2; do
        "$SIM" --link "$work/node-$n.tty" --baud "$baud" --slot0 "$work/node-$n-0.9.0.bin" \
                --boot-ms 200 --reset-delay-ms 100 --control "$work/node-$n.ctl" \
                --report "$work/node-$n.json" -v 2>"$work/node-$n.log" &
        GW_PIDS+=($!)
        gw_wait_for 10 grep -q "^smp-sim: ready" "$work/node-$n.log" ||
                { echo "FAIL: smp-sim node-$n did not come up"; exit 1; }
done

{
        printf 'gateway:\n  id: %s\nstate-dir: state\nlog-level: info\n' "$gw"
        printf 'mqtt:\n  host: 127.0.0.1\n  port: %s\n' "$GW_BROKER_PORT"
        printf 'trust:\n  public-keys: [release.pub]\nnodes:\n'
        for n in 1 2; do
                printf '  - name: node-%d\n' "$n"
                printf '    transport: { type: uart, port: %s/node-%d.tty, baud: %s }\n' \
                        "$work" "$n" "$baud"
                printf '    protocol: { type: smp, poll-interval-ms: 100, reset-timeout-ms: 10000 }\n'
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
# manifest ID ATOMIC TAG VERSION: app-node-N-TAG.bin, version VERSION, to node-N, both at once.
manifest() {
        local id=$1 atomic=$2 tag=$3 v=$4 n f
        seq_no=$((seq_no + 1))
        {
                printf 'kind: gatewayd/manifest\nformat: 1\nid: %s\nsequence: %s\n' "$id" "$seq_no"
                printf 'expires: %s\npolicy: { parallel: 2, atomic: %s }\nimages:\n' "$expires" "$atomic"
                for n in 1 2; do
                        f=app-node-$n-$tag.bin
                        echo "  - name: app-node-$n"
                        echo "    version: $v"
                        echo "    targets: { node: node-$n }"
                        echo "    protocol: smp"
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
        gw_wait_for 60 q final "$work/sub.log" "$prefix/deployments/$1" >/dev/null
        q final "$work/sub.log" "$prefix/deployments/$1"
}
states() { q states "$work/sub.log" "$prefix/nodes/$1/status" "$2"; }
# runs NODE VERSION: the node's simulator reports slot 0 running that image, confirmed, with no
# swap pending.
runs() {
        local f=$work/$1.json want before
        want=$(tlv_hash "$work/www/app-$1-$2.bin")
        [ "$2" = 0.9.0 ] && want=$(tlv_hash "$work/$1-0.9.0.bin")
        before=$(wc -l <"$f")
        timeout 5 sh -c "printf 'report\\n' >'$work/$1.ctl'" || return 1
        gw_wait_for 5 sh -c "[ \$(wc -l <'$f') -gt $before ]" || return 1
        [ "$(gw_report_field "$f" slot0_hash)/$(gw_report_field "$f" slot0_confirmed)/$(gw_report_field "$f" swap)" = "$want/true/none" ]
}
# The TLV hash of an image file: what the device reports.
tlv_hash() {
        "$PY" - "$1" <<'PY'
import struct, sys
d = open(sys.argv[1], "rb").read()
hdr, prot, size = struct.unpack_from("<HHI", d, 8)
off = hdr + size + prot
tot = struct.unpack_from("<HH", d, off)[1]
p = off + 4
while p < off + tot:
    t, n = struct.unpack_from("<HH", d, p)
    if t == 0x10:
        print(d[p + 4:p + 4 + n].hex())
    p += 4 + n
PY
}

# ---- 1. both nodes take 1.0.0 -----------------------------------------------------------------
manifest s1 false 1.0.0 1.0.0+3
final=$(wait_final s1)
check "s1: the deployment succeeds, identify's 1.0.0+3 matching the manifest (got $(q get "$final" state) $(q get "$final" error.message))" \
        test "$(q get "$final" state)" = success
for n in node-1 node-2; do
        check "s1: $n is success in the final report" test "$(q get "$final" "nodes.$n.state")" = success
        check "s1: $n runs 1.0.0, confirmed, nothing pending" runs "$n" 1.0.0
        st=$(states "$n" s1)
        check "s1: $n went queued downloading verifying flashing checking success ($st)" \
                test "$st" = "queued downloading verifying flashing checking success"
done

# ---- 2. atomic 2.0.0: node-2's image does not confirm; node-1 goes back ----------------------
timeout 5 sh -c "printf 'crash-after-swap\\n' >'$work/node-2.ctl'" || fail "cannot arm node-2"
manifest s2 true 2.0.0 2.0.0
final=$(wait_final s2)
check "s2: the atomic deployment fails (got $(q get "$final" state))" test "$(q get "$final" state)" = failed
check "s2: node-2 carries flash-failed (got $(q get "$final" nodes.node-2.error.code))" \
        test "$(q get "$final" nodes.node-2.error.code)" = flash-failed
msg=$(q get "$final" nodes.node-2.error.message)
check "s2: ... its message names the revert ($msg)" \
        eval 'case "$msg" in *reverted*previous\ image\ 1.0.0.3*) true ;; *) false ;; esac'
check "s2: node-2 runs 1.0.0 again, confirmed (MCUboot reverted it)" runs node-2 1.0.0
st=$(states node-1 s2)
check "s2: node-1 took 2.0.0 and was rolled back ($st)" \
        test "$st" = "queued downloading verifying flashing checking success reverting reverted"
check "s2: node-1 is reverted in the final report (got $(q get "$final" nodes.node-1.state))" \
        test "$(q get "$final" nodes.node-1.state)" = reverted
check "s2: ... and runs 1.0.0 again, confirmed" runs node-1 1.0.0
check "s2: ... the final report says node-1 runs 1.0.0+3" \
        test "$(q get "$final" nodes.node-1.version)" = 1.0.0+3
check "s2: node-1's device swapped three times (0.9.0->1.0.0, ->2.0.0, ->1.0.0)" \
        test "$(gw_report_field "$work/node-1.json" swaps)" = 3
echo "  (node-2 in the final report: $(q get "$final" nodes.node-2.state); its states: $(states node-2 s2))"

# ---- 3. 1.0.0 again: both run it (their image hash says so), nothing is written ---------------
swaps1=$(gw_report_field "$work/node-1.json" swaps)
manifest s3 false 1.0.0 1.0.0+3
final=$(wait_final s3)
check "s3: the deployment succeeds (got $(q get "$final" state) $(q get "$final" error.message))" \
        test "$(q get "$final" state)" = success
for n in node-1 node-2; do
        check "s3: $n is unchanged in the final report" \
                test "$(q get "$final" "nodes.$n.unchanged")" = True -o \
                "$(q get "$final" "nodes.$n.unchanged")" = true
done
check "s3: gatewayd says node-1 already runs it" \
        grep -q "node-1: already runs app-node-1 1.0.0+3 (its protocol says so); not flashed" \
        "$work/gatewayd.log"
timeout 5 sh -c "printf 'report\\n' >'$work/node-1.ctl'"
sleep 0.5
check "s3: node-1's device was not swapped again ($(gw_report_field "$work/node-1.json" swaps) swaps)" \
        test "$(gw_report_field "$work/node-1.json" swaps)" = "$swaps1"

if [ "$failures" -ne 0 ]; then
        echo "--- gatewayd log (last 30 lines) ---"
        tail -n 30 "$work/gatewayd.log"
        exit 1
fi
exit 0
