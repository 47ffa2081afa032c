#!/bin/bash
# gwflash -P smp against smp-sim, a simulated MCUboot device with an SMP server on a pty: the
# whole flow (upload, test, reset, confirm) with the slots checked afterwards, the window the
# device's buffers allow, and faults: a lost line, a corrupted line, an rc on a chunk, console
# noise, a reset mid-upload (resumed by a second gwflash when the device keeps its upload state,
# ridden through from offset 0 when it does not), a host interrupted mid-upload (resumed), an
# image that does not confirm (reverted), one that never answers, a non-MCUboot image (refused
# before anything is sent), and an image already installed. Every wait is bounded.
set -u

: "${GW_BUILD:?GW_BUILD must name the build directory}"
: "${GW_SRC:?GW_SRC must name the source directory}"
# shellcheck source=../../tools/lib/common.sh
. "$GW_SRC/tools/lib/common.sh"
SIM=$GW_BUILD/tools/sim/smp-sim
GWFLASH=$GW_BUILD/tools/gwflash
MKIMG=$GW_SRC/tools/sim/mcuboot-image.py
PY=/usr/bin/python3

for prog in timeout cmp "$PY"; do
        if ! command -v "$prog" >/dev/null; then
                echo "SKIP: $prog is not installed"
                exit 77
        fi
done
if [ ! -x "$SIM" ]; then
        echo "SKIP: tools/sim/smp-sim was not built (libcbor development files missing)"
        exit 77
fi
if [ ! -x "$GWFLASH" ]; then
        echo "FAIL: $GWFLASH was not built"
        exit 1
fi
if "$GWFLASH" -t uart -p /nonexistent -P smp /dev/null 2>&1 | grep -q "unknown protocol 'smp'"; then
        echo "SKIP: gwflash was built without the smp protocol (libcbor missing)"
        exit 77
fi

CASES_NAME=smp
sim_pid=
cases_cleanup() {
        if [ -n "$sim_pid" ]; then
                kill "$sim_pid" 2>/dev/null
                wait "$sim_pid" 2>/dev/null
        fi
}
# shellcheck source=cases.sh
. "$GW_SRC/tests/integration/cases.sh"

BAUD=1000000
# Fast boots and polls keep the whole test short; the protocol's waits are the defaults.
SIM_FAST=(--boot-ms 100 --reset-delay-ms 50)
SMP_FAST=(-o poll-interval-ms=100)

mkimg() { "$PY" "$MKIMG" "$@"; }
mkimg --version 1.0.0 --size 20000 --seed 1 "$work/v1.bin"
mkimg --version 1.1.0+7 --size 60000 --seed 2 --protected "$work/v2.bin"
mkimg --version 1.2.0 --size 40000 --seed 3 "$work/v3.bin"
head -c 30000 /dev/urandom >"$work/raw.bin"
# tlv_hash FILE: the SHA-256 TLV of an MCUboot image (what the device reports as its hash).
tlv_hash() {
        "$PY" - "$1" <<'PY'
import struct, sys
d = open(sys.argv[1], "rb").read()
hdr, prot, size = struct.unpack_from("<HHI", d, 8)
off = hdr + size + prot
magic, tot = struct.unpack_from("<HH", d, off)
p = off + 4
while p < off + tot:
    t, n = struct.unpack_from("<HH", d, p)
    if t == 0x10:
        print(d[p + 4:p + 4 + n].hex())
    p += 4 + n
PY
}
H1=$(tlv_hash "$work/v1.bin")
H2=$(tlv_hash "$work/v2.bin")
H3=$(tlv_hash "$work/v3.bin")
SIZE2=$(stat -c %s "$work/v2.bin")

# start NAME [SIM OPTIONS...]: a simulator on $work/NAME.tty running v1, reporting into
# $work/NAME.json, slots dumped at exit; waits for its ready line.
start() {
        local name=$1 i
        shift
        "$SIM" --link "$work/$name.tty" --baud "$BAUD" --slot0 "$work/v1.bin" \
                --report "$work/$name.json" --dump-slot0 "$work/$name.slot0" \
                --dump-slot1 "$work/$name.slot1" "${SIM_FAST[@]}" -v "$@" 2>"$work/$name.log" &
        sim_pid=$!
        for ((i = 0; i < 100; i++)); do
                grep -q "^smp-sim: ready" "$work/$name.log" 2>/dev/null && return 0
                sleep 0.05
        done
        fail "$name: the simulator did not become ready"
        return 1
}
# stop: SIGTERM, then the simulator's exit status (its final report line is written).
stop() {
        kill "$sim_pid" 2>/dev/null
        gw_wait_pid "$sim_pid" 10
        local st=$?
        sim_pid=
        return $st
}
# snapshot NAME: a report line now (SIGUSR1), without stopping it.
snapshot() {
        local before
        before=$(wc -l <"$work/$1.json")
        kill -USR1 "$sim_pid"
        gw_wait_for 5 sh -c "[ \$(wc -l <'$work/$1.json') -gt $before ]"
}
field() { gw_report_field "$work/$1.json" "$2"; }
# flash NAME IMAGE [GWFLASH OPTIONS...]: gwflash into NAME's simulator, bounded; status returned,
# output in $work/NAME.out (appended).
flash() {
        local name=$1 img=$2
        shift 2
        timeout 60 "$GWFLASH" -t uart -p "$work/$name.tty" -b "$BAUD" -P smp "${SMP_FAST[@]}" \
                "$@" "$img" >>"$work/$name.out" 2>&1
}
show() { sed 's/^/    /' "$work/$1.out" | tail -n 8; }

# ---- a. the whole flow ------------------------------------------------------------------------
if start a; then
        flash a "$work/v2.bin"
        st=$?
        stop
        check "a: gwflash exits 0 (got $st)" test "$st" -eq 0 || show a
        check "a: slot 0 runs v2's hash, confirmed ($(field a slot0_hash | cut -c1-16)..., confirmed $(field a slot0_confirmed))" \
                test "$(field a slot0_hash)/$(field a slot0_confirmed)/$(field a swap)" = "$H2/true/none"
        check "a: slot 0 holds v2 byte for byte" cmp -s "$work/a.slot0" "$work/v2.bin"
        check "a: slot 1 holds v1 (the swap moved it)" cmp -s "$work/a.slot1" "$work/v1.bin"
        check "a: one test swap, no revert, version 1.1.0.7" \
                test "$(field a swaps)/$(field a reverts)/$(field a slot0_version)" = "1/0/1.1.0.7"
        check "a: all $SIZE2 bytes sent once" test "$(field a upload_bytes)" -eq "$SIZE2"
fi

# ---- b. the window: buffers 4 -> 3 requests in flight; 1 -> one at a time ------------------
# Slow flash (20 ms a KiB) makes requests wait in the device's queue, where the depth shows.
if start b --buf-count 4 --write-us-per-kb 20000; then
        flash b "$work/v3.bin"
        st=$?
        stop
        check "b: buffers 4: gwflash exits 0 (got $st)" test "$st" -eq 0 || show b
        check "b: buffers 4: 3 requests queued at once (max_queued $(field b max_queued)), none dropped" \
                test "$(field b max_queued)/$(field b dropped_no_buffer)" = "3/0"
fi
if start b1 --buf-count 1 --write-us-per-kb 20000; then
        flash b1 "$work/v3.bin"
        st=$?
        stop
        check "b1: buffers 1: gwflash exits 0 (got $st)" test "$st" -eq 0 || show b1
        check "b1: buffers 1: one request at a time (max_queued $(field b1 max_queued))" \
                test "$(field b1 max_queued)/$(field b1 dropped_no_buffer)" = "1/0"
fi
# A window forced beyond the device's buffers loses requests, and still finishes.
if start b2 --buf-count 2 --write-us-per-kb 20000; then
        flash b2 "$work/v3.bin" -o window=4 -o request-timeout-ms=1000
        st=$?
        stop
        check "b2: window 4 on 2 buffers: requests dropped ($(field b2 dropped_no_buffer)), still done (got $st)" \
                test "$st" -eq 0 -a "$(field b2 dropped_no_buffer)" -gt 0
        check "b2: ... and slot 0 runs v3" test "$(field b2 slot0_hash)" = "$H3"
fi

# ---- c. a lost line, a corrupted line, noise, rc on chunks -------------------------------------
if start c --drop-line 40 --corrupt-line 200 --noise-ms 3 --buf-count 3; then
        flash c "$work/v2.bin" -o request-timeout-ms=1000
        st=$?
        stop
        check "c: lost and corrupted lines, noise every 3 ms: gwflash exits 0 (got $st)" \
                test "$st" -eq 0 || show c
        check "c: ... the device saw the broken packet (bad_frames $(field c bad_frames), bad_lines $(field c bad_lines))" \
                test $(($(field c bad_frames) + $(field c bad_lines))) -ge 1
        check "c: ... slot 0 runs v2, confirmed" \
                test "$(field c slot0_hash)/$(field c slot0_confirmed)" = "$H2/true"
fi
if start c2 --rc-chunk 5,10; then
        flash c2 "$work/v3.bin"
        st=$?
        stop
        check "c2: MGMT_ERR_EBUSY on a chunk is retried: exit 0 (got $st)" test "$st" -eq 0 || show c2
fi
if start c3 --rc-chunk 5,3; then
        flash c3 "$work/v3.bin"
        st=$?
        stop
        check "c3: MGMT_ERR_EINVAL on a chunk fails (exit $st)" test "$st" -eq 1
        check "c3: ... naming it" grep -q "the node refused the upload at offset .*MGMT_ERR_EINVAL (rc 3)" "$work/c3.out"
        check "c3: ... slot 0 still runs v1" test "$(field c3 slot0_hash)" = "$H1"
fi

# ---- d. reset mid-upload ----------------------------------------------------------------------
# The device keeps its upload state across the reset (--persist-upload) and stays down 3 s:
# the first gwflash gives up, the second resumes where the device is.
if start d --reset-at 30000 --persist-upload --boot-ms 3000; then
        flash d "$work/v2.bin" -o retries=1 -o request-timeout-ms=500
        st1=$?
        sleep 3
        flash d "$work/v2.bin"
        st2=$?
        stop
        check "d: the first gwflash fails when the device resets mid-upload (exit $st1)" test "$st1" -eq 1
        check "d: ... saying the node did not answer" grep -q "no answer to the upload at offset" "$work/d.out"
        from=$(field d last_upload_resumed_from)
        got=$(field d last_upload_bytes)
        check "d: the second gwflash exits 0 (got $st2)" test "$st2" -eq 0 || show d
        check "d: ... and resumed at the device's offset ($from), sending $got of $SIZE2 bytes" \
                test "$from" -gt 0 -a "$got" -lt "$SIZE2" -a $((from + got)) -eq "$SIZE2"
        check "d: ... slot 0 runs v2, confirmed" \
                test "$(field d slot0_hash)/$(field d slot0_confirmed)" = "$H2/true"
fi
# As img_mgmt really is: upload state in RAM, lost by the reset. A patient gwflash rides through
# the reboot; the device answers offset 0 and the upload starts over.
if start d2 --reset-at 30000; then
        flash d2 "$work/v2.bin" -o request-timeout-ms=500 -o retries=5
        st=$?
        stop
        check "d2: RAM upload state: gwflash rides through the reset (exit $st)" test "$st" -eq 0 || show d2
        check "d2: ... starting over: more than the image sent ($(field d2 upload_bytes) > $SIZE2), one reset besides the swap's" \
                test "$(field d2 upload_bytes)" -gt "$SIZE2" -a "$(field d2 resets)" -eq 2
fi
# The host goes away mid-upload (gwflash killed); the device keeps the upload (a closed port is
# no reset): the next gwflash resumes.
if start d3 --write-us-per-kb 40000; then
        timeout -s TERM 1 "$GWFLASH" -t uart -p "$work/d3.tty" -b "$BAUD" -P smp "$work/v2.bin" \
                >>"$work/d3.out" 2>&1
        snapshot d3
        off=$(field d3 upload_off)
        flash d3 "$work/v2.bin"
        st=$?
        stop
        from=$(field d3 last_upload_resumed_from)
        check "d3: gwflash interrupted after $off bytes; the next one exits 0 (got $st)" \
                test "$off" -gt 0 -a "$off" -lt "$SIZE2" -a "$st" -eq 0 || show d3
        check "d3: ... resuming at $from, sending $(field d3 last_upload_bytes) bytes" \
                test "$from" -ge "$off" -a $((from + $(field d3 last_upload_bytes))) -eq "$SIZE2"
fi

# ---- e. an image that does not confirm: reverted ------------------------------------------------
if start e --crash-after-swap; then
        flash e "$work/v2.bin"
        st=$?
        stop
        check "e: the new image crashes before it is confirmed: exit 1 (got $st)" test "$st" -eq 1
        check "e: ... with a clear reverted error" grep -q "reverted: the node came back running its previous image 1.0.0" "$work/e.out"
        check "e: ... slot 0 runs v1 again, confirmed; v2 sits in slot 1 unmarked" \
                test "$(field e slot0_hash)/$(field e slot0_confirmed)/$(field e slot1_hash)/$(field e slot1_pending)" = "$H1/true/$H2/false"
        check "e: ... one swap there and one back" test "$(field e swaps)/$(field e reverts)" = "2/1"
fi
if start f --hang-after-swap; then
        flash f "$work/v2.bin" -o reset-timeout-ms=2000
        st=$?
        stop
        check "f: the new image never answers: exit 1 (got $st)" test "$st" -eq 1
        check "f: ... the node did not come back" grep -q "did not come back within 2000 ms" "$work/f.out"
        check "f: ... it runs v2 unconfirmed, so MCUboot reverts it at its next reset" \
                test "$(field f slot0_hash)/$(field f slot0_confirmed)/$(field f swap)" = "$H2/false/revert"
fi

# ---- g. a non-MCUboot image: refused before anything is sent -----------------------------------
if start g; then
        flash g "$work/raw.bin"
        st=$?
        snapshot g
        check "g: a raw file is refused (exit $st)" test "$st" -eq 1
        check "g: ... as not an MCUboot image" grep -q "not an MCUboot image: magic 0x" "$work/g.out"
        check "g: ... before a byte reached the device (lines $(field g lines_rx), requests $(field g requests))" \
                test "$(field g lines_rx)/$(field g requests)" = "0/0"
        stop
fi

# ---- h. already installed: nothing uploaded --------------------------------------------------
if start h; then
        flash h "$work/v3.bin"
        st1=$?
        snapshot h
        before=$(field h upload_requests)
        flash h "$work/v3.bin"
        st2=$?
        stop
        check "h: installing v3 twice: both exit 0 ($st1, $st2)" test "$st1" -eq 0 -a "$st2" -eq 0
        check "h: ... the second uploads nothing and resets nothing" \
                test "$(field h upload_requests)/$(field h resets)" = "$before/1"
fi

# ---- i. 115200 baud, the default line of many boards -------------------------------------------
BAUD=115200
if start i; then
        mkimg --version 2.0.0 --size 8000 --seed 9 "$work/small.bin"
        flash i "$work/small.bin"
        st=$?
        stop
        check "i: 115200 baud: exit 0 (got $st)" test "$st" -eq 0 || show i
        check "i: ... slot 0 runs it" cmp -s "$work/i.slot0" "$work/small.bin"
fi

if [ "$failures" -gt 0 ]; then
        echo "$failures check(s) failed"
        exit 1
fi
exit 0
