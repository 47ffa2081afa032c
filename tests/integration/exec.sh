#!/usr/bin/env bash
# The exec protocol end to end: gwflash runs tools/sim/fpga-flasher (a stand-in for a vendor's
# FPGA flasher) over transport none, successful, failing, crashing, hanging and cancelled; then
# gatewayd flashes an exec node beside a YMODEM node from a signed MQTT deployment, reports a
# failing tool's last lines in the node's status, and refuses a manifest image whose options
# would set the command; then openFPGALoader, when installed, programs a simulated FPGA through
# tools/sim/xvc-sim, a Xilinx Virtual Cable server.
set -u

: "${GW_SRC:?GW_SRC must name the source directory}"
E2E_NAME=exec
# shellcheck source=lib.sh
. "$GW_SRC/tests/integration/lib.sh"

GWF=$GW_BUILD/tools/gwflash
FF=$GW_BUILD/tools/sim/fpga-flasher
for b in "$GWF" "$FF"; do
        [ -x "$b" ] || { echo "FAIL: $b was not built"; exit 1; }
done
"$GWF" --help | grep -q . || { echo "FAIL: gwflash does not run"; exit 1; }
if ! "$GWF" -t none -p x -P exec -o 'command=["true"]' --identify >/dev/null 2>&1; then
        echo "SKIP: gwflash was built without transport none or protocol exec"
        exit 77
fi

# bitstream FILE VERSION SIZE: a bitstream for the simulated FPGA: a header naming its version,
# the sync word, SIZE random bytes.
bitstream() {
        {
                printf 'SIMFPGA design top\nversion=%s\n' "$2"
                printf '\xaa\x99\x55\x66'
                head -c "$3" /dev/urandom
        } >"$1"
}
# holds FLASH FILE: the flash starts with FILE.
holds() { cmp -s -n "$(stat -c %s "$2")" "$2" "$1"; }
# json_field LINE KEY: a member of a one-line JSON object.
json_field() { q get "$1" "$2"; }
# last_json OUT EVENT: the last line of gwflash --json output OUT with that event.
last_json() { grep "\"event\":\"$2\"" "$1" | tail -n 1; }
# report_field FILE RESULT KEY: KEY of the last fpga-flasher report line with that result.
report_field() {
        python3 - "$@" <<'PY'
import json, sys
v = None
for line in open(sys.argv[1]):
    try:
        j = json.loads(line)
    except ValueError:
        continue
    if j.get("result") == sys.argv[2]:
        v = j.get(sys.argv[3])
print("" if v is None else (json.dumps(v) if isinstance(v, (list, dict)) else v))
PY
}
# pid_gone PID: the process has ended (waits up to 3 s); a zombie whose parent is gone (init
# reaps it, or, in a container, may not) has ended too.
pid_gone() {
        local i
        for i in $(seq 1 30); do
                [ -e "/proc/$1" ] || return 0
                grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null && return 0
                sleep 0.1
        done
        return 1
}

PROGRESS='Writing: \[[# ]*\] *([0-9]+)%'
flash=$work/fpga.flash
rep=$work/flasher.jsonl
# cmd EXTRA...: the command option for gwflash: fpga-flasher on $flash with EXTRA arguments,
# then the image.
cmd() {
        local extra="" a
        for a in "$@"; do extra+="\"$a\","; done
        printf 'command=["%s","--flash","%s","--report","%s",%s"{image}"]' "$FF" "$flash" "$rep" \
                "$extra"
}

# ---- 1. gwflash: a bitstream programmed, with progress ------------------------------------------
bitstream "$work/top-1.bit" 1.0.0 300000
t0=$SECONDS
timeout 30 "$GWF" -t none -p fpga0 -P exec -o "$(cmd --rate 400000)" -o "progress=$PROGRESS" \
        --json "$work/top-1.bit" >"$work/g1.out" 2>"$work/g1.err"
st=$?
check "gwflash: exit status 0 (got $st)" test "$st" -eq 0
check "gwflash: the simulated flash holds the bitstream" holds "$flash" "$work/top-1.bit"
res=$(last_json "$work/g1.out" result)
check "gwflash: --json result ok, all bytes" \
        test "$(json_field "$res" result)/$(json_field "$res" bytes)" = "ok/$(stat -c %s "$work/top-1.bit")"
mid=$(grep '"event":"progress"' "$work/g1.out" | python3 -c '
import json, sys
t = [json.loads(l) for l in sys.stdin]
print(sum(1 for e in t if 0 < e["bytes"] < e["total"]))')
check "gwflash: progress seen between 0 and the end ($mid events)" test "$mid" -ge 2
check "gwflash: {image} reached the tool as one argument, the file's own path" \
        test "$(report_field "$rep" ok argv | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1])')" = "$work/top-1.bit"
check "gwflash: the whole run stayed under 10 s" test $((SECONDS - t0)) -lt 10

# ---- 2. identify through identify-command ----------------------------------------------------
idcmd=$(printf 'identify-command=["%s","--flash","%s","--idcode"]' "$FF" "$flash")
timeout 30 "$GWF" -t none -p fpga0 -P exec -o "$(cmd)" -o "$idcmd" --identify --json \
        >"$work/g2.out" 2>"$work/g2.err"
st=$?
ev=$(last_json "$work/g2.out" identify)
check "identify: exit status 0 (got $st)" test "$st" -eq 0
check "identify: idcode=0x0362d093 from the tool's output" \
        test "$(json_field "$ev" facts.idcode)" = 0x0362d093
check "identify: the version of the design in the flash (1.0.0)" \
        test "$(json_field "$ev" facts.version)" = 1.0.0
check "identify: family: sim-fpga (the 'key: value' form)" \
        test "$(json_field "$ev" facts.family)" = sim-fpga

# ---- 3. Failures ------------------------------------------------------------------------------------
# run_fail NAME EXPECT [gwflash options...]: gwflash exits 1 and its --json error contains EXPECT.
run_fail() {
        local name=$1 expect=$2 st res err
        shift 2
        timeout 30 "$GWF" -t none -p fpga0 -P exec "$@" --json "$work/top-1.bit" \
                >"$work/$name.out" 2>"$work/$name.err"
        st=$?
        res=$(last_json "$work/$name.out" result)
        err=$(json_field "$res" error)
        # A tool that cannot even start fails install() itself: gwflash says so on stderr.
        [ -n "$res" ] || err=$(grep -m1 '^error: ' "$work/$name.err")
        check "$name: gwflash exits 1 (got $st)" test "$st" -eq 1
        check "$name: the error says '$expect' (got '$err')" \
                eval '[[ "$err" == *"$expect"* ]]'
        check "$name: the error is one bounded line" test "${#err}" -lt 256
}
bitstream "$work/top-2.bit" 2.0.0 300000
run_fail fail-at "fpga-flasher: exit status 1:" -o "$(cmd --fail-at 40 --rate 2000000)" \
        -o "progress=$PROGRESS"
err=$(json_field "$(last_json "$work/fail-at.out" result)" error)
check "fail-at: the tool's last lines are in the error" \
        eval '[[ "$err" == *"Writing: ["*"] "*"% | error: programming failed at 40% (0x"* ]]'
check "fail-at: progress was reported up to the failure" \
        grep -q '"event":"progress","bytes":[1-9]' "$work/fail-at.out"
run_fail crash "fpga-flasher: killed by SIGSEGV" -o "$(cmd --crash --rate 2000000)"
head -c 10000 /dev/urandom >"$work/junk.bin"
run_fail no-sync "exit status 1: Simulated FPGA: IDCODE 0x0362d093, flash 1048576 bytes | error: no sync word" \
        -o "$(printf 'command=["%s","--flash","%s","%s"]' "$FF" "$flash" "$work/junk.bin")"
run_fail missing "cannot run /nonexistent/flasher: no such program" \
        -o 'command=["/nonexistent/flasher","{image}"]'

# A tool that prints nothing and never exits, with a helper in its process group.
: >"$rep"
t0=$SECONDS
run_fail hang "fpga-flasher: no result after 1.5 s, and no output at all" \
        -o "$(cmd --hang)" -o timeout-ms=1500 -o kill-timeout-ms=500
check "hang: gwflash gave up within 8 s" test $((SECONDS - t0)) -lt 8
p1=$(report_field "$rep" hanging pid)
p2=$(report_field "$rep" hanging helper)
check "hang: the tool (pid $p1) is gone" pid_gone "${p1:-1}"
check "hang: its helper in the same process group (pid $p2) is gone" pid_gone "${p2:-1}"

# A tool that ignores SIGTERM: SIGKILL after kill-timeout-ms.
run_fail stubborn "fpga-flasher: no result after 1 s: " \
        -o "$(cmd --stall-at 20 --ignore-term --rate 2000000)" -o timeout-ms=1000 \
        -o kill-timeout-ms=300 -o "progress=$PROGRESS"
err=$(json_field "$(last_json "$work/stubborn.out" result)" error)
check "stubborn: the last line is the progress bar where it stalled" \
        eval '[[ "$err" == *"| Writing: ["*"]  19%" ]]'
check "stubborn: the tool is gone" pid_gone "$(report_field "$rep" stalled pid)"

# Cancelled: SIGINT to gwflash while the tool runs.
: >"$rep"
"$GWF" -t none -p fpga0 -P exec -o "$(cmd --stall-at 30 --rate 2000000)" -o "progress=$PROGRESS" \
        --json "$work/top-1.bit" >"$work/cancel.out" 2>"$work/cancel.err" &
gpid=$!
GW_PIDS+=("$gpid")
gw_wait_for 10 test -n "$(report_field "$rep" stalled pid)"
fpid=$(report_field "$rep" stalled pid)
kill -INT "$gpid"
gw_wait_pid "$gpid" 10
st=$?
err=$(json_field "$(last_json "$work/cancel.out" result)" error)
check "cancel: gwflash exits 1 (got $st)" test "$st" -eq 1
check "cancel: the error says cancelled (got '$err')" test "$err" = cancelled
check "cancel: the tool (pid $fpid) is gone" pid_gone "${fpid:-1}"

# Usage: a command that is not a list is refused before anything runs.
"$GWF" -t none -p fpga0 -P exec -o 'command=fpga-flasher --flash x {image}' "$work/top-1.bit" \
        >/dev/null 2>"$work/usage.err"
st=$?
check "usage: a command that is no list: exit status 2 (got $st)" test "$st" -eq 2
check "usage: the reason names the option" grep -q "option command: expected a list" \
        "$work/usage.err"
"$GWF" -t none -p fpga0 -P exec -o 'command=["x","{imag}"]' "$work/top-1.bit" \
        >/dev/null 2>"$work/usage2.err"
st=$?
check "usage: an unknown placeholder: exit status 2 (got $st)" test "$st" -eq 2
check "usage: the reason names it" grep -q "unknown placeholder {imag}" "$work/usage2.err"

# ---- 4. gatewayd: an MQTT deployment to an exec node beside a YMODEM node --------------------------
gw="gw-e2e-exec"
prefix=gatewayd/$gw
baud=921600
mkdir -p "$work/www" "$work/state"
gw_start_broker "$work"
gw_start_http "$work/www"
gw_start_sim mcu-1 "$work" "$baud"
"$GWM" keygen --type ed25519 --out "$work/release" >/dev/null ||
        { echo "FAIL: gwmanifest keygen"; exit 1; }
gflash=$work/gw-fpga.flash
grep_=$work/gw-flasher.jsonl
gflash2=$work/gw-fpga2.flash
grep2=$work/gw-flasher2.jsonl
# The 7-series FPGA behind a Xilinx Virtual Cable, for openFPGALoader (section 5 and d4),
# taking the time its TCK period says.
OFL=$(command -v openFPGALoader || true)
XVC=$GW_BUILD/tools/sim/xvc-sim
XC7=$GW_SRC/tools/sim/xc7-bitstream.py
xvc_port=
if [ -n "$OFL" ]; then
        "$XVC" --pace --port-file "$work/xvc.port" --report "$work/xvc.json" \
                --config-dump "$work/xvc.config" 2>"$work/xvc.log" &
        GW_PIDS+=($!)
        gw_wait_for 5 test -s "$work/xvc.port" || { echo "FAIL: xvc-sim did not start"; exit 1; }
        xvc_port=$(cat "$work/xvc.port")
fi
OFL_PROGRESS='SRAM: \[[= ]*\] *([0-9.]+)%'
OFL_FACTS='^[[:space:]]*(idcode|manufacturer|family|model|irlength)[[:space:]]+(.+)$'
cat >"$work/gatewayd.yaml" <<CONF
gateway:
  id: $gw
state-dir: state
log-level: info
mqtt:
  host: 127.0.0.1
  port: $GW_BROKER_PORT
trust:
  public-keys: [release.pub]
nodes:
  - name: fpga-1
    transport: { type: none }
    protocol:
      type: exec
      command: [$FF, --flash, $gflash, --report, $grep_, --rate, "1000000", "{image}"]
      identify-command: [$FF, --flash, $gflash, --idcode]
      progress: 'Writing: \[[# ]*\] *([0-9]+)%'
      timeout-ms: 20000
  - name: fpga-2
    transport: { type: none }
    protocol:
      type: exec
      command: [$FF, --flash, $gflash2, --rate, "40000", --report, $grep2, --report-start,
                "{image}"]
  - name: mcu-1
    transport: { type: uart, port: $work/mcu-1.tty, baud: $baud }
    protocol: { type: ymodem }
CONF
if [ -n "$OFL" ]; then
        # The store names images by their hash: openFPGALoader is told the format.
        cat >>"$work/gatewayd.yaml" <<CONF
  - name: fpga-x
    transport: { type: none }
    protocol:
      type: exec
      command: [$OFL, -c, xvc-client, --ip, 127.0.0.1, --port, "$xvc_port", --freq, "2000000",
                --file-type, bit, "{image}"]
      identify-command: [$OFL, -c, xvc-client, --ip, 127.0.0.1, --port, "$xvc_port", --detect]
      identify-pattern: '$OFL_FACTS'
      progress: '$OFL_PROGRESS'
      timeout-ms: 30000
CONF
fi
"$GWD" --check-config "$work/gatewayd.yaml" >/dev/null 2>"$work/check-config.log" ||
        { echo "FAIL: the test configuration is refused:"; cat "$work/check-config.log"; exit 1; }
# A command with an unknown placeholder: refused where the node is configured.
sed 's/--report-start,/--report-start, "{imag}",/' "$work/gatewayd.yaml" >"$work/bad.yaml"
"$GWD" --check-config "$work/bad.yaml" >/dev/null 2>"$work/bad-config.log"
st=$?
check "config: an unknown placeholder in a command is refused by --check-config (status $st)" \
        test "$st" -ne 0
check "config: the reason names the node, the option and the placeholder" \
        grep -q "node fpga-2: protocol exec: option command: item 9: unknown placeholder {imag}" \
        "$work/bad-config.log"
watch_prefix
"$GWD" -c "$work/gatewayd.yaml" 2>"$work/gatewayd.log" &
gwpid=$!
GW_PIDS+=("$gwpid")

seq_no=$(date +%s)
expires=$(date -u -d '+1 day' +%Y-%m-%dT%H:%M:%SZ)
head_() {
        seq_no=$((seq_no + 1))
        printf 'kind: gatewayd/manifest\nformat: 1\nid: %s\nsequence: %s\nexpires: %s\n' \
                "$1" "$seq_no" "$expires"
        printf 'policy: { parallel: 2 }\nimages:\n'
}
# img NAME VERSION NODE PROTOCOL FILE [HARDWARE]: one image (HARDWARE: "idcode: 0x...").
img() {
        local f=$work/www/$5
        printf '  - name: %s\n    version: %s\n    targets: { node: %s }\n    protocol: %s\n' \
                "$1" "$2" "$3" "$4"
        if [ -n "${6:-}" ]; then printf '    hardware: { %s }\n' "$6"; fi
        printf '    size: %s\n    sha256: %s\n    url: %s\n' "$(stat -c %s "$f")" \
                "$(sha256sum "$f" | cut -d' ' -f1)" "$5"
}
sign() { "$GWM" sign --key "$work/release" "$1" >/dev/null; }
deploy() {
        mosquitto_pub -h 127.0.0.1 -p "$GW_BROKER_PORT" -q 1 -r -t "$prefix/deploy" \
                -m "{\"id\":\"$1\",\"manifest_url\":\"http://127.0.0.1:$GW_HTTP_PORT/$1.yaml\"}"
}
wait_final() {
        gw_wait_for 30 q final "$work/sub.log" "$prefix/deployments/$1" >/dev/null
        q final "$work/sub.log" "$prefix/deployments/$1"
}

bitstream "$work/www/fpga-2.0.0.bit" 2.0.0 600000
head -c 7000 /dev/urandom >"$work/www/app-1.bin"
{
        head_ d1
        img fpga-top 2.0.0 fpga-1 exec fpga-2.0.0.bit "idcode: 0x0362d093"
        img app 1.0 mcu-1 ymodem app-1.bin
} >"$work/www/d1.yaml"
sign "$work/www/d1.yaml"
deploy d1
final=$(wait_final d1)
check "mqtt: d1 ends success (got '$(q get "$final" state)')" test "$(q get "$final" state)" = success
check "mqtt: fpga-1 succeeded" test "$(q get "$final" nodes.fpga-1.state)" = success
check "mqtt: mcu-1 beside it succeeded" test "$(q get "$final" nodes.mcu-1.state)" = success
check "mqtt: the simulated FPGA's flash holds fpga-top 2.0.0" holds "$gflash" "$work/www/fpga-2.0.0.bit"
check "mqtt: mcu-1 holds its image" cmp -s "$work/www/app-1.bin" "$work/mcu-1.out/app-1.0.bin"
check "mqtt: fpga-1's flashing progress was reported between 0 and the end" \
        python3 - "$work/sub.log" "$prefix/nodes/fpga-1/status" <<'PY'
import json, sys
n = 0
for line in open(sys.argv[1]):
    p = line.rstrip("\n").split(" ", 2)
    if len(p) == 3 and p[1] == sys.argv[2]:
        j = json.loads(p[2])
        if j.get("state") == "flashing" and 0 < (j.get("bytes") or 0) < (j.get("total") or 0):
            n += 1
sys.exit(0 if n >= 1 else 1)
PY
check "mqtt: after flashing, identify read version 2.0.0 back" \
        grep -q "fpga-1: checked: it answers with version 2.0.0" "$work/gatewayd.log"
tool_runs=$(wc -l <"$grep_")

# d2: a bitstream the FPGA refuses (no sync word) for both FPGAs: fpga-1 is rolled back to
# 2.0.0 by running the tool again; fpga-2, flashed for the first time, has nothing to go back
# to and stays failed, with the tool's last lines in its status.
head -c 50000 /dev/urandom >"$work/www/fpga-3.0.0.bit"
{
        head_ d2
        img fpga-top 3.0.0 fpga-1 exec fpga-3.0.0.bit
        img fpga-b 3.0.0 fpga-2 exec fpga-3.0.0.bit
} >"$work/www/d2.yaml"
sign "$work/www/d2.yaml"
deploy d2
final=$(wait_final d2)
check "mqtt: d2 ends failed" test "$(q get "$final" state)" = failed
for n in fpga-1 fpga-2; do
        check "mqtt: $n's error is flash-failed (got '$(q get "$final" nodes.$n.error.code)')" \
                test "$(q get "$final" nodes.$n.error.code)" = flash-failed
        m=$(q get "$final" nodes.$n.error.message)
        check "mqtt: d2's report for $n carries the exit status and the tool's last lines" \
                eval '[[ "$m" == "fpga-flasher: exit status 1: "*"error: no sync word (AA 99 55 66) in the first 4096 bytes"* ]]'
done
check "mqtt: fpga-1 was rolled back (got '$(q get "$final" nodes.fpga-1.state)')" \
        test "$(q get "$final" nodes.fpga-1.state)" = reverted
check "mqtt: the tool ran for 3.0.0 (refused it) and again for the rollback (took 2.0.0)" \
        test "$(wc -l <"$grep_")/$(grep -c '"result":"ok"' "$grep_")" = "$((tool_runs + 2))/2"
check "mqtt: fpga-1's flash holds 2.0.0" holds "$gflash" "$work/www/fpga-2.0.0.bit"
st=$(python3 - "$work/sub.log" "$prefix/nodes/fpga-2/status" d2 <<'PY'
import json, sys
m = ""
for line in open(sys.argv[1]):
    p = line.rstrip("\n").split(" ", 2)
    if len(p) == 3 and p[1] == sys.argv[2]:
        j = json.loads(p[2])
        if j.get("deployment") == sys.argv[3] and j.get("state") == "failed":
            m = (j.get("error") or {}).get("message", "")
print(m)
PY
)
echo "  (fpga-2's status message: $st)"
check "mqtt: fpga-2's status carries the exit status" \
        eval '[[ "$st" == *"fpga-flasher: exit status 1: "* ]]'
check "mqtt: fpga-2's status carries the tool's last lines" \
        eval '[[ "$st" == *"| error: no sync word (AA 99 55 66) in the first 4096 bytes"* ]]'
check "gatewayd: still running" kill -0 "$gwpid"

# d3: an image whose options set the command: refused before anything runs.
runs_before=$(wc -l <"$grep_")
{
        head_ d3
        img fpga-top 4.0.0 fpga-1 exec fpga-2.0.0.bit
        printf '    options: { command: /bin/touch, timeout-ms: 5000 }\n'
} >"$work/www/d3.yaml"
sign "$work/www/d3.yaml"
deploy d3
final=$(wait_final d3)
check "mqtt: d3 (options set command) is rejected" test "$(q get "$final" state)" = rejected
check "mqtt: d3's error is node-incompatible (got '$(q get "$final" error.code)')" \
        test "$(q get "$final" error.code)" = node-incompatible
check "mqtt: the reason says command is the node's own" \
        grep -q "option 'command' is the node's own" "$work/gatewayd.log"
check "mqtt: nothing ran for d3" test "$(wc -l <"$grep_")" -eq "$runs_before"
check "mqtt: fpga-1's flash still holds 2.0.0 after d3" holds "$gflash" "$work/www/fpga-2.0.0.bit"
check "gatewayd: still running after d3" kill -0 "$gwpid"
echo "  (the fpga-flasher ran $tool_runs time(s) for d1, $runs_before in all)"

# d6: cancelled while fpga-2's tool writes: the tool is stopped, the node ends cancelled.
bitstream "$work/www/fpga-6.bit" 6.0.0 400000
{ head_ d6; img fpga-b 6.0.0 fpga-2 exec fpga-6.bit; } >"$work/www/d6.yaml"
sign "$work/www/d6.yaml"
: >"$grep2"
deploy d6
gw_wait_for 20 test -n "$(report_field "$grep2" started pid)"
tpid=$(report_field "$grep2" started pid)
sleep 0.5
mosquitto_pub -h 127.0.0.1 -p "$GW_BROKER_PORT" -q 1 -t "$prefix/cancel" -m '{"id":"d6"}'
final=$(wait_final d6)
check "mqtt: d6 cancelled mid-write ends failed/cancelled (got '$(q get "$final" state)/$(q get "$final" error.code)')" \
        test "$(q get "$final" state)/$(q get "$final" error.code)" = failed/cancelled
check "mqtt: d6: the tool (pid $tpid) is gone" pid_gone "${tpid:-1}"
check "mqtt: d6: the tool never finished" test "$(report_field "$grep2" ok pid)" = ""
check "gatewayd: still running after d6" kill -0 "$gwpid"

# d5: an image for another FPGA (the identify-command's idcode decides): refused before anything
# is written.
{
        head_ d5
        img fpga-top 5.0.0 fpga-1 exec fpga-2.0.0.bit "idcode: 0x41111043"
} >"$work/www/d5.yaml"
sign "$work/www/d5.yaml"
deploy d5
final=$(wait_final d5)
check "mqtt: d5 (another idcode) fails node-incompatible (got '$(q get "$final" state)/$(q get "$final" nodes.fpga-1.error.code)')" \
        test "$(q get "$final" state)/$(q get "$final" nodes.fpga-1.error.code)" = failed/node-incompatible
check "mqtt: d5's reason names the idcode the tool reported" \
        eval '[[ "$(q get "$final" nodes.fpga-1.error.message)" == *"needs hardware idcode 0x41111043, the node reports 0x0362d093"* ]]'
check "mqtt: nothing ran for d5 but identify" test "$(wc -l <"$grep_")" -eq "$runs_before"

# ---- 5. openFPGALoader through a Xilinx Virtual Cable ------------------------------------------
if [ -z "$OFL" ]; then
        echo "SKIP (part): openFPGALoader is not installed: nothing flashed through it"
else
        echo "  ($("$OFL" -V 2>&1 | head -n 1) against tools/sim/xvc-sim on port $xvc_port)"
        python3 "$XC7" --selftest --out "$work/www/xc7-1.bit" --frames 1500 --seed 7 \
                --frames-out "$work/xc7-1.frames" || { echo "FAIL: xc7-bitstream.py"; exit 1; }
        # d4: gatewayd runs openFPGALoader for fpga-x: identify (its --detect), the image's
        # idcode checked, the bitstream loaded into the FPGA's SRAM, identify again.
        {
                head_ d4
                img xc7-top 1.0.0 fpga-x exec xc7-1.bit "idcode: 0x0362d093"
        } >"$work/www/d4.yaml"
        sign "$work/www/d4.yaml"
        deploy d4
        final=$(wait_final d4)
        check "openFPGALoader/mqtt: d4 ends success (got '$(q get "$final" state)': $(q get "$final" nodes.fpga-x.error.message))" \
                test "$(q get "$final" state)" = success
        check "openFPGALoader/mqtt: the simulated FPGA is configured (DONE)" \
                test "$(q get "$(cat "$work/xvc.json")" done)" = True
        check "openFPGALoader/mqtt: it holds the bitstream's frames" \
                cmp -s "$work/xvc.config" "$work/xc7-1.frames"
        check "openFPGALoader/mqtt: the tool's progress bar reached fpga-x's status" \
                python3 - "$work/sub.log" "$prefix/nodes/fpga-x/status" <<'PY'
import json, sys
seen = set()
for line in open(sys.argv[1]):
    p = line.rstrip("\n").split(" ", 2)
    if len(p) == 3 and p[1] == sys.argv[2]:
        j = json.loads(p[2])
        if j.get("state") == "flashing":
            seen.add(j.get("progress"))
sys.exit(0 if any(0 < (x or 0) < 100 for x in seen) else 1)
PY
fi
check "gatewayd: exits 0 on SIGTERM" stop_within gatewayd 10

if [ -n "$OFL" ]; then
        # gwflash: identify through --detect, then the load with progress.
        # At 2 MHz (xvc-sim --pace keeps to the TCK period the tool sets) the load takes long
        # enough for its progress bar, which redraws once a second.
        ofl_cmd() {
                printf 'command=["%s","-c","xvc-client","--ip","127.0.0.1","--port","%s","--freq","2000000","{image}"]' \
                        "$OFL" "$xvc_port"
        }
        ofl_id=$(printf 'identify-command=["%s","-c","xvc-client","--ip","127.0.0.1","--port","%s","--detect"]' \
                "$OFL" "$xvc_port")
        python3 "$XC7" --out "$work/xc7-2.bit" --frames 1500 --seed 8 --frames-out "$work/xc7-2.frames"
        timeout 60 "$GWF" -t none -p xvc -P exec -o "$(ofl_cmd)" -o "$ofl_id" \
                -o "identify-pattern=$OFL_FACTS" -o "progress=$OFL_PROGRESS" --json \
                "$work/xc7-2.bit" >"$work/ofl.out" 2>"$work/ofl.err"
        st=$?
        ev=$(last_json "$work/ofl.out" identify)
        res=$(last_json "$work/ofl.out" result)
        check "openFPGALoader/gwflash: exit status 0 (got $st: $(json_field "$res" error))" test "$st" -eq 0
        check "openFPGALoader/gwflash: identify: idcode 0x362d093, family 'artix a7 35t'" \
                test "$(json_field "$ev" facts.idcode)/$(json_field "$ev" facts.family)" = "0x362d093/artix a7 35t"
        mid=$(grep '"event":"progress"' "$work/ofl.out" | python3 -c '
import json, sys
t = [json.loads(l) for l in sys.stdin]
print(sum(1 for e in t if 0 < e["bytes"] < e["total"]))')
        check "openFPGALoader/gwflash: progress from its bar while it ran ($mid events)" \
                test "$mid" -ge 1
        check "openFPGALoader/gwflash: DONE, the new frames in the FPGA" \
                eval 'test "$(q get "$(cat "$work/xvc.json")" done)" = True && cmp -s "$work/xvc.config" "$work/xc7-2.frames"'

        # The cable goes away mid-load: the tool's end (an exit status or a signal) and its last
        # lines are the error.
        "$XVC" --port-file "$work/xvc2.port" --disconnect-at 30 2>/dev/null &
        xpid=$!
        GW_PIDS+=("$xpid")
        gw_wait_for 5 test -s "$work/xvc2.port"
        timeout 60 "$GWF" -t none -p xvc -P exec --json -o "$(printf \
                'command=["%s","-c","xvc-client","--ip","127.0.0.1","--port","%s","{image}"]' \
                "$OFL" "$(cat "$work/xvc2.port")")" "$work/xc7-2.bit" >"$work/ofl2.out" 2>&1
        st=$?
        err=$(json_field "$(last_json "$work/ofl2.out" result)" error)
        echo "  (cable gone: $err)"
        check "openFPGALoader/gwflash: cable gone mid-load: exit status 1 (got $st)" test "$st" -eq 1
        check "openFPGALoader/gwflash: cable gone: the error says how the tool ended and its last line" \
                eval '[[ "$err" == "openFPGALoader: "@(killed by SIG*|exit status*)": "?* ]]'

        # A bitstream for another part: the FPGA flags an ID error and stays unconfigured.
        # openFPGALoader 0.10 does not read DONE after an SRAM load over JTAG and exits 0
        # (later versions read the IR capture and the STAT register): exec reports what the
        # tool says, so the FPGA's own state is what tells here.
        python3 "$XC7" --out "$work/xc7-other.bit" --idcode 0x0362c093
        timeout 60 "$GWF" -t none -p xvc -P exec --json -o "$(ofl_cmd)" \
                "$work/xc7-other.bit" >"$work/ofl3.out" 2>&1
        st=$?
        check "openFPGALoader: a bitstream for another part leaves the FPGA unconfigured (ID error)" \
                eval 'gw_wait_for 3 python3 -c "import json,sys; j=json.load(open(sys.argv[1])); sys.exit(0 if j[\"id_error\"] and not j[\"done\"] else 1)" "$work/xvc.json"'
        if [ "$st" -eq 0 ]; then
                echo "  NOTE: openFPGALoader exited 0 for it ($("$OFL" -V 2>&1 | head -n 1)):" \
                        "it does not check DONE; the node's identify cannot tell either (--detect)"
        else
                echo "  (openFPGALoader noticed: exit status $st)"
        fi
fi
gw_cleanup

echo "exec: $failures failure(s)"
[ "$failures" -eq 0 ]
