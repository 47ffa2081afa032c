#!/bin/bash
# YMODEM throughput: gwflash and lrzsz's sb send the same image to ymodem-sim, 256 KiB at
# 115200 baud and 1 MiB at 921600, in the same run. Prints payload bytes/s as the simulated node
# measured them (first byte of block 0 to the last EOT), the share of the line rate (baud/10),
# and gwflash relative to sb. Not a pass/fail test: it fails only when a transfer fails.
set -u

: "${GW_BUILD:?GW_BUILD must name the build directory}"
: "${GW_SRC:?GW_SRC must name the source directory}"
# shellcheck source=../../tools/lib/common.sh
. "$GW_SRC/tools/lib/common.sh"
SIM=$GW_BUILD/tools/sim/ymodem-sim
GWFLASH=$GW_BUILD/tools/gwflash
WRITE_US=${WRITE_US:-0} # flash programming time per KiB in the simulated node

for prog in sb timeout; do
        if ! command -v "$prog" >/dev/null; then
                echo "SKIP: $prog is not installed"
                exit 77
        fi
done
if [ ! -x "$SIM" ]; then
        echo "FAIL: $SIM was not built"
        exit 1
fi

work=$(mktemp -d /tmp/gw-ymodem-bench.XXXXXX)
pids=()
cleanup() {
        local p
        for p in "${pids[@]}"; do
                kill "$p" 2>/dev/null
        done
        for p in "${pids[@]}"; do
                wait "$p" 2>/dev/null
        done
        rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# run SENDER BAUD FILE: one transfer; prints "rate wall_ms" or returns non-zero.
run() {
        local sender=$1 baud=$2 file=$3 tag="$1-$2" st t0 t1 i
        mkdir -p "$work/$tag.out"
        "$SIM" --link "$work/$tag.tty" --out "$work/$tag.out" --report "$work/$tag.json" \
                --baud "$baud" --once --write-us-per-kb "$WRITE_US" 2>"$work/$tag.log" &
        local sim_pid=$!
        pids+=("$sim_pid")
        for ((i = 0; i < 100; i++)); do
                [ -e "$work/$tag.tty" ] && break
                sleep 0.05
        done
        t0=$(date +%s%N)
        if [ "$sender" = sb ]; then
                (cd "$(dirname "$file")" && timeout 300 sb --ymodem -k -q "$(basename "$file")" \
                        <"$work/$tag.tty" >"$work/$tag.tty")
        else
                timeout 300 "$GWFLASH" --transport uart --port "$work/$tag.tty" --baud "$baud" \
                        --protocol ymodem "$file" >"$work/$tag.sender.log" 2>&1
        fi
        st=$?
        t1=$(date +%s%N)
        gw_wait_pid "$sim_pid" 30 || st=1
        if [ "$st" -ne 0 ] || ! cmp -s "$file" "$work/$tag.out/$(basename "$file")"; then
                echo "transfer $tag failed (status $st)" >&2
                return 1
        fi
        echo "$(gw_report_field "$work/$tag.json" bytes_per_s) $(((t1 - t0) / 1000000))"
}

head -c $((256 * 1024)) /dev/urandom >"$work/img-256k.bin"
head -c $((1024 * 1024)) /dev/urandom >"$work/img-1m.bin"

senders=(sb)
if [ -x "$GWFLASH" ]; then
        senders+=(gwflash)
else
        echo "note: $GWFLASH is not built; measuring sb only"
fi

status=0
printf '%-8s %8s %8s %10s %9s %8s %8s\n' sender baud bytes "payload/s" "wall s" "% line" "vs sb"
for case in "115200 $work/img-256k.bin" "921600 $work/img-1m.bin"; do
        read -r baud file <<<"$case"
        size=$(stat -c %s "$file")
        sb_rate=""
        for sender in "${senders[@]}"; do
                if ! out=$(run "$sender" "$baud" "$file"); then
                        status=1
                        printf '%-8s %8s %8s %10s\n' "$sender" "$baud" "$size" failed
                        continue
                fi
                read -r rate wall_ms <<<"$out"
                [ "$sender" = sb ] && sb_rate=$rate
                awk -v s="$sender" -v b="$baud" -v n="$size" -v r="$rate" -v w="$wall_ms" \
                        -v sbr="$sb_rate" 'BEGIN {
                        vs = (sbr != "" && sbr > 0) ? sprintf("%.3f", r / sbr) : "-";
                        printf "%-8s %8d %8d %10d %9.2f %7.1f%% %8s\n", s, b, n, r, w / 1000,
                               100 * r / (b / 10), vs }'
        done
done
echo "payload/s: as the node measured it, block 0 to the last EOT; wall s includes start-up and the first 'C'"
exit $status
