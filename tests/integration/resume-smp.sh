#!/usr/bin/env bash
# A node's write resumed after the gateway loses power: two SMP nodes (smp-sim, each keeping
# what it received of an upload while gatewayd is gone, as a device that does not reset does)
# take a 160 KiB image each; gatewayd is killed with SIGKILL (a power cut) at random moments of
# the writes, several times, and started again on the retained desired state. Each restarted
# install continues from the offset the device reports (the status says resumed_from, the log
# names the bytes the journal had confirmed), and in the end every node runs exactly its image,
# confirmed, or is reported failed: never success with another image. GW_RESUME_SEED=N replays.
set -u

: "${GW_SRC:?GW_SRC must name the source directory}"
E2E_NAME=resume-smp
# shellcheck source=lib.sh
. "$GW_SRC/tests/integration/lib.sh"

SIM=$GW_BUILD/tools/sim/smp-sim
MKIMG=$GW_SRC/tools/sim/mcuboot-image.py
PY=/usr/bin/python3
if [ ! -x "$SIM" ]; then
        echo "SKIP: tools/sim/smp-sim was not built (libcbor development files missing)"
        exit 77
fi
seed=${GW_RESUME_SEED:-$$}
RANDOM=$seed
echo "resume-smp: seed $seed (replay with GW_RESUME_SEED=$seed)"

gw="gw-e2e-resume"
prefix=gatewayd/$gw
baud=460800
mkdir -p "$work/www" "$work/state"
gw_start_broker "$work"
gw_start_http "$work/www"
"$GWM" keygen --type ed25519 --out "$work/release" >/dev/null || { echo "FAIL: keygen"; exit 1; }
for n in 1 2; do
        "$PY" "$MKIMG" --version 0.9.0 --size 9000 --seed $((n * 10)) "$work/node-$n-0.9.0.bin"
        "$PY" "$MKIMG" --version 1.0.0 --size 163840 --seed $((n * 10 + 1)) \
                "$work/www/app-node-$n.bin"
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
"$GWD" --check-config "$work/gatewayd.yaml" >/dev/null 2>"$work/check-config.log" ||
        { echo "FAIL: configuration refused"; cat "$work/check-config.log"; exit 1; }
watch_prefix

{
        printf 'kind: gatewayd/manifest\nformat: 1\nid: r1\nsequence: %s\n' "$(date +%s)"
        printf 'expires: %s\npolicy: { parallel: 2 }\nimages:\n' \
                "$(date -u -d '+1 day' +%Y-%m-%dT%H:%M:%SZ)"
        for n in 1 2; do
                f=app-node-$n.bin
                echo "  - name: app-node-$n"
                echo "    version: 1.0.0"
                echo "    targets: { node: node-$n }"
                echo "    protocol: smp"
                echo "    size: $(stat -c %s "$work/www/$f")"
                echo "    sha256: $(sha256sum "$work/www/$f" | cut -d' ' -f1)"
                echo "    url: $f"
        done
} >"$work/www/r1.yaml"
"$GWM" sign --key "$work/release" "$work/www/r1.yaml" >/dev/null
mosquitto_pub -h 127.0.0.1 -p "$GW_BROKER_PORT" -q 1 -r -t "$prefix/deploy" \
        -m "{\"id\":\"r1\",\"manifest_url\":\"http://127.0.0.1:$GW_HTTP_PORT/r1.yaml\"}"

start_gatewayd() {
        "$GWD" -c "$work/gatewayd.yaml" 2>>"$work/gatewayd.log" &
        gwpid=$!
        GW_PIDS+=("$gwpid")
}
# bytes N: the bytes node-N last reported as written in this deployment.
bytes() {
        q last "$work/sub.log" "$prefix/nodes/node-$1/status" 2>/dev/null |
                "$PY" -c 'import json,sys
try:
    p = json.loads(sys.stdin.read())
    print(p.get("bytes", 0) if p.get("state") == "flashing" else 0)
except ValueError:
    print(0)'
}

# ---- Power cuts mid-write ------------------------------------------------------------------------
kills=0 last=0
for round in 1 2 3; do
        start_gatewayd
        # A random moment of the writes: once either node got another 15 to 30 % of its image
        # further than at the last cut (so every round writes for a second or more).
        target=$((last + (RANDOM % 16 + 15) * 163840 / 100))
        # Polled (up to 60 s): the status topics say how far each node got.
        for ((i = 0; i < 600; i++)); do
                b1=$(bytes 1)
                b2=$(bytes 2)
                [ "${b1:-0}" -gt "$target" ] || [ "${b2:-0}" -gt "$target" ] && break
                q final "$work/sub.log" "$prefix/deployments/r1" >/dev/null 2>&1 && break
                sleep 0.1
        done
        if q final "$work/sub.log" "$prefix/deployments/r1" >/dev/null 2>&1; then
                echo "  (round $round: the deployment ended before the cut)"
                break
        fi
        echo "  (round $round: power cut at node-1 ${b1:-0} / node-2 ${b2:-0} bytes, target $target)"
        last=$target
        kill -KILL "$gwpid"
        wait "$gwpid" 2>/dev/null
        kills=$((kills + 1))
done

# ---- And then to the end -------------------------------------------------------------------------
start_gatewayd
gw_wait_for 120 q final "$work/sub.log" "$prefix/deployments/r1" >/dev/null
final=$(q final "$work/sub.log" "$prefix/deployments/r1")
check "power cut $kills time(s) mid-write: the deployment ends (got '$(q get "$final" state)')" \
        test -n "$(q get "$final" state)"

# runs NODE: the device runs the image's own SHA-256 TLV hash, confirmed, no swap pending.
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
runs() {
        local f=$work/node-$1.json before
        before=$(wc -l <"$f")
        timeout 5 sh -c "printf 'report\\n' >'$work/node-$1.ctl'" || return 1
        gw_wait_for 5 sh -c "[ \$(wc -l <'$f') -gt $before ]" || return 1
        [ "$(gw_report_field "$f" slot0_hash)/$(gw_report_field "$f" slot0_confirmed)" = \
                "$(tlv_hash "$work/www/app-node-$1.bin")/true" ]
}
for n in 1 2; do
        st=$(q get "$final" "nodes.node-$n.state")
        if [ "$st" = success ]; then
                check "node-$n: reported success and runs exactly its image, confirmed" runs "$n"
        else
                check "node-$n: not success, so reported failed with a reason ($st: $(q get "$final" "nodes.node-$n.error.message"))" \
                        test "$st" = failed -a -n "$(q get "$final" "nodes.node-$n.error.message")"
        fi
done
if [ "$kills" -gt 0 ]; then
        check "a restarted install continued where the device was (resumed_from in a status)" \
                grep -q '"resumed_from":[1-9]' "$work/sub.log"
        check "gatewayd logged the resumption with the bytes its journal had confirmed" \
                grep -qE "resuming at [0-9]+ of [0-9]+ bytes \([0-9]+ were confirmed before the interruption\)" \
                "$work/gatewayd.log"
fi
check "the state directory holds no temporary files" \
        test -z "$(find "$work/state" -name '*.tmp*' 2>/dev/null)"
stop_within gatewayd 10 >/dev/null
[ "$failures" -eq 0 ]
