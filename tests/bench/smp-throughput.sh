#!/bin/bash
# SMP upload throughput: gwflash -P smp into smp-sim at 115200 and 1000000 baud, window 1 and the
# window the device's buffers allow (buf_count - 1), with the limit the framing and the
# simulator's flash model allow printed beside each result. Not a pass/fail test: it fails only
# when an install fails.
#
# The arithmetic, for a device buffer of B bytes (the decoded frame: 2-byte length, packet,
# CRC, kept to whole groups of three):
#   packet P = floor(B/3)*3 - 4; a request carries L data bytes = P - 8 (SMP header) - the CBOR
#   around the data ({"off": N, "data": h...}: 1 + 4 + (3|5) + 5 + 3 bytes for later requests);
#   on the wire the frame of 2 + P + 2 raw bytes goes as lines of 93 raw bytes, each 2 marker
#   bytes + base64 (4 per 3) + newline: W = sum over lines of (3 + ceil(raw/3)*4) bytes;
#   line-bound rate = L / W * baud/10 (8N1: 10 bits a byte).
# Window 1 adds per request the answer's time on the line (about 39 bytes: one line), the
# device's turnaround and its flash write time; a window > 1 hides those behind the next
# request's wire time, so its limit is L / max(W / (baud/10), turnaround + write time). The
# erase of slot 1 before the first request (erase time per KiB x image size) adds to both.
set -u

: "${GW_BUILD:?GW_BUILD must name the build directory}"
: "${GW_SRC:?GW_SRC must name the source directory}"
# shellcheck source=../../tools/lib/common.sh
. "$GW_SRC/tools/lib/common.sh"
SIM=$GW_BUILD/tools/sim/smp-sim
GWFLASH=$GW_BUILD/tools/gwflash
MKIMG=$GW_SRC/tools/sim/mcuboot-image.py
BUF_SIZE=${BUF_SIZE:-1024}
BUF_COUNT=${BUF_COUNT:-4}
WRITE_US=${WRITE_US:-500}       # flash write time per KiB in the simulated device (first cases)
ERASE_US=${ERASE_US:-1000}      # erase time per KiB of slot 1, before the first request
TURNAROUND_US=${TURNAROUND_US:-300}

if [ ! -x "$SIM" ] || [ ! -x "$GWFLASH" ]; then
        echo "SKIP: smp-sim or gwflash not built"
        exit 77
fi

work=$(mktemp -d /tmp/gw-smp-bench.XXXXXX)
sim_pid=
cleanup() {
        [ -n "$sim_pid" ] && kill "$sim_pid" 2>/dev/null && wait "$sim_pid" 2>/dev/null
        rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

/usr/bin/python3 "$MKIMG" --version 1.0.0 --size 4000 --seed 1 "$work/v1.bin"
/usr/bin/python3 "$MKIMG" --version 2.0.0 --size $((128 * 1024)) --seed 2 "$work/img-128k.bin"
/usr/bin/python3 "$MKIMG" --version 2.0.0 --size $((512 * 1024)) --seed 3 "$work/img-512k.bin"
/usr/bin/python3 "$MKIMG" --version 2.0.0 --size $((256 * 1024)) --seed 4 "$work/img-256k.bin"

# run BAUD FILE WINDOW WRITE_US: one install; prints "upload_ms requests max_queued" or returns
# non-zero.
run() {
        local baud=$1 file=$2 window=$3 write_us=$4 tag="$1-$3-$4" st i wopt=()
        [ "$window" != auto ] && wopt=(-o "window=$window")
        "$SIM" --link "$work/$tag.tty" --baud "$baud" --slot0 "$work/v1.bin" \
                --buf-size "$BUF_SIZE" --buf-count "$BUF_COUNT" --write-us-per-kb "$write_us" \
                --erase-us-per-kb "$ERASE_US" --turnaround-us "$TURNAROUND_US" \
                --boot-ms 100 --report "$work/$tag.json" 2>"$work/$tag.log" &
        sim_pid=$!
        for ((i = 0; i < 100; i++)); do
                grep -q "^smp-sim: ready" "$work/$tag.log" 2>/dev/null && break
                sleep 0.05
        done
        timeout 600 "$GWFLASH" -t uart -p "$work/$tag.tty" -b "$baud" -P smp \
                -o poll-interval-ms=100 "${wopt[@]}" "$file" >"$work/$tag.out" 2>&1
        st=$?
        kill "$sim_pid"
        gw_wait_pid "$sim_pid" 10
        sim_pid=
        if [ "$st" -ne 0 ]; then
                echo "install $tag failed (status $st)" >&2
                tail -n 3 "$work/$tag.out" >&2
                return 1
        fi
        echo "$(gw_report_field "$work/$tag.json" last_upload_ms) $(gw_report_field "$work/$tag.json" upload_requests) $(gw_report_field "$work/$tag.json" max_queued)"
}

status=0
echo "device buffer $BUF_SIZE x $BUF_COUNT; flash: erase $ERASE_US us/KiB, turnaround $TURNAROUND_US us"
printf '%-8s %-6s %8s %7s %6s %9s %10s %10s %10s %8s %8s\n' baud window bytes "write" queued \
        "upload s" "payload/s" "line lim/s" "model/s" "% line" "% model"
# The last case: flash slower than the line (20 ms a KiB), where the window pays.
for case in "115200 $work/img-128k.bin $WRITE_US" "1000000 $work/img-512k.bin $WRITE_US" \
        "1000000 $work/img-256k.bin 20000"; do
        read -r baud file write_us <<<"$case"
        size=$(stat -c %s "$file")
        for window in 1 auto; do
                if ! out=$(run "$baud" "$file" "$window" "$write_us"); then
                        status=1
                        continue
                fi
                read -r ms reqs queued <<<"$out"
                awk -v baud="$baud" -v size="$size" -v ms="$ms" -v reqs="$reqs" -v B="$BUF_SIZE" \
                        -v win="$window" -v n="$((BUF_COUNT - 1))" -v q="$queued" \
                        -v wus="$write_us" -v eus="$ERASE_US" -v tus="$TURNAROUND_US" 'BEGIN {
                        P = int(B / 3) * 3 - 4;             # packet
                        T = P + 4;                          # raw frame
                        lines = int((T + 92) / 93);
                        W = 0;
                        for (i = 0; i < lines; i++) {
                                raw = (i < lines - 1) ? 93 : T - 93 * (lines - 1);
                                W += 3 + int((raw + 2) / 3) * 4;
                        }
                        L = size / reqs;                    # data bytes a request, measured
                        Bps = baud / 10;
                        wire = W / Bps;                     # s a request on the line
                        proc = tus / 1e6 + wus / 1e6 * L / 1024;
                        resp = 39 / Bps;
                        erase = eus / 1e6 * size / 1024;
                        if (win == "1")
                                per = wire + resp + proc;
                        else
                                per = (wire > proc) ? wire : proc;
                        model = size / (erase + reqs * per);
                        line = L / W * Bps;
                        rate = size * 1000 / ms;
                        printf "%-8d %-6s %8d %5dus %6d %9.2f %10d %10d %10d %7.1f%% %7.1f%%\n",
                               baud, (win == "1" ? "1" : n), size, wus, q, ms / 1000, rate, line,
                               model, 100 * rate / line, 100 * rate / model;
                        if (baud == 115200 && win == "1")
                                printf "  (packet %d bytes, %d data bytes a request, %d wire bytes: %.1f%% of the line carries image data)\n",
                                       P, L, W, 100 * L / W;
                }'
        done
done
echo "payload/s: image bytes over the device-measured upload time (first request to the last answer)"
echo "line lim/s: the framing's ceiling, L/W x baud/10; model/s: that plus the window-1 turnaround, the"
echo "device's write and turnaround times and the erase, from the simulator's flash model"
exit $status
