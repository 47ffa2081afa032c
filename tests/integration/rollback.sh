#!/usr/bin/env bash
# Rollback by reflashing the previous image from the store, end to end over MQTT with simulated
# YMODEM nodes: after v1 is on two nodes, an atomic deployment of v2 in which one node fails
# (the simulator cancels mid-transfer) reverts that node and the node that already took v2,
# both ending with v1 byte for byte and the final report failed with the original error and
# per-node reverted states, one rollback at a time as policy.parallel says; without atomic only
# the failing node reverts; a node with no previous image just fails; policy.canary flashes the
# first node alone, and the others only once it succeeded; with a node's retries, a cancelled
# transfer is run again and the atomic deployment succeeds, and a cancel during the wait stops it.
set -u

: "${GW_SRC:?GW_SRC must name the source directory}"
E2E_NAME=rollback
# shellcheck source=lib.sh
. "$GW_SRC/tests/integration/lib.sh"

gw="gw-e2e-rollback"
prefix=gatewayd/$gw
baud=921600
mkdir -p "$work/www" "$work/state"
gw_start_broker "$work"
gw_start_http "$work/www"
for n in 1 2 3; do
        # The 'C' prompt comes often, so that a reflash right after a failure starts at once.
        gw_start_sim "node-$n" "$work" "$baud" --control "$work/node-$n.ctl" --c-interval 100
done
"$GWM" keygen --type ed25519 --out "$work/release" >/dev/null ||
        { echo "FAIL: gwmanifest keygen"; exit 1; }

ymodem_config 3 "start-timeout-ms: 3000"

watch_prefix
"$GWD" -c "$work/gatewayd.yaml" 2>"$work/gatewayd.log" &
gwpid=$!
GW_PIDS+=("$gwpid")

seq_no=$(date +%s)
expires=$(date -u -d '+1 day' +%Y-%m-%dT%H:%M:%SZ)
# manifest ID ATOMIC VERSION NODE...: app-NODE VERSION (www/app-NODE-VERSION.bin, made here) to
# each NODE, one node at a time in the order given ($PARALLEL at a time, and policy.canary
# $CANARY, when set).
manifest() {
        local id=$1 atomic=$2 v=$3 n f
        shift 3
        seq_no=$((seq_no + 1))
        {
                printf 'kind: gatewayd/manifest\nformat: 1\nid: %s\nsequence: %s\n' "$id" "$seq_no"
                printf 'expires: %s\npolicy: { parallel: %s, atomic: %s%s }\nimages:\n' "$expires" \
                        "${PARALLEL:-1}" "$atomic" "${CANARY:+, canary: $CANARY}"
                for n in "$@"; do
                        f=app-$n-$v.bin
                        [ -f "$work/www/$f" ] || head -c $((6000 + RANDOM % 3000)) /dev/urandom >"$work/www/$f"
                        echo "  - name: app-$n"
                        echo "    version: $v"
                        echo "    targets: { node: $n }"
                        echo "    protocol: ymodem"
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
# holds NODE VERSION: the last file NODE received completely is app-NODE-VERSION.bin, and it
# is that image byte for byte.
holds() {
        local last
        last=$(python3 - "$work/$1.report" <<'PY'
import json, sys
ok = [j for j in map(json.loads, open(sys.argv[1])) if j.get("result") == "ok"]
print(ok[-1]["file"] if ok else "")
PY
)
        [ "$last" = "app-$1-$2.bin" ] &&
                cmp -s "$work/www/app-$1-$2.bin" "$work/$1.out/app-$1-$2.bin"
}
# arm NODE [N]: the node cancels its next transfer after data block N (default 2).
arm() { timeout 5 sh -c "printf 'cancel-after ${2:-2}\\n' >'$work/$1.ctl'" || fail "cannot arm $1"; }
states() { q states "$work/sub.log" "$prefix/nodes/$1/status" "$2"; }

# ---- 1. v1 on node-1 and node-2 ---------------------------------------------------------------
manifest r1 false 1.0.0 node-1 node-2
final=$(wait_final r1)
check "r1: v1 reaches both nodes (got $(q get "$final" state))" test "$(q get "$final" state)" = success
check "r1: node-1 holds v1" holds node-1 1.0.0
check "r1: node-2 holds v1" holds node-2 1.0.0

# ---- 2. Atomic v2: node-2 fails after node-1 took v2; both go back to v1 ---------------------
arm node-2
manifest r2 true 2.0.0 node-1 node-2
final=$(wait_final r2)
check "r2 atomic: the deployment fails" test "$(q get "$final" state)" = failed
check "r2 atomic: the error is node-2's original failure, flash-failed (got '$(q get "$final" error.code)': $(q get "$final" error.message))" \
        test "$(q get "$final" error.code)" = flash-failed
for n in node-1 node-2; do
        check "r2 atomic: $n is reverted in the final report (got $(q get "$final" "nodes.$n.state"))" \
                test "$(q get "$final" "nodes.$n.state")" = reverted
        check "r2 atomic: the final report says $n runs 1.0.0 again" \
                test "$(q get "$final" "nodes.$n.version")" = 1.0.0
        check "r2 atomic: $n holds v1 byte for byte again" holds "$n" 1.0.0
done
check "r2 atomic: node-2 carries its flash-failed error" \
        test "$(q get "$final" nodes.node-2.error.code)" = flash-failed
st=$(states node-1 r2)
check "r2 atomic: node-1 took v2 and was then rolled back ($st)" \
        test "$st" = "queued downloading verifying flashing success reverting reverted"
st=$(states node-2 r2)
check "r2 atomic: node-2 failed flashing and was rolled back ($st)" \
        test "$st" = "queued downloading verifying flashing reverting reverted"
check "r2 atomic: node-1 did receive v2 before it was rolled back" \
        grep -q '"file":"app-node-1-2.0.0.bin".*"result":"ok"' "$work/node-1.report"
# policy.parallel is 1: the rollbacks run one after the other, as the flashing did.
order=$(python3 - "$work/sub.log" "$prefix" <<'PY'
import json, sys
prefix = sys.argv[2] + "/nodes/"
seq = []
for line in open(sys.argv[1]):
    parts = line.rstrip("\n").split(" ", 2)
    if len(parts) < 3 or not parts[1].startswith(prefix):
        continue
    try:
        st = json.loads(parts[2])
    except ValueError:
        continue
    if st.get("deployment") == "r2" and st.get("state") in ("reverting", "reverted"):
        item = parts[1][len(prefix):].split("/")[0] + ":" + st["state"]
        if not seq or seq[-1] != item:
            seq.append(item)
print(" ".join(seq))
PY
)
check "r2 atomic: one rollback at a time under parallel 1 ($order)" \
        test "$order" = "node-2:reverting node-2:reverted node-1:reverting node-1:reverted"

# ---- 3. Not atomic: only the failing node reverts --------------------------------------------
arm node-2
manifest r3 false 3.0.0 node-1 node-2
final=$(wait_final r3)
check "r3: the deployment fails with flash-failed (got $(q get "$final" state) $(q get "$final" error.code))" \
        test "$(q get "$final" state)/$(q get "$final" error.code)" = failed/flash-failed
check "r3: node-1 keeps v3 (success)" test "$(q get "$final" nodes.node-1.state)" = success
check "r3: node-1 holds v3" holds node-1 3.0.0
check "r3: node-2 is reverted" test "$(q get "$final" nodes.node-2.state)" = reverted
check "r3: node-2 holds v1 again (its image before r3)" holds node-2 1.0.0

# ---- 4. No previous image: the node just fails -------------------------------------------------
arm node-3
manifest r4 true 1.0.0 node-3
final=$(wait_final r4)
check "r4: node-3 fails (got $(q get "$final" nodes.node-3.state))" \
        test "$(q get "$final" nodes.node-3.state)" = failed
check "r4: with flash-failed" test "$(q get "$final" error.code)" = flash-failed
st=$(states node-3 r4)
check "r4: node-3 never entered reverting ($st)" test "$st" = "queued downloading verifying flashing failed"
rec=$(cat "$work/state/nodes/node-3.json")
check "r4: node-3's record says 1.0.0 was not written whole ($rec)" \
        test "$(q get "$rec" incomplete_version)" = 1.0.0
inv=$(mosquitto_sub -h 127.0.0.1 -p "$GW_BROKER_PORT" -C 1 -W 5 -t "$prefix/inventory" 2>/dev/null)
check "r4: ... and so does the inventory ($inv)" python3 -c '
import json, sys
n = {x["name"]: x for x in json.loads(sys.argv[1])["nodes"]}
sys.exit(0 if n["node-3"].get("incomplete") == {"image": "app-node-3", "version": "1.0.0"}
         and "incomplete" not in n["node-1"] else 1)' "$inv"

# ---- 5. The journal keeps what a rollback needs ----------------------------------------------
rec=$(cat "$work/state/nodes/node-1.json")
check "journal: node-1, rolled back in r2 and flashed in r3, has nothing half-written ($rec)" \
        test -z "$(q get "$rec" incomplete_version 2>/dev/null)"
check "journal: node-1 runs 3.0.0 and ran 1.0.0 before, with its hash ($rec)" \
        test "$(q get "$rec" version)/$(q get "$rec" previous_version)/$(q get "$rec" previous_sha256)" = \
        "3.0.0/1.0.0/$(sha256sum "$work/www/app-node-1-1.0.0.bin" | cut -d' ' -f1)"

# ---- 6. Canary: the first node alone, the others only once it succeeded ----------------------
# received NODE: how many transfers the node's simulator has finished (ok or not) so far.
received() { wc -l <"$work/$1.report" 2>/dev/null || echo 0; }
n2=$(received node-2)
n3=$(received node-3)
arm node-1
PARALLEL=3 CANARY=1 manifest c1 false 5.0.0 node-1 node-2 node-3
final=$(wait_final c1)
check "c1 canary fails: the deployment fails with node-1's flash-failed (got $(q get "$final" state) $(q get "$final" error.code): $(q get "$final" error.message))" \
        test "$(q get "$final" state)/$(q get "$final" error.code)" = failed/flash-failed
check "c1 canary fails: the report names the canary" \
        eval 'case "$(q get "$final" error.message)" in *"node-1 (canary)"*) true ;; *) false ;; esac'
for n in node-2 node-3; do
        st=$(states "$n" c1)
        check "c1 canary fails: $n was never flashed ($st)" \
                eval 'case "$st" in *flashing*) false ;; *failed) true ;; *) false ;; esac'
done
check "c1 canary fails: no transfer reached node-2 or node-3" \
        test "$(received node-2)/$(received node-3)" = "$n2/$n3"
check "c1 canary fails: node-1 went back to its previous image" \
        test "$(q get "$final" nodes.node-1.state)" = reverted

PARALLEL=3 CANARY=1 manifest c2 false 6.0.0 node-1 node-2 node-3
final=$(wait_final c2)
check "c2 canary succeeds: all three take 6.0.0 (got $(q get "$final" state))" \
        test "$(q get "$final" state)" = success
for n in node-1 node-2 node-3; do
        check "c2 canary succeeds: $n holds 6.0.0" holds "$n" 6.0.0
done
# In the order the broker saw them: node-1's success before any other node flashing.
order=$(grep -n "$prefix/nodes/node-[123]/status .*\"deployment\":\"c2\"" "$work/sub.log" |
        grep -E '"state":"(flashing|success)"' | sed -E 's/^([0-9]+):.*nodes\/(node-[0-9]).*"state":"([a-z]+)".*/\2:\3/' |
        uniq | tr '\n' ' ')
# first WORD: the position of WORD's first appearance in $order (0: not there).
first() { tr ' ' '\n' <<<"$order" | grep -n -x -m 1 "$1" | cut -d: -f1; }
ok1=$(first node-1:success)
f2=$(first node-2:flashing)
f3=$(first node-3:flashing)
check "c2 canary succeeds: node-1 succeeded before node-2 or node-3 started ($order)" \
        test -n "$ok1" -a -n "$f2" -a -n "$f3" -a "${ok1:-0}" -lt "${f2:-0}" -a "${ok1:-0}" -lt "${f3:-0}"

# ---- 7. Node retries: an install that fails on the way is run again --------------------------
# gatewayd again, now with retries: 1 on every node. node-2 cancels its first v7 transfer; the
# second attempt takes it, and the atomic deployment succeeds with no node rolled back.
kill "$gwpid"
wait "$gwpid" 2>/dev/null
ymodem_config 3 "start-timeout-ms: 3000" "" "retries: 1"
"$GWD" -c "$work/gatewayd.yaml" 2>>"$work/gatewayd.log" &
gwpid=$!
GW_PIDS+=("$gwpid")
arm node-2
PARALLEL=2 manifest t1 true 7.0.0 node-1 node-2
final=$(wait_final t1)
check "t1 retries: the atomic deployment succeeds (got $(q get "$final" state) $(q get "$final" error.code): $(q get "$final" error.message))" \
        test "$(q get "$final" state)" = success
check "t1 retries: node-1 holds 7.0.0" holds node-1 7.0.0
check "t1 retries: node-2 holds 7.0.0, taken at the second attempt" holds node-2 7.0.0
check "t1 retries: gatewayd logged the failed first attempt of node-2" \
        grep -q "node-2: attempt 1 of 2 failed (flash-failed)" "$work/gatewayd.log"
st=$(states node-2 t1)
check "t1 retries: node-2 stayed flashing through the retry, then success ($st)" \
        test "$st" = "queued downloading verifying flashing success"
check "t1 retries: node-2's status said it was at attempt 2" \
        grep -q "$prefix/nodes/node-2/status .*\"deployment\":\"t1\".*\"attempt\":2" "$work/sub.log"
check "t1 retries: no node was rolled back" \
        test "$(q get "$final" nodes.node-1.state)/$(q get "$final" nodes.node-2.state)" = success/success

# Cancelled while node-2 waits for its second attempt: the deployment ends cancelled at once,
# and node-2 is not written again.
arm node-2
log_lines=$(wc -l <"$work/gatewayd.log")
PARALLEL=2 manifest t2 false 8.0.0 node-2
gw_wait_for 20 sh -c "tail -n +$((log_lines + 1)) '$work/gatewayd.log' | grep -q 'node-2: attempt 1 of 2 failed'" ||
        fail "t2: node-2's first attempt did not fail"
mosquitto_pub -h 127.0.0.1 -p "$GW_BROKER_PORT" -q 1 -t "$prefix/cancel" -m '{"id":"t2"}'
final=$(wait_final t2)
check "t2 cancelled during the retry wait: ends failed, cancelled (got $(q get "$final" state) $(q get "$final" error.code))" \
        test "$(q get "$final" state)/$(q get "$final" error.code)" = failed/cancelled
sleep 1.5 # past the retry's time: nothing may start then
check "t2 cancelled during the retry wait: no second attempt started" \
        eval '! tail -n +$((log_lines + 1)) "$work/gatewayd.log" | grep -q "node-2: attempt 2 of 2"'
check "t2 cancelled during the retry wait: node-2 received no v8 whole" \
        eval '! grep -q "app-node-2-8.0.0.bin.*\"result\":\"ok\"" "$work/node-2.report"'

# Atomic, retries on node-1 only: node-1 fails once and waits for its retry; meanwhile node-2
# (no retries) fails and halts the deployment. node-1 does not start again: it ends with its own
# failure and goes back to 7.0.0, as node-2 does.
kill "$gwpid"
wait "$gwpid" 2>/dev/null
ymodem_config 3 "start-timeout-ms: 3000"
sed -i 's/^  - name: node-1$/&\n    retries: 1/' "$work/gatewayd.yaml"
"$GWD" --check-config "$work/gatewayd.yaml" >/dev/null 2>&1 || fail "t3: configuration refused"
"$GWD" -c "$work/gatewayd.yaml" 2>>"$work/gatewayd.log" &
gwpid=$!
GW_PIDS+=("$gwpid")
log_lines=$(wc -l <"$work/gatewayd.log")
# node-1 fails at its first block, node-2 at its fifth: node-1 is waiting when node-2 fails.
arm node-1 1
arm node-2 5
PARALLEL=2 manifest t3 true 9.0.0 node-1 node-2
final=$(wait_final t3)
check "t3 halted during node-1's retry wait: the deployment fails (got $(q get "$final" state))" \
        test "$(q get "$final" state)" = failed
check "t3: node-1 failed once and waited for its retry" \
        eval 'tail -n +$((log_lines + 1)) "$work/gatewayd.log" | grep -q "node-1: attempt 1 of 2 failed"'
check "t3: node-1 never started a second attempt" \
        eval '! tail -n +$((log_lines + 1)) "$work/gatewayd.log" | grep -q "node-1: attempt 2 of 2"'
check "t3: both nodes went back to 7.0.0 (got $(q get "$final" nodes.node-1.state)/$(q get "$final" nodes.node-2.state))" \
        test "$(q get "$final" nodes.node-1.state)/$(q get "$final" nodes.node-2.state)" = reverted/reverted
check "t3: node-1 holds 7.0.0 again" holds node-1 7.0.0
check "t3: node-2 holds 7.0.0 again" holds node-2 7.0.0

if [ "$failures" -ne 0 ]; then
        echo "--- gatewayd log (last 40 lines) ---"
        tail -n 40 "$work/gatewayd.log"
        exit 1
fi
exit 0
