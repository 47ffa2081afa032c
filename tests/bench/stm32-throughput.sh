#!/bin/bash
# STM32 ROM bootloader throughput: gwflash and stm32flash 0.7 install the same 64 KiB image (write,
# verify, GO) into stm32-sim at 115200 baud 8E1 with a flash timing model, in the same run. Each
# run is measured by the simulator (first byte received to GO) against the protocol's limit for
# that model, whose arithmetic is printed. Not a pass/fail test: it fails only when an install
# fails, or with STM32_BENCH_STRICT=1 when gwflash's best run is under STM32_BENCH_TARGET (0.95).
set -u

: "${GW_BUILD:?GW_BUILD must name the build directory}"
: "${GW_SRC:?GW_SRC must name the source directory}"
# shellcheck source=../../tools/lib/common.sh
. "$GW_SRC/tools/lib/common.sh"
SIM=$GW_BUILD/tools/sim/stm32-sim
GWFLASH=$GW_BUILD/tools/gwflash
BAUD=${STM32_BENCH_BAUD:-115200}
KIB=${STM32_BENCH_KIB:-64}
RUNS=${STM32_BENCH_RUNS:-2}
WRITE_MS=${STM32_BENCH_WRITE_MS:-7}  # programming time per 256-byte block
ERASE_MS=${STM32_BENCH_ERASE_MS:-20} # erase time per 1 KiB page
TARGET=${STM32_BENCH_TARGET:-0.95}
BITS=11 # 8E1: start, 8 data, parity, stop

for b in "$SIM" "$GWFLASH"; do
        if [ ! -x "$b" ]; then
                echo "FAIL: $b was not built"
                exit 1
        fi
done
if "$GWFLASH" -t uart -p /dev/null -P stm32 /dev/null 2>&1 | grep -q "unknown protocol"; then
        echo "SKIP: gwflash was built without the stm32 protocol"
        exit 77
fi

work=$(mktemp -d /tmp/gw-stm32-bench.XXXXXX)
sim_pid=
cleanup() {
        if [ -n "$sim_pid" ]; then
                kill "$sim_pid" 2>/dev/null
                wait "$sim_pid" 2>/dev/null
        fi
        rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

size=$((KIB * 1024))
head -c "$size" /dev/urandom >"$work/img.bin"

# The limit: the bytes the protocol cannot do without, at the line rate, plus the modelled
# flash time, with no turnaround at all. Chip 0x410 (F1 medium density, 1 KiB pages, bootloader
# 2.2 with the legacy erase).
blocks=$(((size + 255) / 256))
pages=$(((size + 1023) / 1024))
sync_b=2                         # 0x7F, ACK
get_b=$((2 + 15))                # 00 FF; ACK, N=11, version, 11 commands, ACK
get_id_b=$((2 + 5))              # 02 FD; ACK, N=1, PID (2), ACK
erase_b=$((2 + 1 + 1 + pages + 1 + 1)) # 43 BC, ACK, N, pages, checksum, ACK
write_b=$((2 + 1 + 5 + 1 + 1 + 256 + 1 + 1)) # 31 CE, ACK, address + XOR, ACK, N, data, XOR, ACK
read_b=$((2 + 1 + 5 + 1 + 2 + 1 + 256))      # 11 EE, ACK, address + XOR, ACK, N ~N, ACK, data
go_b=$((2 + 1 + 5 + 1))          # 21 DE, ACK, address + XOR, ACK
bytes=$((sync_b + get_b + get_id_b + erase_b + blocks * (write_b + read_b) + go_b))
busy_ms=$((blocks * WRITE_MS + pages * ERASE_MS))
limit=$(awk -v b="$bytes" -v bits="$BITS" -v baud="$BAUD" -v busy="$busy_ms" \
        'BEGIN { printf "%.3f", b * bits / baud + busy / 1000 }')
echo "Model: $KIB KiB, chip 0x410 (1 KiB pages, legacy erase), $BAUD baud, $BITS bits a byte (8E1),"
echo "       $WRITE_MS ms to program a 256-byte block, $ERASE_MS ms to erase a page; write, verify, GO."
echo "Limit: bytes on the line (both ways) that no host can avoid:"
echo "         sync $sync_b + GET $get_b + GET_ID $get_id_b + erase of $pages pages $erase_b + GO $go_b"
echo "         + $blocks blocks x (WRITE_MEMORY $write_b + READ_MEMORY $read_b) = $bytes bytes"
echo "         $bytes x $BITS / $BAUD = $(awk -v b="$bytes" -v bits="$BITS" -v baud="$BAUD" \
        'BEGIN { printf "%.3f", b * bits / baud }') s on the line"
echo "       + flash: $blocks x $WRITE_MS ms + $pages x $ERASE_MS ms = $(awk -v m="$busy_ms" \
        'BEGIN { printf "%.3f", m / 1000 }') s"
echo "       = $limit s (a host at the limit has no turnaround time at all)"
echo

# run TOOL N: one install into a fresh simulator; prints "session_s wall_s" or fails.
run() {
        local tool=$1 n=$2 tag="$1-$2" st t0 t1 try
        for try in 1 2; do
                "$SIM" --link "$work/$tag.tty" --baud "$BAUD" --bits "$BITS" --chip-id 0x410 \
                        --write-ms "$WRITE_MS" --erase-ms "$ERASE_MS" --dump "$work/$tag.dump" \
                        --report "$work/$tag.json" 2>"$work/$tag.log" &
                sim_pid=$!
                for ((i = 0; i < 100; i++)); do
                        grep -q "ready on" "$work/$tag.log" 2>/dev/null && break
                        sleep 0.05
                done
                t0=$(date +%s%N)
                if [ "$tool" = stm32flash ]; then
                        timeout 120 stm32flash -b "$BAUD" -m 8n1 -w "$work/img.bin" -v \
                                -g 0x08000000 "$work/$tag.tty" >"$work/$tag.out" 2>&1
                else
                        timeout 120 "$GWFLASH" -t uart -p "$work/$tag.tty" -b "$BAUD" -P stm32 \
                                -q "$work/img.bin" >"$work/$tag.out" 2>&1
                fi
                st=$?
                t1=$(date +%s%N)
                kill -TERM "$sim_pid" 2>/dev/null
                gw_wait_pid "$sim_pid" 10
                sim_pid=
                # stm32flash's init fails now and then against a pty: one more try.
                [ "$st" -eq 0 ] || [ "$tool" != stm32flash ] || [ "$try" -eq 2 ] || continue
                break
        done
        if [ "$st" -ne 0 ] || ! cmp -s -n "$size" "$work/img.bin" "$work/$tag.dump" ||
                [ "$(gw_report_field "$work/$tag.json" go)" != yes ]; then
                echo "$tag failed (status $st)" >&2
                sed 's/^/    /' "$work/$tag.out" >&2
                return 1
        fi
        awk -v us="$(gw_report_field "$work/$tag.json" session_us)" -v w=$(((t1 - t0) / 1000)) \
                'BEGIN { printf "%.3f %.3f\n", us / 1e6, w / 1e6 }'
}

tools=(gwflash)
if command -v stm32flash >/dev/null; then
        tools+=(stm32flash)
else
        echo "note: stm32flash is not installed; measuring gwflash only"
fi

status=0
printf '%-10s %3s %10s %8s %14s\n' tool run "session s" "wall s" "limit/session"
declare -A best
for ((n = 1; n <= RUNS; n++)); do
        for tool in "${tools[@]}"; do
                if ! out=$(run "$tool" "$n"); then
                        status=1
                        printf '%-10s %3d %10s\n' "$tool" "$n" failed
                        continue
                fi
                read -r session wall <<<"$out"
                ratio=$(awk -v l="$limit" -v s="$session" 'BEGIN { printf "%.3f", l / s }')
                printf '%-10s %3d %10s %8s %14s\n' "$tool" "$n" "$session" "$wall" "$ratio"
                if [ -z "${best[$tool]:-}" ] ||
                        awk -v a="$ratio" -v b="${best[$tool]}" 'BEGIN { exit !(a > b) }'; then
                        best[$tool]=$ratio
                fi
        done
done
echo "session: the simulator's clock from the first byte it received to GO; wall: the tool's"
echo "process, start-up and port opening included."
for tool in "${tools[@]}"; do
        [ -n "${best[$tool]:-}" ] && echo "best $tool: ${best[$tool]} of the limit"
done
if [ -n "${best[gwflash]:-}" ] && [ -n "${best[stm32flash]:-}" ]; then
        echo "gwflash / stm32flash (best runs, by speed): $(awk -v a="${best[gwflash]}" \
                -v b="${best[stm32flash]}" 'BEGIN { printf "%.3f", a / b }')"
fi
if [ -n "${best[gwflash]:-}" ]; then
        if awk -v a="${best[gwflash]}" -v t="$TARGET" 'BEGIN { exit !(a >= t) }'; then
                echo "target met: gwflash at ${best[gwflash]} >= $TARGET of the limit"
        else
                echo "target missed: gwflash at ${best[gwflash]} < $TARGET of the limit"
                [ "${STM32_BENCH_STRICT:-0}" = 1 ] && status=1
        fi
fi
exit $status
