#!/usr/bin/env bash
# End to end over MQTT to USB DFU nodes: gatewayd runs beneath the umockdev DFU emulator
# (tools/sim/dfu-sim). Two DFU 1.1 boards told apart by serial take their images in one signed
# deployment, each checked by the protocol's identify before flashing (an image requiring the
# reported usb-id) and after (state checking); an image whose hardware map names another usb-id
# than the board reports fails node-incompatible with nothing flashed on any node, and so does a
# .dfu file whose suffix names another board; a DfuSe board
# takes its image at an address offset, read back before it leaves DFU mode (option verify),
# then a vendor .dfu file (a DfuSe container) whose
# elements land where the file says; a board running its application is detached and found
# again at its port, though its DFU-mode ids are those of two other boards; a deployment
# stopped after one board took its image and run again does not write that board again but
# checks it. Flash dumps are compared byte for byte.
# All four boards are on one emulator (the DfuSe one given its own personality with --device),
# under one gatewayd: the daemon tells the DFU 1.1 and the DfuSe board apart on the same bus.
set -u

: "${GW_SRC:?GW_SRC must name the source directory}"
E2E_NAME=deploy-dfu
# shellcheck source=lib.sh
. "$GW_SRC/tests/integration/lib.sh"

require_dfu_sim

gw="gw-e2e-dfu"
prefix=gatewayd/$gw
mkdir -p "$work/www" "$work/state"
gw_start_broker "$work"
gw_start_http "$work/www"
"$GWM" keygen --type ed25519 --out "$work/release" >/dev/null ||
        { echo "FAIL: gwmanifest keygen"; exit 1; }

watch_prefix

# start_sim NAME [OPTIONS...]: a dfu-sim serving until stopped; waits for its env file.
sim_pid=
start_sim() {
        local name=$1 i
        shift
        rm -f "$work/$name.env"
        "$SIM" --env-file "$work/$name.env" --control "$work/$name.ctl" \
                --report "$work/$name.json" --dump "$work/$name.dump" "$@" \
                >/dev/null 2>"$work/$name.log" &
        sim_pid=$!
        GW_PIDS+=("$sim_pid")
        for i in $(seq 1 200); do
                [ -s "$work/$name.env" ] && return 0
                sleep 0.05
        done
        gw_die "dfu-sim $name did not come up"
}
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

# config FILE NODE:USB:SERIAL...: gatewayd.yaml with one dfu node per argument (NODE-SERIAL,
# the board with that serial and usb-id).
config() {
        local file=$1 spec node usb s
        shift
        cat >"$file" <<CONF
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
CONF
        for spec in "$@"; do
                node=${spec%%:*}
                s=${spec##*:}
                usb=${spec#*:}
                usb=${usb%:*}
                cat >>"$file" <<CONF
  - name: $node-$s
    transport: { type: usb, usb: "$usb", serial: $s }
    protocol: { type: dfu, alt: 0 }
CONF
        done
        "$GWD" --check-config "$file" >/dev/null 2>"$work/check-config.log" || {
                if grep -qi "usb" "$work/check-config.log"; then
                        echo "SKIP: gatewayd refuses a usb node (built without the usb transport?):"
                        cat "$work/check-config.log"
                        exit 77
                fi
                echo "FAIL: the test configuration is refused:"
                cat "$work/check-config.log"
                exit 1
        }
}

gwpid=
start_gw() {
        # shellcheck disable=SC2046
        env $(cat "$work/$2.env") "$GWD" -c "$1" 2>>"$work/gatewayd.log" &
        gwpid=$!
        GW_PIDS+=("$gwpid")
}

seq_no=$(date +%s)
expires=$(date -u -d '+1 day' +%Y-%m-%dT%H:%M:%SZ)
# head_ ID: a manifest body's start with the next sequence number.
head_() {
        seq_no=$((seq_no + 1))
        printf 'kind: gatewayd/manifest\nformat: 1\nid: %s\nsequence: %s\nexpires: %s\n' \
                "$1" "$seq_no" "$expires"
        printf 'policy: { parallel: 2 }\nimages:\n'
}
# img NAME VERSION NODE FILE [HARDWARE [OPTIONS]]
img() {
        local f=$work/www/$4
        echo "  - name: $1"
        echo "    version: $2"
        echo "    targets: { node: $3 }"
        [ -n "${5:-}" ] && echo "    hardware: $5"
        [ -n "${6:-}" ] && echo "    options: $6"
        echo "    protocol: dfu"
        echo "    size: $(stat -c %s "$f")"
        echo "    sha256: $(sha256sum "$f" | cut -d' ' -f1)"
        echo "    url: $4"
}
sign() { "$GWM" sign --key "$work/release" "$1" >/dev/null; }
deploy_url() {
        mosquitto_pub -h 127.0.0.1 -p "$GW_BROKER_PORT" -q 1 -r -t "$prefix/deploy" \
                -m "{\"id\":\"$1\",\"manifest_url\":\"http://127.0.0.1:$GW_HTTP_PORT/$1.yaml\"}"
}
wait_final() {
        gw_wait_for 30 q final "$work/sub.log" "$prefix/deployments/$1" >/dev/null
        q final "$work/sub.log" "$prefix/deployments/$1"
}
# blocks NAME: data DNLOADs the emulator NAME has seen so far (its report, written on demand).
blocks() {
        local before
        before=$(stat -c %Y.%s "$work/$1.json" 2>/dev/null)
        printf 'report\n' >"$work/$1.ctl"
        gw_wait_for 5 sh -c "[ \"\$(stat -c %Y.%s '$work/$1.json' 2>/dev/null)\" != '$before' ]" ||
                sleep 0.5
        python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["totals"]["data_blocks"])' \
                "$work/$1.json"
}
# per_board NAME: "SERIAL:PERSONALITY:DATA_BLOCKS ..." from the report blocks NAME last asked for.
per_board() {
        python3 -c 'import json,sys
print(" ".join("%s:%s:%d" % (d["serial"], d["personality"], d["data_blocks"])
               for d in json.load(open(sys.argv[1]))["devices"]))' "$work/$1.json"
}

# ---- 1. Two DFU 1.1 boards, one deployment ---------------------------------------------------
# A and B take the command line's personality (DFU 1.1), C its own (DfuSe); dumps in that order.
# D runs its application (run-time mode, 1d50:6088) and shows up as 1d50:6089, the ids A and B
# have, once detached: its node names no dfu-usb, so gatewayd must find it again at its port.
start_sim dfu --serial A --serial B --device dfuse,serial=C --device runtime,serial=D
config "$work/gw.yaml" dfu:1d50:6089:A dfu:1d50:6089:B dfuse:0483:df11:C rt:1d50:6088:D
start_gw "$work/gw.yaml" dfu

head -c 5000 /dev/urandom >"$work/www/a1.bin"
head -c 7321 /dev/urandom >"$work/www/b1.bin"
{
        head_ d1
        # usb-id and dfu-version are not in the node's configuration: only identify supplies them.
        img fw-a 1.0.0 dfu-A a1.bin '{ usb-id: "1d50:6089", dfu-version: "1.10" }'
        img fw-b 1.0.0 dfu-B b1.bin
} >"$work/www/d1.yaml"
sign "$work/www/d1.yaml"
deploy_url d1
final=$(wait_final d1)
check "DFU 1.1: d1 ends success (got $(q get "$final" state) $(q get "$final" error.code) $(q get "$final" error.message))" \
        test "$(q get "$final" state)" = success
for n in A B; do
        check "DFU 1.1: dfu-$n is success in the final report" \
                test "$(q get "$final" "nodes.dfu-$n.state")" = success
        st=$(q states "$work/sub.log" "$prefix/nodes/dfu-$n/status" d1)
        check "DFU 1.1: dfu-$n went through flashing then checking ($st)" \
                test "$st" = "queued downloading verifying flashing checking success"
done
check "DFU 1.1: the identify of dfu-A was logged with the usb-id it reports" \
        grep -q "dfu-A: identify: usb-id = 1d50:6089" "$work/gatewayd.log"

# ---- 2. An image for another board: node-incompatible, nothing flashed on any node -----------
blocks_before=$(blocks dfu)
head -c 3000 /dev/urandom >"$work/www/a2.bin"
head -c 3000 /dev/urandom >"$work/www/b2.bin"
{
        head_ d2
        img fw-b 2.0.0 dfu-B b2.bin
        img fw-a 2.0.0 dfu-A a2.bin '{ usb-id: "0483:df11" }'
} >"$work/www/d2.yaml"
sign "$work/www/d2.yaml"
deploy_url d2
final=$(wait_final d2)
check "usb-id mismatch: d2 ends failed" test "$(q get "$final" state)" = failed
check "usb-id mismatch: the error is node-incompatible (got '$(q get "$final" error.code)')" \
        test "$(q get "$final" error.code)" = node-incompatible
msg=$(q get "$final" error.message)
check "usb-id mismatch: the message names the node and the key ($msg)" \
        eval 'case $msg in *dfu-A*usb-id*) true ;; *) false ;; esac'
blocks_after=$(blocks dfu)
check "usb-id mismatch: no data block reached any board ($blocks_before -> $blocks_after)" \
        test "$blocks_before" = "$blocks_after" -a -n "$blocks_after"
flashing=$(grep -c "\"state\":\"flashing\",\"deployment\":\"d2\"" "$work/sub.log")
check "usb-id mismatch: no node was reported flashing in d2" test "$flashing" -eq 0

# ---- 2b. A .dfu file whose DFU suffix names another board, B listed first: nothing flashed ---
# The protocol reads each image before any node is written (check_image): without that, A would
# take its image and B fail only when its turn came.
if command -v dfu-suffix >/dev/null; then
        blocks_before=$(blocks dfu)
        head -c 3000 /dev/urandom >"$work/www/b2b.dfu"
        dfu-suffix -v 1234 -p 5678 -a "$work/www/b2b.dfu" >/dev/null
        {
                head_ d2b
                img fw-a 2.0.0 dfu-A a2.bin
                img fw-b 2.0.0 dfu-B b2b.dfu
        } >"$work/www/d2b.yaml"
        sign "$work/www/d2b.yaml"
        deploy_url d2b
        final=$(wait_final d2b)
        msg=$(q get "$final" error.message)
        check "suffix for another board: d2b ends failed, node-incompatible (got $(q get "$final" state) $(q get "$final" error.code): $msg)" \
                test "$(q get "$final" state)" = failed -a "$(q get "$final" error.code)" = node-incompatible
        check "suffix for another board: the message names the node and the ids" \
                eval 'case $msg in *dfu-B*1234:5678*1d50:6089*) true ;; *) false ;; esac'
        blocks_after=$(blocks dfu)
        check "suffix for another board: no data block reached any board ($blocks_before -> $blocks_after)" \
                test "$blocks_before" = "$blocks_after" -a -n "$blocks_after"
else
        echo "SKIP: the .dfu suffix case (2b): dfu-suffix (package dfu-util) is not installed"
fi

# ---- 3. The DfuSe board beside them, its image at an address offset --------------------------
blocks_before=$(blocks dfu)
boards_before=$(per_board dfu)
head -c 20000 /dev/urandom >"$work/www/c1.bin"
{
        head_ d3
        img fw-c 1.0.0 dfuse-C c1.bin '{ usb-id: "0483:df11", dfu-version: "1.1a" }' \
                '{ address: 0x08004000, verify: true }'
} >"$work/www/d3.yaml"
sign "$work/www/d3.yaml"
deploy_url d3
final=$(wait_final d3)
check "DfuSe: d3 ends success (got $(q get "$final" state) $(q get "$final" error.code) $(q get "$final" error.message))" \
        test "$(q get "$final" state)" = success
check "DfuSe: the check found the board again after it left DFU mode" \
        grep -q "dfuse-C: link open again" "$work/gatewayd.log"
check "DfuSe: image option verify read the 20000 bytes back before the board left" \
        grep -q "dfuse-C: dfu: verified 20000 bytes" "$work/gatewayd.log"
st=$(q states "$work/sub.log" "$prefix/nodes/dfuse-C/status" d3)
check "DfuSe: dfuse-C went through flashing then checking ($st)" \
        test "$st" = "queued downloading verifying flashing checking success"
blocks_after=$(blocks dfu)
boards_after=$(per_board dfu)
c_before=${boards_before##*C:dfuse:}
c_before=${c_before%% *}
c_after=${boards_after##*C:dfuse:}
c_after=${c_after%% *}
check "DfuSe: its data blocks went to the DfuSe board alone ($boards_before -> $boards_after)" \
        test "${boards_before% C:*}" = "${boards_after% C:*}" -a "$blocks_after" -gt "$blocks_before" \
        -a "$((c_after - c_before))" -eq "$((blocks_after - blocks_before))"
# ---- 3b. A vendor .dfu file (a DfuSe container of two elements, made by dfuse-pack) ----------
# Each element lands where it says, in sectors 4 and 5, away from c1.bin (checked at the end);
# the node's progress counts the elements' bytes, not the file's.
have_dfuse_pack=0
if command -v dfuse-pack >/dev/null; then
        have_dfuse_pack=1
        head -c 3000 /dev/urandom >"$work/e1.bin"
        head -c 2000 /dev/urandom >"$work/e2.bin"
        dfuse-pack -b 0x08010000:"$work/e1.bin" -b 0x08020000:"$work/e2.bin" -D 0x0483:0xdf11 \
                "$work/www/c2.dfu" >/dev/null
        {
                head_ d3b
                img fw-c 1.1.0 dfuse-C c2.dfu '{ usb-id: "0483:df11" }'
        } >"$work/www/d3b.yaml"
        sign "$work/www/d3b.yaml"
        deploy_url d3b
        final=$(wait_final d3b)
        check "DfuSe file: d3b ends success (got $(q get "$final" state) $(q get "$final" error.code) $(q get "$final" error.message))" \
                test "$(q get "$final" state)" = success
        check "DfuSe file: dfuse-C reported 5000 of 5000 bytes (the elements, not the file)" \
                grep -q "$prefix/nodes/dfuse-C/status .*\"deployment\":\"d3b\".*\"bytes\":5000,\"total\":5000" \
                "$work/sub.log"
        blocks dfu >/dev/null # the report per_board reads next
else
        echo "SKIP: the .dfu deployment (3b): dfuse-pack (package dfu-util) is not installed"
fi

# ---- 4. A board in run-time mode: detached, found again at its port, flashed ----------------
boards_before=$(per_board dfu)
head -c 6000 /dev/urandom >"$work/www/d1.bin"
{
        head_ d4
        img fw-d 1.0.0 rt-D d1.bin
} >"$work/www/d4.yaml"
sign "$work/www/d4.yaml"
deploy_url d4
final=$(wait_final d4)
check "run-time board: d4 ends success (got $(q get "$final" state) $(q get "$final" error.code) $(q get "$final" error.message))" \
        test "$(q get "$final" state)" = success
check "run-time board: gatewayd opened it again after DFU_DETACH" \
        grep -q "rt-D: link open again" "$work/gatewayd.log"
blocks dfu >/dev/null
boards_after=$(per_board dfu)
check "run-time board: no data block went to A, B or C ($boards_before -> $boards_after)" \
        test "${boards_before% D:*}" = "${boards_after% D:*}"
# ---- 4b. A .dfu file for other ids to the board in run-time mode: its DFU-mode ids are known only
# once detached, so the install refuses it there: node-incompatible, nothing written to D.
if command -v dfu-suffix >/dev/null; then
        blocks dfu >/dev/null
        boards_before=$(per_board dfu)
        head -c 3000 /dev/urandom >"$work/www/d4b.dfu"
        dfu-suffix -v 1234 -p 5678 -a "$work/www/d4b.dfu" >/dev/null
        {
                head_ d4b
                img fw-d 2.0.0 rt-D d4b.dfu
        } >"$work/www/d4b.yaml"
        sign "$work/www/d4b.yaml"
        deploy_url d4b
        final=$(wait_final d4b)
        msg=$(q get "$final" error.message)
        check "run-time board, suffix for other ids: d4b ends failed, node-incompatible (got $(q get "$final" state) $(q get "$final" error.code): $msg)" \
                test "$(q get "$final" state)" = failed -a "$(q get "$final" error.code)" = node-incompatible
        check "run-time board, suffix for other ids: the message says whose ids" \
                eval 'case $msg in *rt-D*1234:5678*) true ;; *) false ;; esac'
        blocks dfu >/dev/null
        boards_after=$(per_board dfu)
        check "run-time board, suffix for other ids: no data block was written ($boards_before -> $boards_after)" \
                test "$boards_before" = "$boards_after"
fi
# ---- 5. Interrupted after A took its image, B half-way: run again, A is not written again ----
head -c 2048 /dev/urandom >"$work/www/a5.bin"
head -c 180000 /dev/urandom >"$work/www/b5.bin"
{
        head_ d5
        img fw-a 5.0.0 dfu-A a5.bin
        img fw-b 5.0.0 dfu-B b5.bin
} >"$work/www/d5.yaml"
sign "$work/www/d5.yaml"
a_took() { q states "$work/sub.log" "$prefix/nodes/dfu-A/status" d5 | grep -q success; }
deploy_url d5
if gw_wait_for 20 a_took; then
        st_b=$(q states "$work/sub.log" "$prefix/nodes/dfu-B/status" d5)
        stop_pid "$gwpid"
        blocks dfu >/dev/null
        boards_cut=$(per_board dfu)
        log_lines=$(wc -l <"$work/gatewayd.log")
        start_gw "$work/gw.yaml" dfu
        final=$(wait_final d5)
        check "run again: d5 ends success after the restart (got $(q get "$final" state) $(q get "$final" error.code) $(q get "$final" error.message); B was at '$st_b' when stopped)" \
                test "$(q get "$final" state)" = success
        check "run again: dfu-A, which took its image before, is not written again" \
                eval 'tail -n +$((log_lines + 1)) "$work/gatewayd.log" | grep -q "dfu-A: took fw-a 5.0.0 before the deployment was interrupted; not flashed again"'
        check "run again: ... but checked by identify, as after a flash" \
                eval 'tail -n +$((log_lines + 1)) "$work/gatewayd.log" | grep -q "dfu-A: checked"'
        blocks dfu >/dev/null
        boards_end=$(per_board dfu)
        a_cut=${boards_cut#A:dfu11:}
        a_cut=${a_cut%% *}
        a_end=${boards_end#A:dfu11:}
        a_end=${a_end%% *}
        check "run again: no data block reached A after the restart ($a_cut -> $a_end)" \
                test -n "$a_end" -a "$a_cut" = "$a_end"
else
        fail "run again: dfu-A never took a5.bin"
fi
stop_pid "$gwpid"
stop_pid "$sim_pid"
check "run again: A's memory holds a5.bin byte for byte" \
        cmp -s -n "$(stat -c %s "$work/www/a5.bin")" "$work/www/a5.bin" "$work/dfu.dump"
check "run again: B's memory holds b5.bin byte for byte" \
        cmp -s -n "$(stat -c %s "$work/www/b5.bin")" "$work/www/b5.bin" "$work/dfu.dump.2"
check "run-time board: D's memory holds d1.bin byte for byte" \
        cmp -s -n "$(stat -c %s "$work/www/d1.bin")" "$work/www/d1.bin" "$work/dfu.dump.4"
tail -c +$((0x4000 + 1)) "$work/dfu.dump.3" >"$work/dfuse.at-offset"
check "DfuSe: the memory at 0x08004000 holds c1.bin byte for byte" \
        cmp -s -n "$(stat -c %s "$work/www/c1.bin")" "$work/www/c1.bin" "$work/dfuse.at-offset"
check "DfuSe: the memory before 0x08004000 was not written" \
        test "$(head -c $((0x4000)) "$work/dfu.dump.3" | tr -d '\377' | wc -c)" -eq 0
if [ "$have_dfuse_pack" = 1 ]; then
        check "DfuSe file: both elements are in memory where the file put them" \
                eval 'cmp -s "$work/e1.bin" <(tail -c +$((0x10000 + 1)) "$work/dfu.dump.3" | head -c 3000) &&
                        cmp -s "$work/e2.bin" <(tail -c +$((0x20000 + 1)) "$work/dfu.dump.3" | head -c 2000)'
fi

if [ "$failures" -ne 0 ]; then
        echo "--- gatewayd log (last 40 lines) ---"
        tail -n 40 "$work/gatewayd.log"
        exit 1
fi
exit 0
