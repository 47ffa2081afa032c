#!/bin/bash
# Cross-checks YMODEM against lrzsz, an independent implementation: sb sending to ymodem-sim
# (clean, with faults, pacing checked), gwflash sending to rb over a socat pty pair, and gwflash
# sending to ymodem-sim (clean, with a fault, and a cancelled transfer that must fail).
set -u

: "${GW_BUILD:?GW_BUILD must name the build directory}"
: "${GW_SRC:?GW_SRC must name the source directory}"
# shellcheck source=../../tools/lib/common.sh
. "$GW_SRC/tools/lib/common.sh"
SIM=$GW_BUILD/tools/sim/ymodem-sim
GWFLASH=$GW_BUILD/tools/gwflash

for prog in sb rb socat timeout cmp; do
        if ! command -v "$prog" >/dev/null; then
                echo "SKIP: $prog is not installed (lrzsz, socat and coreutils are needed)"
                exit 77
        fi
done
if [ ! -x "$SIM" ]; then
        echo "FAIL: $SIM was not built"
        exit 1
fi

work=$(mktemp -d /tmp/gw-ymodem-lrzsz.XXXXXX)
pids=()
failures=0
skipped=0

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

fail() {
        echo "FAIL: $*"
        failures=$((failures + 1))
}

# wait_for_path PATH SECONDS
wait_for_path() {
        local i
        for ((i = 0; i < $2 * 20; i++)); do
                [ -e "$1" ] && return 0
                sleep 0.05
        done
        return 1
}

# start_sim NAME BAUD [SIM OPTIONS...]: a one-session simulator at $work/NAME.tty, storing into
# $work/NAME.out and reporting into $work/NAME.json. Sets sim_pid.
start_sim() {
        local name=$1 baud=$2
        shift 2
        mkdir -p "$work/$name.out"
        "$SIM" --link "$work/$name.tty" --out "$work/$name.out" --report "$work/$name.json" \
                --baud "$baud" --once --idle-timeout 5000 "$@" 2>"$work/$name.log" &
        sim_pid=$!
        pids+=("$sim_pid")
        if ! wait_for_path "$work/$name.tty" 5; then
                fail "$name: the simulator did not create its link"
                return 1
        fi
}

# check_sim NAME: the simulator exited 0 and stored exactly img.bin.
check_sim() {
        local name=$1 st result
        gw_wait_pid "$sim_pid" 30
        st=$?
        result=$(gw_report_field "$work/$name.json" result)
        if [ "$st" -ne 0 ] || [ "$result" != ok ]; then
                fail "$name: simulator status $st, result '${result:-none}'"
                sed 's/^/    /' "$work/$name.log" "$work/$name.json" 2>/dev/null
                return 1
        fi
        if ! cmp -s "$work/img.bin" "$work/$name.out/img.bin"; then
                fail "$name: the received file differs"
                return 1
        fi
        if [ "$(gw_report_field "$work/$name.json" sha256)" != "$(sha256sum <"$work/img.bin" | cut -d' ' -f1)" ]; then
                fail "$name: the reported sha256 is wrong"
                return 1
        fi
        return 0
}

head -c 102400 /dev/urandom >"$work/img.bin"

# (a) sb -> ymodem-sim at 115200: identical file, and the line is paced: 100 blocks of 1029 bytes
# are 8.94 s of line time at 115200 baud (10 bits a byte). Never faster than that; the upper
# bound leaves room for a loaded CI machine while still catching a pacer that runs slow.
if start_sim a 115200 -v; then
        (cd "$work" && timeout 60 sb --ymodem -k -q img.bin <a.tty >a.tty)
        st=$?
        [ "$st" -eq 0 ] || fail "a: sb exited with $st"
        if check_sim a; then
                ms=$(gw_report_field "$work/a.json" duration_ms)
                rate=$(gw_report_field "$work/a.json" bytes_per_s)
                if [ "$ms" -lt 8900 ] || [ "$ms" -gt 13500 ]; then
                        fail "a: 100 KiB at 115200 took $ms ms; the pacing should make it ~9000"
                elif [ "$rate" -gt 11520 ]; then
                        fail "a: $rate payload bytes/s is faster than the line (11520)"
                else
                        echo "ok a: sb -> ymodem-sim, 100 KiB at 115200 in $ms ms ($rate B/s)"
                fi
        fi
fi

# (b) the same with block 3 corrupted once, a byte dropped and one more EOT NAKed: the sender
# recovers and the file is still identical.
if start_sim b 921600 --corrupt-block 3 --drop-byte 20000 --nak-eot --byte-timeout 300; then
        (cd "$work" && timeout 60 sb --ymodem -k -q img.bin <b.tty >b.tty)
        st=$?
        [ "$st" -eq 0 ] || fail "b: sb exited with $st"
        if check_sim b; then
                naks=$(gw_report_field "$work/b.json" naks)
                if [ "$naks" -lt 3 ]; then
                        fail "b: only $naks NAKs: the faults did not fire"
                else
                        echo "ok b: sb -> ymodem-sim with corrupt-block 3, drop-byte, nak-eot ($naks NAKs)"
                fi
        fi
fi

# (b2) a fault injected at run time through the control FIFO.
if start_sim b2 921600 --control "$work/b2.ctl" --c-interval 200; then
        echo "corrupt-block 5" >"$work/b2.ctl"
        sleep 0.3
        (cd "$work" && timeout 60 sb --ymodem -k -q img.bin <b2.tty >b2.tty)
        st=$?
        [ "$st" -eq 0 ] || fail "b2: sb exited with $st"
        if check_sim b2; then
                naks=$(gw_report_field "$work/b2.json" naks)
                if [ "$naks" -ne 1 ]; then
                        fail "b2: $naks NAKs, expected exactly 1 from corrupt-block 5"
                else
                        echo "ok b2: control FIFO fault (corrupt-block 5), file identical"
                fi
        fi
fi

if [ ! -x "$GWFLASH" ]; then
        echo "SKIP: parts c, d, e: $GWFLASH is not built yet"
        skipped=1
else
        # (c) gwflash -> rb over a socat pty pair.
        socat PTY,link="$work/c.A",rawer PTY,link="$work/c.B",rawer 2>"$work/c.socat.log" &
        socat_pid=$!
        pids+=("$socat_pid")
        if wait_for_path "$work/c.A" 5 && wait_for_path "$work/c.B" 5; then
                mkdir -p "$work/c.out"
                (cd "$work/c.out" && exec timeout 120 rb --ymodem -y -q <../c.B >../c.B) &
                rb_pid=$!
                pids+=("$rb_pid")
                timeout 120 "$GWFLASH" --transport uart --port "$work/c.A" --baud 115200 \
                        --protocol ymodem "$work/img.bin" >"$work/c.gwflash.log" 2>&1
                st=$?
                gw_wait_pid "$rb_pid" 15
                rb_st=$?
                if [ "$st" -ne 0 ]; then
                        fail "c: gwflash exited with $st"
                        sed 's/^/    /' "$work/c.gwflash.log"
                elif [ "$rb_st" -ne 0 ]; then
                        fail "c: rb exited with $rb_st"
                elif ! cmp -s "$work/img.bin" "$work/c.out/img.bin"; then
                        fail "c: the file rb received differs"
                else
                        echo "ok c: gwflash -> rb over socat"
                fi
        else
                fail "c: socat did not create the pty pair"
        fi
        kill "$socat_pid" 2>/dev/null

        # (d) gwflash -> ymodem-sim at 115200 with one block corrupted.
        if start_sim d 115200 --corrupt-block 2; then
                timeout 120 "$GWFLASH" --transport uart --port "$work/d.tty" --baud 115200 \
                        --protocol ymodem "$work/img.bin" >"$work/d.gwflash.log" 2>&1
                st=$?
                if [ "$st" -ne 0 ]; then
                        fail "d: gwflash exited with $st"
                        sed 's/^/    /' "$work/d.gwflash.log"
                        gw_wait_pid "$sim_pid" 10
                elif check_sim d; then
                        echo "ok d: gwflash -> ymodem-sim with corrupt-block 2" \
                                "($(gw_report_field "$work/d.json" bytes_per_s) B/s)"
                fi
        fi

        # (e) the node cancels after block 2: gwflash must not claim success.
        if start_sim e 921600 --cancel-after 2; then
                timeout 120 "$GWFLASH" --transport uart --port "$work/e.tty" --baud 921600 \
                        --protocol ymodem "$work/img.bin" >"$work/e.gwflash.log" 2>&1
                st=$?
                gw_wait_pid "$sim_pid" 10
                if [ "$st" -eq 0 ]; then
                        fail "e: gwflash exited 0 although the node cancelled"
                elif [ "$st" -eq 124 ]; then
                        fail "e: gwflash hung after the node cancelled"
                elif [ "$(gw_report_field "$work/e.json" result)" != aborted ]; then
                        fail "e: the simulator reported '$(gw_report_field "$work/e.json" result)'"
                else
                        echo "ok e: gwflash fails (status $st) when the node cancels"
                fi
        fi
fi

if [ "$failures" -gt 0 ]; then
        echo "$failures check(s) failed"
        exit 1
fi
[ "$skipped" -eq 1 ] && echo "(gwflash parts skipped: see above)"
exit 0
