#!/bin/bash
# UDS download throughput over can-sim's simulated bus: gwflash -t can -P uds installs one random
# image (UDS_BENCH_KIB, 256) at 500 kbit/s and 1 Mbit/s, with the ECU's programming time per block
# at UDS_BENCH_PROGRAM_MS (2) and at 0, each into a fresh can-sim (BS 0, STmin 0, 1024-byte blocks,
# 200 us reaction time, 5 ms per 2 KiB page erased, 100 ms reset). Each run is measured on the
# simulated bus (its --trace) against the limit that uds-limit.py computes from the simulator's
# model alone (every frame built from the image, its bits counted with stuffing, the ECU's times,
# no host turnaround), and uds-limit.py checks that its bit counts are the simulator's, frame by
# frame. The host runs with bus-load=100 (the default 80 % would cap it below the bus) and its
# default tx-burst; reset-delay-ms is the ECU's reset time (103 ms, not the default 500 ms, which
# is a guess for ECUs whose reset time is not known). Not a pass/fail test: it fails when an
# install fails or the flash differs, and with UDS_BENCH_STRICT=1 when a run is under
# UDS_BENCH_TARGET (0.9) of its limit.
set -u

: "${GW_BUILD:?GW_BUILD must name the build directory}"
: "${GW_SRC:?GW_SRC must name the source directory}"
# shellcheck source=../../tools/lib/common.sh
. "$GW_SRC/tools/lib/common.sh"
SIM=$GW_BUILD/tools/sim/can-sim
GWFLASH=$GW_BUILD/tools/gwflash
MODULE=$GW_BUILD/tools/sim/libuds-seedkey.so
LIMIT=$GW_SRC/tests/bench/uds-limit.py
KIB=${UDS_BENCH_KIB:-256}
RUNS=${UDS_BENCH_RUNS:-1}
PROGRAM_MS=${UDS_BENCH_PROGRAM_MS:-2}
BITRATES=${UDS_BENCH_BITRATES:-500000 1000000}
TARGET=${UDS_BENCH_TARGET:-0.9}
HOST_OPTS=${UDS_BENCH_HOST_OPTS:-} # more gwflash options, e.g. "-o tx-burst=1"

for b in "$SIM" "$GWFLASH" "$MODULE"; do
        if [ ! -e "$b" ]; then
                echo "FAIL: $b was not built"
                exit 1
        fi
done
case "$("$GWFLASH" -t can -p /dev/null -P uds /dev/null 2>&1)" in
*"unknown transport"* | *"unknown protocol"*)
        echo "SKIP: gwflash was built without the can transport or the uds protocol"
        exit 77
        ;;
esac

work=$(mktemp -d /tmp/gw-uds-bench.XXXXXX)
sim_pid=
keep=false
cleanup() {
        if [ -n "$sim_pid" ]; then
                kill "$sim_pid" 2>/dev/null
                wait "$sim_pid" 2>/dev/null
        fi
        if $keep || [ -n "${UDS_BENCH_KEEP:-}" ]; then echo "Work directory kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

size=$((KIB * 1024))
head -c "$size" /dev/urandom >"$work/img.bin"
flash_kib=$(((KIB + 255) / 256 * 256))

# run NAME BITRATE PROGRAM_MS: one install into a fresh can-sim; the analysis in NAME.limit.
run() {
        local name=$1 br=$2 pm=$3 i st
        "$SIM" --link "$work/$name.tty" --bitrate "$br" --report "$work/$name.json" \
                --dump-dir "$work" --trace "$work/$name.trace" --seed 1 \
                --ecu "bench,tx=0x7e0,rx=0x7e8,flash=0:$((flash_kib * 1024)),program-ms=$pm" \
                >"$work/$name.sim" 2>"$work/$name.log" &
        sim_pid=$!
        for ((i = 0; i < 100; i++)); do
                grep -q '^can-sim: ready' "$work/$name.sim" 2>/dev/null && break
                sleep 0.05
        done
        # shellcheck disable=SC2086 # HOST_OPTS is split on purpose
        timeout 300 "$GWFLASH" -q -t can -p "$work/$name.tty" -o bitrate="$br" -o bus-load=100 \
                -o tx-id=0x7e0 -o rx-id=0x7e8 -P uds -o address=0 -o seedkey-module="$MODULE" \
                -o reset-delay-ms=103 $HOST_OPTS "$work/img.bin" >"$work/$name.out" 2>&1
        st=$?
        kill -TERM "$sim_pid"
        gw_wait_pid "$sim_pid" 20
        sim_pid=
        mv "$work/bench.bin" "$work/$name.dump"
        if [ "$st" -ne 0 ]; then
                echo "FAIL: $name: gwflash exited with $st:"
                sed 's/^/    /' "$work/$name.out"
                keep=true
                return 1
        fi
        if ! cmp -s -n "$size" "$work/img.bin" "$work/$name.dump"; then
                echo "FAIL: $name: the ECU's flash does not hold the image"
                keep=true
                return 1
        fi
        python3 "$LIMIT" "$work/img.bin" "$work/$name.trace" "$work/$name.json" 0 >"$work/$name.limit" ||
                {
                        echo "FAIL: $name: the analysis failed"
                        keep=true
                        return 1
                }
}

val() { sed -n "s/^$2=//p" "$work/$1.limit"; }

failed=0
missed=0
rows=()
echo "UDS download of $KIB KiB with gwflash over can-sim (slcan on a pty), bus-load=100, $RUNS run(s) each"
for br in $BITRATES; do
        for pm in "$PROGRAM_MS" 0; do
                for ((k = 1; k <= RUNS; k++)); do
                        name=r$br-$pm-$k
                        echo
                        echo "== $br bit/s, programming $pm ms a block, run $k"
                        if ! run "$name" "$br" "$pm"; then
                                failed=$((failed + 1))
                                continue
                        fi
                        grep -v -E '^[a-z_0-9]+=' "$work/$name.limit"
                        if [ "$(val "$name" same_frames)" != True ] || [ "$(val "$name" bits_agree)" != True ]; then
                                echo "  (the bus carried other frames than the minimal exchange: the ratios include them)"
                        fi
                        row=$(awk -v a="$(val "$name" dl_limit_s)" -v b="$(val "$name" dl_measured_s)" \
                                -v c="$(val "$name" install_limit_s)" -v d="$(val "$name" install_measured_s)" \
                                -v r="$(val "$name" dl_rate)" -v lr="$(val "$name" dl_limit_rate)" \
                                -v raw="$(val "$name" raw_rate_111)" -v raw2="$(val "$name" raw_rate_135)" \
                                -v br="$br" -v pm="$pm" \
                                'BEGIN { printf "| %d | %d ms | %.3f s / %.3f s = %.3f | %.0f / %.0f B/s | %.3f s / %.3f s = %.3f | %.0f-%.0f B/s |",
                                        br, pm, a, b, a / b, r, lr, c, d, c / d, raw2, raw }')
                        rows+=("$row")
                        echo "  measured: download $(val "$name" dl_measured_s) s, install $(val "$name" install_measured_s) s"
                        for x in dl_ratio install_ratio; do
                                if awk -v v="$(val "$name" $x)" -v t="$TARGET" 'BEGIN { exit !(v < t) }'; then
                                        echo "  $x $(val "$name" $x) is under $TARGET"
                                        missed=$((missed + 1))
                                fi
                        done
                done
        done
done
echo
echo "| bitrate | programming | download: limit / measured = ratio | image rate measured / limit | install: limit / measured = ratio | bus raw payload (8 bytes a frame, 135-111 bits) |"
echo "|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
if [ "$failed" -gt 0 ]; then
        echo "$failed run(s) failed"
        exit 1
fi
if [ "$missed" -gt 0 ] && [ "${UDS_BENCH_STRICT:-0}" = 1 ]; then
        echo "$missed ratio(s) under $TARGET"
        exit 1
fi
exit 0
