#!/usr/bin/env bash
# gatewayd as systemd's Type=notify service sees it, without systemd: the test listens on
# $NOTIFY_SOCKET itself (sd-listen.py) beside a real broker, an HTTP server and three simulated
# YMODEM nodes. A configuration gatewayd refuses sends no READY=1; a good one sends READY=1 once
# the loop runs, with an idle STATUS=; WATCHDOG_USEC=1 s gives a WATCHDOG=1 every 0.5 s, flashing
# or not; STATUS= follows a real deployment node by node back to idle; and SIGTERM in the middle
# of flashing sends STOPPING=1, exits 0 well inside the unit's TimeoutStopSec, leaves the node
# records saying what was being written (incomplete_*) and the deployment journalled as
# interrupted, and the deployment runs to success after the restart.
set -u

: "${GW_SRC:?GW_SRC must name the source directory}"
E2E_NAME=systemd-notify
# shellcheck source=lib.sh
. "$GW_SRC/tests/integration/lib.sh"

if ! grep -q '^#define GW_HAVE_SYSTEMD 1' "$GW_BUILD/core/gw-config.h" 2>/dev/null; then
        echo "SKIP: built without libsystemd (-Dsystemd=disabled or libsystemd-dev missing)"
        exit 77
fi

gw="gw-e2e-notify"
prefix=gatewayd/$gw
baud=115200
mkdir -p "$work/www" "$work/state"
gw_start_broker "$work"
gw_start_http "$work/www"
for n in 1 2 3; do
        gw_start_sim "node-$n" "$work" "$baud"
done
"$GWM" keygen --type ed25519 --out "$work/release" >/dev/null ||
        { echo "FAIL: gwmanifest keygen"; exit 1; }
ymodem_config 3
watch_prefix

# The service manager's socket.
notify_sock=$work/notify.sock
notify_log=$work/notify.log
: >"$notify_log"
coproc LISTEN { exec python3 "$GW_SRC/tests/integration/sd-listen.py" notify "$notify_sock" "$notify_log"; }
GW_PIDS+=("$LISTEN_PID")
read -r -t 10 ready <&"${LISTEN[0]}"
[ "${ready:-}" = ready ] || { echo "FAIL: the notification listener did not start"; exit 1; }

# notes: the datagrams so far, one per line, newlines inside shown as " | ".
notes() { python3 -c 'import json,sys
for l in open(sys.argv[1]):
    try: print(json.loads(l)["msg"].replace("\n"," | "))
    except ValueError: pass  # a line being written
' "$notify_log"; }
has_note() { notes >"$work/notes.txt" && grep -qE "$1" "$work/notes.txt"; }

# ---- 1. A refused configuration: no READY=1 -------------------------------------------------
sed 's/release.pub/missing.pub/' "$work/gatewayd.yaml" >"$work/bad.yaml"
NOTIFY_SOCKET=$notify_sock timeout 10 "$GWD" -c "$work/bad.yaml" 2>"$work/bad.log"
rc=$?
check "a refused configuration: gatewayd exits 1 (got $rc)" test $rc -eq 1
check "... and never says READY=1" bash -c "! grep -q READY=1 '$notify_log'"

# ---- 2. Ready, idle, watchdog ------------------------------------------------------------------
gwpid=
start_gw() {
        NOTIFY_SOCKET=$notify_sock WATCHDOG_USEC=1000000 \
                "$GWD" -c "$work/gatewayd.yaml" 2>>"$work/gatewayd.log" &
        gwpid=$!
        GW_PIDS+=("$gwpid")
}
start_gw
check "READY=1 arrives" gw_wait_for 10 has_note 'READY=1'
check "READY=1 comes with an idle STATUS= line ($(notes | grep -m1 READY))" \
        has_note '^READY=1 \| STATUS=Idle: 3 node\(s\), broker 127\.0\.0\.1:[0-9]+ '
check "READY=1 follows the configuration check (gatewayd logged its start first)" \
        grep -q "gatewayd .*: gateway $gw, 3 node(s)" "$work/gatewayd.log"
check "the idle status says the broker is connected" \
        gw_wait_for 10 has_note '^STATUS=Idle: .* connected$|READY=1 .* connected$'
sleep 3
# intervals FROM TO: the gaps between WATCHDOG=1 datagrams received between monotonic times.
intervals() {
        python3 - "$notify_log" "$@" <<'PY'
import json, sys
t = [j["t"] for j in map(json.loads, open(sys.argv[1])) if "WATCHDOG=1" in j["msg"].split("\n")]
lo = float(sys.argv[2]) if len(sys.argv) > 2 else 0
hi = float(sys.argv[3]) if len(sys.argv) > 3 else 1e18
t = [x for x in t if lo <= x <= hi]
gaps = [b - a for a, b in zip(t, t[1:])]
if not gaps:
    print("0 0 0 0")
else:
    print("%d %.3f %.3f %.3f" % (len(t), min(gaps), sum(gaps) / len(gaps), max(gaps)))
PY
}
read -r n_wd min_wd mean_wd max_wd < <(intervals)
check "WATCHDOG=1 every 0.5 s for WATCHDOG_USEC=1000000 ($n_wd keep-alives, gaps min $min_wd mean $mean_wd max $max_wd s)" \
        python3 -c "import sys; n,lo,m,hi=map(float,sys.argv[1:]); sys.exit(not (n >= 5 and 0.45 <= m <= 0.56 and lo >= 0.40 and hi <= 0.75))" \
        "$n_wd" "$min_wd" "$mean_wd" "$max_wd"

# ---- 3. STATUS= through a real deployment -------------------------------------------------------
seq_no=$(date +%s)
expires=$(date -u -d '+1 day' +%Y-%m-%dT%H:%M:%SZ)
# manifest ID SIZE1 SIZE2 SIZE3: www/ID.yaml with app-node-N (SIZEn random bytes) for node-N,
# all three at once, published retained on <prefix>/deploy.
manifest() {
        local id=$1 n f
        shift
        seq_no=$((seq_no + 1))
        {
                printf 'kind: gatewayd/manifest\nformat: 1\nid: %s\nsequence: %s\n' "$id" "$seq_no"
                printf 'expires: %s\npolicy: { parallel: 3 }\nimages:\n' "$expires"
                for n in 1 2 3; do
                        f=$id-node-$n.bin
                        head -c "$1" /dev/urandom >"$work/www/$f"
                        shift
                        printf '  - name: app-node-%s\n    version: %s.%s\n' "$n" "$id" "$n"
                        printf '    targets: { node: node-%s }\n    protocol: ymodem\n' "$n"
                        printf '    size: %s\n' "$(stat -c %s "$work/www/$f")"
                        printf '    sha256: %s\n' "$(sha256sum "$work/www/$f" | cut -d' ' -f1)"
                        printf '    url: %s\n' "$f"
                done
        } >"$work/www/$id.yaml"
        "$GWM" sign --key "$work/release" "$work/www/$id.yaml" >/dev/null ||
                { echo "FAIL: gwmanifest sign $id"; exit 1; }
        mosquitto_pub -h 127.0.0.1 -p "$GW_BROKER_PORT" -q 1 -r -t "$prefix/deploy" \
                -m "{\"id\":\"$id\",\"manifest_url\":\"http://127.0.0.1:$GW_HTTP_PORT/$id.yaml\"}"
}
final_state() { q get "$(q final "$work/sub.log" "$prefix/deployments/$1" 2>/dev/null)" state; }

# At 115200 baud (about 11 KB/s) the nodes end one after the other, about 1 s apart.
manifest d1 12000 24000 36000
gw_wait_for 30 q final "$work/sub.log" "$prefix/deployments/d1" >/dev/null
check "d1 ends success (got $(final_state d1))" test "$(final_state d1)" = success
gw_wait_for 5 has_note '^STATUS=Idle' >/dev/null
statuses=$(notes | sed -n 's/^\(READY=1 | \)\{0,1\}STATUS=//p')
echo "  the status lines:"
sed 's/^/    /' <<<"$statuses"
check "STATUS= names the deployment while it runs" grep -q '^Deployment d1: ' <<<"$statuses"
check "STATUS= counts the nodes: 0 of 3 done, 3 busy" \
        grep -q '^Deployment d1: 0 of 3 nodes done, 3 busy$' <<<"$statuses"
check "... then 1 of 3" grep -q '^Deployment d1: 1 of 3 nodes done, 2 busy$' <<<"$statuses"
check "... then 2 of 3" grep -q '^Deployment d1: 2 of 3 nodes done, 1 busy$' <<<"$statuses"
check "... and idle again after the deployment" \
        test "$(tail -n 1 <<<"$statuses" | cut -c1-5)" = Idle:
check "the counts only ever go up" python3 - "$statuses" <<'PY'
import re, sys
done = [int(m.group(1)) for m in re.finditer(r"^Deployment d1: (\d+) of 3", sys.argv[1], re.M)]
sys.exit(done != sorted(done))
PY
# The loop kept its beat while three nodes were flashed from it.
t_from=$(python3 -c 'import json,sys
for l in open(sys.argv[1]):
    j=json.loads(l)
    if "Deployment d1" in j["msg"]: print(j["t"]); break' "$notify_log")
t_to=$(python3 -c 'import json,sys
t=None
for l in open(sys.argv[1]):
    j=json.loads(l)
    if "Deployment d1" in j["msg"]: t=j["t"]
print(t)' "$notify_log")
read -r n_wd min_wd mean_wd max_wd < <(intervals "$t_from" "$t_to")
check "WATCHDOG=1 kept coming while flashing ($n_wd keep-alives, largest gap $max_wd s)" \
        python3 -c "import sys; n,hi=float(sys.argv[1]),float(sys.argv[2]); sys.exit(not (n >= 3 and hi <= 0.75))" \
        "$n_wd" "$max_wd"

# ---- 4. SIGTERM in the middle of flashing ------------------------------------------------------
# About 6 to 12 s of flashing: the stop lands well inside it.
manifest d2 64000 96000 128000
flashing() {
        grep -qE "^[01] $prefix/nodes/node-3/status \{\"state\":\"flashing\",\"deployment\":\"d2\".*\"progress\":[1-9]" \
                "$work/sub.log"
}
check "d2 is flashing" gw_wait_for 20 flashing
t0=$(date +%s.%N)
kill -TERM "$gwpid"
gw_wait_pid "$gwpid" 30
rc=$?
t_stop=$(python3 -c "import sys; print('%.2f' % ($(date +%s.%N) - $t0))")
check "SIGTERM mid-flash: gatewayd exits 0 (got $rc) in $t_stop s, well inside TimeoutStopSec=30" \
        python3 -c "import sys; sys.exit(not ($rc == 0 and $t_stop < 10))"
check "STOPPING=1 was sent, with a status naming the interrupted deployment" \
        has_note '^STOPPING=1 \| STATUS=Stopping \(Terminated\): deployment d2 interrupted'
check "the journal says d2 was interrupted" \
        test "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["state"])' \
                "$work/state/deployments/d2.json" 2>/dev/null)" = interrupted
half=0
for n in 1 2 3; do
        if [ "$(q get "$(cat "$work/state/nodes/node-$n.json")" incomplete_version)" = "d2.$n" ]; then
                half=$((half + 1))
        fi
done
check "the node records name d2's image as half-written ($half of 3 nodes)" test $half -ge 1
start_gw
gw_wait_for 60 q final "$work/sub.log" "$prefix/deployments/d2" >/dev/null
check "after the restart d2 runs again and ends success (got $(final_state d2))" \
        test "$(final_state d2)" = success
for n in 1 2 3; do
        check "node-$n holds d2's image byte for byte" \
                cmp -s "$work/www/d2-node-$n.bin" "$work/node-$n.out/app-node-$n-d2.$n.bin"
done
check "READY=1 again after the restart" test "$(notes | grep -c '^READY=1')" -eq 2
stop_within "final stop" 10 || fail "gatewayd did not stop cleanly at the end"

if [ "$failures" -ne 0 ]; then
        echo "--- notifications ---"
        notes | tail -n 40
        echo "--- gatewayd log (last 30 lines) ---"
        tail -n 30 "$work/gatewayd.log"
        exit 1
fi
exit 0
