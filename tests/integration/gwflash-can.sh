#!/bin/bash
# gwflash -t can -P uds over slcan on can-sim's pty: a whole UDS flash (the ECU's flash holds the
# image, the identify line and event name its serial and version, the version after the reset is
# the new one, --json progress and result), and each clear error with exit status 1: the adapter
# not answering (a pty nobody serves, can-sim's adapter ignoring its input), no ECU on the ids,
# security access denied, a negative response by name, each with nothing programmed; then faults
# in the middle of a transfer: a frame lost on the bus (recovered), the ECU falling silent (a
# clear error), the adapter losing its open state (recovered) and the adapter not coming back (a
# clear error).
set -u

: "${GW_BUILD:?GW_BUILD must name the build directory}"
: "${GW_SRC:?GW_SRC must name the source directory}"
# shellcheck source=../../tools/lib/common.sh
. "$GW_SRC/tools/lib/common.sh"
SIM=$GW_BUILD/tools/sim/can-sim
GWFLASH=$GW_BUILD/tools/gwflash
SEEDKEY=$GW_BUILD/tools/sim/uds-seedkey

for prog in timeout cmp python3 od; do
        if ! command -v "$prog" >/dev/null; then
                echo "SKIP: $prog is not installed"
                exit 77
        fi
done
if [ ! -x "$GWFLASH" ]; then
        echo "FAIL: $GWFLASH was not built"
        exit 1
fi
out=$("$GWFLASH" -t can -p /dev/null -P uds /dev/null 2>&1)
case "$out" in
*"unknown transport"*)
        echo "SKIP: gwflash was built without the can transport (-Dtransport-can=disabled)"
        exit 77
        ;;
*"unknown protocol"*)
        echo "SKIP: gwflash was built without the uds protocol (-Dprotocol-uds=disabled)"
        exit 77
        ;;
esac
for b in "$SIM" "$SEEDKEY"; do
        if [ ! -x "$b" ]; then
                echo "FAIL: $b was not built"
                exit 1
        fi
done

sims=()
cases_cleanup() {
        local p
        for p in "${sims[@]}"; do kill "$p" 2>/dev/null; done
        for p in "${sims[@]}"; do timeout 5 tail --pid="$p" -f /dev/null 2>/dev/null; done
}
CASES_NAME=gwflash-can
# shellcheck source=cases.sh
. "$GW_SRC/tests/integration/cases.sh"

ECU=ecu1,tx=0x7e0,rx=0x7e8,serial=ECU-A-0001,version=1.0.0,next-version=1.1.0,hardware=HW-A
# The node's options: the ECU's ids, where the image goes, the contract's seed-to-key program.
UDS=(-P uds -o tx-id=0x7e0 -o rx-id=0x7e8 -o address=0x8000 -o "seedkey-program=$SEEDKEY")

# start_sim NAME [can-sim options...]: can-sim at $work/NAME.tty (report $work/NAME.json, flash
# dumps in $work/NAME.dump/, control FIFO $work/NAME.ctl); waits for its ready line.
start_sim() {
        local name=$1 i
        shift
        mkdir -p "$work/$name.dump"
        "$SIM" --link "$work/$name.tty" --report "$work/$name.json" --dump-dir "$work/$name.dump" \
                --control "$work/$name.ctl" --seed 7 -v "$@" >"$work/$name.sim" 2>"$work/$name.log" &
        sim_pid=$!
        sims+=("$sim_pid")
        for ((i = 0; i < 100; i++)); do
                grep -q '^can-sim: ready' "$work/$name.sim" 2>/dev/null && return 0
                kill -0 "$sim_pid" 2>/dev/null || break
                sleep 0.05
        done
        echo "    can-sim did not get ready:"
        sed 's/^/    /' "$work/$name.log"
        return 1
}

# stop_sim: SIGTERM; the report and the dumps are written as it exits.
stop_sim() {
        kill -TERM "$sim_pid" 2>/dev/null
        gw_wait_pid "$sim_pid" 10
}

# ctl NAME COMMAND: a fault through the control FIFO, taken within its re-read interval.
ctl() {
        timeout 5 sh -c "printf '%s\\n' '$2' >'$work/$1.ctl'" || fail "cannot reach $1's control"
        sleep 0.1
}

# report_now NAME: the simulator writes its report (it also does at exit).
report_now() {
        ctl "$1" report
}

# report NAME EXPR: a value from NAME's report (EXPR indexes the parsed object r).
report() {
        python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' \
                "$work/$1.json" "$2"
}

# gwflash_to OUT SIM [OPTIONS...]: gwflash on SIM's pty; stdout to OUT.out, stderr to OUT.err.
gwflash_to() {
        local out=$1 sim=$2
        shift 2
        timeout 60 "$GWFLASH" -t can -p "$work/$sim.tty" "$@" >"$work/$out.out" 2>"$work/$out.err"
}

# gwflash NAME [OPTIONS...]: gwflash on NAME's pty, its output in NAME.out and NAME.err.
gwflash() {
        gwflash_to "$1" "$@"
}

# gwflash_bg NAME [OPTIONS...]: the same in the background with --json; sets flash_pid.
gwflash_bg() {
        local name=$1
        shift
        timeout 60 "$GWFLASH" -t can -p "$work/$name.tty" --json "$@" >"$work/$name.out" \
                2>"$work/$name.err" &
        flash_pid=$!
}

# progress_past NAME BYTES: waits (up to 20 s) until gwflash's --json progress passed BYTES.
progress_past() {
        local i
        for ((i = 0; i < 400; i++)); do
                python3 - "$work/$1.out" "$2" <<'PY' && return 0
import json, sys
ok = False
for line in open(sys.argv[1]):
    try:
        e = json.loads(line)
    except ValueError:
        continue
    if e.get("event") == "progress" and e["bytes"] >= int(sys.argv[2]):
        ok = True
sys.exit(0 if ok else 1)
PY
                kill -0 "$flash_pid" 2>/dev/null || return 1
                sleep 0.05
        done
        return 1
}

show() {
        sed 's/^/    /' "$work/$1.out" "$work/$1.err" 2>/dev/null | tail -n 20
}

# holds NAME IMAGE: the ECU's flash holds IMAGE at the address 0x8000.
holds() {
        cmp -s -n "$(stat -c %s "$2")" "$2" <(tail -c +$((0x8000 + 1)) "$work/$1.dump/ecu1.bin")
}

# blank NAME: nothing of the ECU's flash was programmed (all 0xff, no block taken).
blank() {
        [ "$(report "$1" 'r["ecus"][0]["bytes_programmed"]')" = 0 ] &&
                [ -z "$(od -An -v -tx1 "$work/$1.dump/ecu1.bin" | tr -s ' \n' '\n\n' |
                        grep -v -x ff | grep -v '^$' | head -n 1)" ]
}

# refused NAME STATUS TEXT: gwflash exited 1 and its error says TEXT (on stderr, or in the
# --json result).
refused() {
        if [ "$2" -ne 1 ]; then
                echo "    gwflash exited with $2, not 1"
                show "$1"
                return 1
        fi
        if ! grep -qF -- "$3" "$work/$1.err" "$work/$1.out"; then
                echo "    the error does not say \"$3\":"
                show "$1"
                return 1
        fi
}

head -c 24000 /dev/urandom >"$work/img.bin"
head -c 65536 /dev/urandom >"$work/big.bin"

# ---- A whole flash --------------------------------------------------------------------------

# (a) --json: the identify event (serial, version), progress, the result; the ECU's flash holds
# the image; afterwards the ECU runs the new version (the identify line says so, as does --json).
case_a() {
        local st
        start_sim a --ecu "$ECU" || return 1
        gwflash a --json "${UDS[@]}" "$work/img.bin"
        st=$?
        gwflash_to a-id a --identify "${UDS[@]}"
        gwflash_to a-idj a --identify --json "${UDS[@]}"
        stop_sim
        if [ "$st" -ne 0 ]; then
                echo "    gwflash exited with $st"
                show a
                return 1
        fi
        python3 - "$work/a.out" 24000 <<'PY' || { show a; return 1; }
import json, sys
ev = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
size = int(sys.argv[2])
ident = [e for e in ev if e["event"] == "identify"]
prog = [e["bytes"] for e in ev if e["event"] == "progress"]
res = [e for e in ev if e["event"] == "result"]
assert ev[0]["event"] == "identify", "identify comes first"
f = ident[0]["facts"]
assert f["serial"] == "ECU-A-0001" and f["version"] == "1.0.0" and f["hardware"] == "HW-A", f
assert f["tx-id"] == "0x7e0" and f["rx-id"] == "0x7e8", f
assert len(prog) >= 2 and prog == sorted(prog) and prog[-1] == size, prog
assert all(e["total"] == size for e in ev if e["event"] == "progress")
assert len(res) == 1 and ev[-1] is res[0], "one result, last"
assert res[0]["result"] == "ok" and res[0]["bytes"] == size and res[0]["total"] == size, res
PY
        holds a "$work/img.bin" || {
                echo "    the ECU's flash does not hold the image at 0x8000"
                return 1
        }
        [ "$(report a 'r["ecus"][0]["version"]')" = 1.1.0 ] || {
                echo "    the ECU runs $(report a 'r["ecus"][0]["version"]') after the reset"
                return 1
        }
        grep -qx 'Node: tx-id=0x7e0, rx-id=0x7e8, serial=ECU-A-0001, version=1.1.0, hardware=HW-A' \
                "$work/a-id.err" || {
                echo "    the identify line after the flash:"
                sed 's/^/    /' "$work/a-id.err"
                return 1
        }
        grep -q '"event":"identify","facts":{.*"serial":"ECU-A-0001","version":"1.1.0"' \
                "$work/a-idj.out" || {
                echo "    the identify event after the flash:"
                sed 's/^/    /' "$work/a-idj.out"
                return 1
        }
        # What the protocol did, as the ECU counted it: one erase of the image's pages, 24
        # blocks, the check routine and the reset.
        [ "$(report a '[r["ecus"][0]["blocks"], r["ecus"][0]["pages_erased"], r["ecus"][0]["services"]["0x11"], r["ecus"][0]["last_crc32"] != 0]')" = "[24, 12, 1, True]" ] || {
                echo "    $(report a 'r["ecus"][0]')"
                return 1
        }
}
check "a whole flash: identify (serial, version), progress, result; the image in flash, 1.1.0 after the reset" \
        case_a

# ---- Clear errors, nothing written ----------------------------------------------------------

# (b) a pty nobody serves: the adapter does not answer.
case_b() {
        local st t0=$SECONDS sp
        if ! command -v socat >/dev/null; then
                echo "    SKIP: socat is not installed (a pty pair nobody serves)"
                return 0
        fi
        socat PTY,link="$work/b.tty",rawer PTY,link="$work/b.other",rawer 2>/dev/null &
        sp=$!
        sims+=("$sp")
        for ((i = 0; i < 100; i++)); do [ -e "$work/b.tty" ] && break; sleep 0.05; done
        gwflash b --json "${UDS[@]}" "$work/img.bin"
        st=$?
        kill "$sp" 2>/dev/null
        refused b "$st" "link lost: slcan adapter $work/b.tty: does not answer (nothing came back for V, C, S6, O within 500 ms)" ||
                return 1
        grep -q '"event":"result","result":"failed","error":"link lost: slcan adapter .*does not answer' \
                "$work/b.out" || {
                echo "    no failed result event:"
                show b
                return 1
        }
        [ $((SECONDS - t0)) -le 5 ] || {
                echo "    took $((SECONDS - t0)) s"
                return 1
        }
}
check "a pty nobody serves: the adapter does not answer, exit 1, within a second" case_b

# (c) can-sim's adapter ignores everything (rebooting): the same, and no frame reached the bus.
case_c() {
        local st
        start_sim c --ecu "$ECU" || return 1
        ctl c "reboot-adapter 20000"
        gwflash c "${UDS[@]}" "$work/img.bin"
        st=$?
        stop_sim
        refused c "$st" "does not answer (nothing came back for V, C, S6, O within 500 ms): not an slcan adapter, or not powered?" ||
                return 1
        [ "$(report c 'r["bus"]["frames"]')" = 0 ] && blank c
}
check "can-sim's adapter silent: the adapter does not answer, nothing on the bus" case_c

# One simulator for the refusals that reach the ECU.
start_sim r --ecu "$ECU" || fail "can-sim for the refusals"

# (d) ids no simulated ECU uses.
case_d() {
        local st
        gwflash_to d r "${UDS[@]}" -o tx-id=0x7e5 -o rx-id=0x7ed "$work/img.bin"
        st=$?
        refused d "$st" "Cannot identify the node: ReadDataByIdentifier: no response within 250 ms: no ECU answers on 0x7ed to requests on 0x7e5" ||
                return 1
        gwflash_to d-json r --json "${UDS[@]}" -o tx-id=0x7e5 -o rx-id=0x7ed "$work/img.bin"
        grep -q '^{"event":"result","result":"failed","error":"ReadDataByIdentifier: no response within 250 ms: no ECU answers on 0x7ed' \
                "$work/d-json.out" || {
                show d-json
                return 1
        }
        report_now r
        [ "$(report r 'r["ecus"][0]["requests"]')" = 0 ]
}
check "no ECU on the ids: said so, exit 1, the ECU got nothing" case_d

# (e) the ECU's secret is not the key program's: invalidKey, nothing erased or written.
case_e() {
        local st
        ctl r "secret ecu1=0x12345678"
        gwflash_to e r "${UDS[@]}" "$work/img.bin"
        st=$?
        ctl r "secret ecu1=0x5a5aa5a5"
        refused e "$st" "SecurityAccess: negative response 0x35 invalidKey" || return 1
        report_now r
        [ "$(report r '[r["ecus"][0]["pages_erased"], r["ecus"][0]["bytes_programmed"]]')" = "[0, 0]" ]
}
check "security access denied (wrong secret): invalidKey by name, nothing erased" case_e

# (f) RequestDownload refused: the NRC by name, nothing programmed.
case_f() {
        local st
        ctl r "nrc ecu1/0x34:0x70"
        gwflash_to f r --json "${UDS[@]}" "$work/img.bin"
        st=$?
        refused f "$st" "RequestDownload: negative response 0x70 uploadDownloadNotAccepted" ||
                return 1
        grep -q '"event":"result","result":"failed","bytes":0,.*"error":"RequestDownload: negative response 0x70 uploadDownloadNotAccepted"' \
                "$work/f.out" || {
                show f
                return 1
        }
        report_now r
        [ "$(report r 'r["ecus"][0]["bytes_programmed"]')" = 0 ]
}
check "RequestDownload answered uploadDownloadNotAccepted: the NRC by name, nothing programmed" \
        case_f

# (g) a TransferData refused: generalProgrammingFailure, named with the block.
case_g() {
        local st
        ctl r "nrc ecu1/0x36:0x72"
        gwflash_to g r "${UDS[@]}" "$work/img.bin"
        st=$?
        refused g "$st" "TransferData block 1 (image offset 0): negative response 0x72 generalProgrammingFailure"
}
check "TransferData answered generalProgrammingFailure: named, with the block" case_g
kill -0 "$sim_pid" 2>/dev/null && {
        stop_sim
        blank r || fail "the refusals left the ECU's flash programmed"
}

# ---- Faults in the middle of a transfer -----------------------------------------------------

# (h) a frame lost on the bus during the transfer: the block goes again, the flash is right.
case_h() {
        local st
        start_sim h --ecu "$ECU" || return 1
        gwflash_bg h "${UDS[@]}" "$work/big.bin"
        progress_past h 8192 || {
                echo "    no progress"
                show h
        }
        ctl h "lose-frame 3"
        wait "$flash_pid"
        st=$?
        stop_sim
        [ "$st" -eq 0 ] || {
                echo "    gwflash exited with $st"
                show h
                return 1
        }
        holds h "$work/big.bin" || {
                echo "    the flash does not hold the image"
                return 1
        }
        # 64 blocks written once each; the loss cost a TransferData: either the ECU dropped the
        # message it was receiving (a request frame lost), or its answer went missing and the
        # block came twice (acknowledged without writing it again).
        report h 'r["bus"]["lost"] == 1 and r["ecus"][0]["blocks"] == 64 and (r["ecus"][0]["isotp_errors"] >= 1 or r["ecus"][0]["services"]["0x36"] >= 65) or sys.exit(1)' >/dev/null || {
                echo "    $(report h '[r["bus"]["lost"], r["ecus"][0]["blocks"], r["ecus"][0]["isotp_errors"], r["ecus"][0]["services"]]')"
                return 1
        }
}
check "a frame lost mid-transfer: the block is sent again, the flash holds the image" case_h

# (i) the ECU stops answering mid-transfer: a clear error (one repeat to keep it short).
case_i() {
        local st
        start_sim i --ecu "$ECU" || return 1
        gwflash_bg i "${UDS[@]}" -o transfer-retries=1 "$work/big.bin"
        progress_past i 8192 || show i
        ctl i "silent ecu1"
        wait "$flash_pid"
        st=$?
        stop_sim
        refused i "$st" "sent 2 times: the ECU stopped answering" ||
                return 1
        grep -q '"event":"result","result":"failed",.*the ECU stopped answering' "$work/i.out"
}
check "the ECU falls silent mid-transfer: 'the ECU stopped answering', exit 1" case_i

# (j) the adapter loses its open state mid-transfer (and what it had queued): the transport opens
# it again, the protocol repeats what went unanswered, the flash is right.
case_j() {
        local st
        start_sim j --ecu "$ECU" || return 1
        gwflash_bg j "${UDS[@]}" "$work/big.bin"
        progress_past j 8192 || show j
        ctl j "reset-adapter"
        wait "$flash_pid"
        st=$?
        stop_sim
        [ "$st" -eq 0 ] || {
                echo "    gwflash exited with $st"
                show j
                return 1
        }
        holds j "$work/big.bin" || {
                echo "    the flash does not hold the image"
                return 1
        }
        [ "$(report j '[r["adapter"]["resets"], r["ecus"][0]["blocks"]]')" = "[1, 64]" ] || {
                echo "    $(report j '[r["adapter"]["resets"], r["ecus"][0]["blocks"], r["adapter"]]')"
                return 1
        }
}
check "the adapter drops its open state mid-transfer: reopened, the flash holds the image" case_j

# (k) the adapter drops its open state and ignores everything for 5 s: the transport gives up after
# its 2 s of recovery and says so.
case_k() {
        local st
        start_sim k --ecu "$ECU" || return 1
        gwflash_bg k "${UDS[@]}" "$work/big.bin"
        progress_past k 8192 || show k
        ctl k "reboot-adapter 5000"
        wait "$flash_pid"
        st=$?
        stop_sim
        refused k "$st" "link lost: slcan adapter $work/k.tty: the adapter did not open within 2000 ms"
}
check "the adapter does not come back mid-transfer: a clear error after 2 s" case_k

# (l) SocketCAN (-o interface=...): an interface that is not there, or a kernel without AF_CAN (as
# here: no vcan either), is a clear error before anything is sent.
case_l() {
        local st
        timeout 20 "$GWFLASH" -t can -o interface=gwnocan0 "${UDS[@]}" "$work/img.bin" \
                >"$work/l.out" 2>"$work/l.err"
        st=$?
        refused l "$st" "Cannot open can link gwnocan0: " || return 1
        grep -qE "No such device|this kernel has no SocketCAN" "$work/l.err" || {
                show l
                return 1
        }
}
check "SocketCAN: no such interface (or no AF_CAN): said so, exit 1" case_l

[ "$failures" -eq 0 ] || exit 1
exit 0
