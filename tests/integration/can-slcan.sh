#!/bin/bash
# Cross-checks the can transport's slcan backend and can-sim against python-can 4.1 (slcan), an
# independent implementation:
#   (a) python-can as the host talking to can-sim: UDS over an ISO-TP written in Python
#       (can-uds-client.py): identification, a whole programming sequence checked against the
#       ECU's flash dump, an interrupted download resumed, and the simulator's faults;
#   (b) the transport against python-can's own slcan code playing the adapter on a socat pty
#       pair (can-slcan-peer.py): what the transport writes must parse with python-can's parser,
#       what python-can writes with the transport's;
#   (c) the transport against can-sim: two nodes sharing the adapter, recovery after the adapter
#       drops its open state, the bus-load limit measured on the simulated bus, and the bus's
#       arbitration and bit-time pacing seen from the host.
# SocketCAN cannot run here (no AF_CAN); test-can covers what it can of it.
set -u

: "${GW_BUILD:?GW_BUILD must name the build directory}"
: "${GW_SRC:?GW_SRC must name the source directory}"
SIM=$GW_BUILD/tools/sim/can-sim
HOST=$GW_BUILD/tests/integration/can-host
PY=/usr/bin/python3
CLIENT=$GW_SRC/tests/integration/can-uds-client.py
PEER=$GW_SRC/tests/integration/can-slcan-peer.py

if ! [ -x "$PY" ] || ! "$PY" -c 'import can' 2>/dev/null; then
        echo "SKIP: python3-can is not installed for /usr/bin/python3 (Debian package python3-can)"
        exit 77
fi
for prog in socat timeout cmp; do
        if ! command -v "$prog" >/dev/null; then
                echo "SKIP: $prog is not installed"
                exit 77
        fi
done
for b in "$SIM" "$HOST"; do
        [ -x "$b" ] || { echo "FAIL: $b was not built"; exit 1; }
done

CASES_NAME=can-slcan
pids=()
cases_cleanup() {
        local p
        for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
        for p in "${pids[@]}"; do timeout 5 tail --pid="$p" -f /dev/null 2>/dev/null; done
}
# shellcheck source=cases.sh
. "$GW_SRC/tests/integration/cases.sh"

# json FILE EXPR: a value from a JSON report (EXPR indexes the parsed object r).
json() {
        python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"
}

# start_sim NAME [can-sim options...]: can-sim at $work/NAME.tty, report $work/NAME.json, flash
# dumps in $work/NAME.dump/, control FIFO $work/NAME.ctl; waits for its ready line. Sets sim_pid.
start_sim() {
        local name=$1 i
        shift
        mkdir -p "$work/$name.dump"
        "$SIM" --link "$work/$name.tty" --report "$work/$name.json" --dump-dir "$work/$name.dump" \
                --control "$work/$name.ctl" --seed 42 -v "$@" >"$work/$name.out" 2>"$work/$name.log" &
        sim_pid=$!
        pids+=("$sim_pid")
        for ((i = 0; i < 100; i++)); do
                grep -q '^can-sim: ready' "$work/$name.out" 2>/dev/null && return 0
                sleep 0.05
        done
        fail "$name: can-sim did not get ready"
        return 1
}

# stop_sim: SIGTERM, wait for the report and the dumps.
stop_sim() {
        kill -TERM "$sim_pid" 2>/dev/null
        timeout 10 tail --pid="$sim_pid" -f /dev/null
}

client() {
        timeout 60 "$PY" "$CLIENT" "$@"
}

head -c 20000 /dev/urandom >"$work/img.bin"
head -c 12000 /dev/urandom >"$work/img2.bin"

# ---- (a) python-can <-> can-sim ----------------------------------------------------------------

if start_sim a --ecu ecu1,tx=0x7e0,rx=0x7e8,version=1.4.1,serial=A-1,stmin=1,erase-ms=10,next-version=1.4.2 \
        --ecu ecu2,tx=0x7e1,rx=0x7e9; then
        out=$(client "$work/a.tty" rdbi F18C F195 F191 F1A0 2>&1)
        check "a1: python-can reads the ECU's DIDs (multi-frame answers included)" \
                [ "$out" = "$(printf 'F18C=A-1\nF195=1.4.1\nF191=HW-SIM-1\nF1A0=00000000')" ]
        [ "$out" = "$(printf 'F18C=A-1\nF195=1.4.1\nF191=HW-SIM-1\nF1A0=00000000')" ] || echo "$out"
        out=$(client "$work/a.tty" --tx 0x7e1 --rx 0x7e9 rdbi F195 2>&1)
        check "a2: the second ECU answers on its own ids" [ "$out" = "F195=1.0.0" ]
        out=$(client "$work/a.tty" raw 7DF 023E00CCCCCCCCCC 2>&1)
        check "a3: a functional TesterPresent is answered (lowest response id first)" \
                [ "$out" = "7E8 027e00cccccccccc" ]
        out=$(client "$work/a.tty" flash "$work/img.bin" 0x1000 2>&1)
        echo "$out" | sed 's/^/    /'
        check "a4: a whole programming sequence from python-can" \
                grep -q "flashed 20000 bytes in 20 blocks, version 1.4.2" <<<"$out"
        out=$(client "$work/a.tty" flash "$work/img2.bin" 0x20000 --stop-after 5 2>&1)
        out2=$(client "$work/a.tty" flash "$work/img2.bin" 0x20000 --resume 2>&1)
        echo "$out2" | sed 's/^/    /'
        check "a5: an interrupted download resumes from F1A0 without a new erase" \
                grep -q "resume point 5120" <<<"$out2"
        check "a5: the rest of it programmed" grep -q "flashed 6880 bytes in 7 blocks" <<<"$out2"
        # Run-time faults through the control channel.
        echo "nrc ecu1/0x34:0x70" >"$work/a.ctl"
        sleep 0.2
        out=$(client "$work/a.tty" flash "$work/img2.bin" 0x30000 2>&1)
        check "a6: --nrc 0x34:0x70 refuses RequestDownload" grep -q "NRC 0x70 for service 0x34" <<<"$out"
        echo "secret ecu1=0x12345678" >"$work/a.ctl"
        sleep 0.2
        out=$(client "$work/a.tty" flash "$work/img2.bin" 0x30000 2>&1)
        check "a7: a wrong secret: invalid key (0x35)" grep -q "NRC 0x35 for service 0x27" <<<"$out"
        out=$(client "$work/a.tty" flash "$work/img2.bin" 0x30000 --secret 0x12345678 --stop-after 1 2>&1)
        check "a7: the key from the new secret unlocks" grep -q "stopped after 1 blocks" <<<"$out"
        echo "wrong-sequence ecu1" >"$work/a.ctl"
        sleep 0.2
        out=$(client "$work/a.tty" flash "$work/img2.bin" 0x38000 --secret 0x12345678 2>&1)
        check "a8: wrong-sequence answers TransferData with 0x73 once" \
                grep -q "NRC 0x73 for service 0x36" <<<"$out"
        echo "silent ecu2" >"$work/a.ctl"
        sleep 0.2
        out=$(client "$work/a.tty" --tx 0x7e1 --rx 0x7e9 rdbi F195 2>&1)
        check "a9: a silent ECU does not answer" grep -q "no answer" <<<"$out"
        echo "answer ecu2" >"$work/a.ctl"
        echo "lose-frame 1" >"$work/a.ctl"
        sleep 0.2
        out=$(client "$work/a.tty" --tx 0x7e1 --rx 0x7e9 rdbi F195 2>&1)
        check "a10: a frame lost on the bus: the request goes unanswered" grep -q "no answer" <<<"$out"
        out=$(client "$work/a.tty" --tx 0x7e1 --rx 0x7e9 rdbi F195 2>&1)
        check "a10: the next one is answered" [ "$out" = "F195=1.0.0" ]
        stop_sim
        check "a: the flash dump holds the image at 0x1000" \
                cmp -s <(dd if="$work/a.dump/ecu1.bin" bs=4096 skip=1 count=5 2>/dev/null | head -c 20000) "$work/img.bin"
        check "a: the flash dump holds the resumed image at 0x20000" \
                cmp -s <(dd if="$work/a.dump/ecu1.bin" bs=4096 skip=32 count=3 2>/dev/null | head -c 12000) "$work/img2.bin"
        check "a: the report counts the programming (33024 bytes, 0x78 sent)" \
                [ "$(json "$work/a.json" 'r["ecus"][0]["bytes_programmed"]')" = 33024 -a \
                "$(json "$work/a.json" 'r["ecus"][0]["nrcs"].get("0x78", 0) > 0')" = True ]
        check "a: the report counts the injected faults" \
                [ "$(json "$work/a.json" '[r["bus"]["lost"], r["ecus"][0]["nrcs"].get("0x70"), r["ecus"][0]["nrcs"].get("0x73"), r["ecus"][0]["nrcs"].get("0x35")]')" = "[1, 1, 1, 1]" ]
fi

# ---- (b) the transport <-> python-can playing the adapter ------------------------------------

socat PTY,link="$work/b.A",rawer PTY,link="$work/b.B",rawer 2>"$work/b.socat.log" &
pids+=($!)
for ((i = 0; i < 100; i++)); do [ -e "$work/b.A" ] && [ -e "$work/b.B" ] && break; sleep 0.05; done
"$PY" "$PEER" "$work/b.B" --frames 5 --reply 7E8:0462F1A0010203 --reply 18DAF110:0250:ext \
        --reply 123:00 --reply 7E8:023E00 >"$work/b.peer" 2>&1 &
peer=$!
pids+=("$peer")
for ((i = 0; i < 100; i++)); do grep -q ready "$work/b.peer" && break; sleep 0.05; done
timeout 30 "$HOST" --port "$work/b.A" --node 0x7e0:0x7e8 --node 0x18da10f1:0x18daf110:ext \
        --send 0:7E0:0322F1A0 --send 1:18DA10F1:021001 --send 0:7E0: \
        --send 0:7E0:1122334455667788 --send 1:18DA10F1:00 --expect 3 --timeout 10000 \
        >"$work/b.host" 2>&1
st=$?
timeout 10 tail --pid="$peer" -f /dev/null
sed 's/^/    peer: /' "$work/b.peer"
sed 's/^/    host: /' "$work/b.host"
check "b1: the transport configures python-can's adapter with V, C, S6, O" \
        [ "$(grep '^cmd' "$work/b.peer" | tr '\n' ' ')" = "cmd V cmd C cmd S6 cmd O " ]
check "b2: python-can's parser reads every frame the transport wrote, in order" \
        [ "$(grep '^frame' "$work/b.peer" | tr '\n' ' ')" = "frame 7E0 std 0322F1A0 frame 18DA10F1 ext 021001 frame 7E0 std  frame 7E0 std 1122334455667788 frame 18DA10F1 ext 00 " ]
check "b3: the transport parses python-can's frames, to the node whose rx id they carry" \
        [ "$st" -eq 0 -a "$(grep -c '^rx 0 7E8 0462F1A0010203 ' "$work/b.host")" = 1 -a \
        "$(grep -c '^rx 1 18DAF110 0250 ' "$work/b.host")" = 1 -a \
        "$(grep -c '^rx 0 7E8 023E00 ' "$work/b.host")" = 1 -a "$(grep -c ' 123 ' "$work/b.host")" = 0 ]

# ---- (c) the transport <-> can-sim --------------------------------------------------------------

if start_sim c1 --ecu ecu1,tx=0x7e0,rx=0x7e8 --ecu ecu2,tx=0x7e1,rx=0x7e9; then
        timeout 30 "$HOST" --port "$work/c1.tty" --node 0x7e0:0x7e8 --set functional-id=0x7df \
                --node 0x7e1:0x7e9 --send 0:7E0:0322F1A0CCCCCCCC --send 1:7E1:0322F1A0CCCCCCCC \
                --send 0:7DF:023E00CCCCCCCCCC --expect 4 --timeout 5000 >"$work/c1.host" 2>&1
        st=$?
        sed 's/^/    /' "$work/c1.host"
        check "c1: two nodes on one adapter, each gets its ECU's answers (functional request too)" \
                [ "$st" -eq 0 -a "$(grep -c '^rx 0 7E8 0762F1A000000000 ' "$work/c1.host")" = 1 -a \
                "$(grep -c '^rx 1 7E9 0762F1A000000000 ' "$work/c1.host")" = 1 -a \
                "$(grep -c '^rx 0 7E8 027E00CCCCCCCCCC ' "$work/c1.host")" = 1 -a \
                "$(grep -c '^rx 1 7E9 027E00CCCCCCCCCC ' "$work/c1.host")" = 1 ]
        stop_sim
fi

# The adapter loses its open state after 10 frames (what it had queued for the bus is lost with
# it, as with a real reset): frames are refused with BEL, the transport configures it again and
# sends the refused frames; requests keep being answered. Bus-load 20 and tx-burst 1 keep the
# adapter's queue short, so that the reset costs at most the frame it was taking.
if start_sim c2 --ecu ecu1,tx=0x7e0,rx=0x7e8 --reset-adapter-after 10; then
        timeout 30 "$HOST" --port "$work/c2.tty" --set bus-load=20 --set tx-burst=1 \
                --node 0x7e0:0x7e8 \
                --send 0:7E0:023E00CCCCCCCCCC --repeat 40 --expect 38 --hold 1000 --timeout 10000 \
                -v >"$work/c2.host" 2>"$work/c2.host.log"
        stop_sim
        got=$(grep -c '^rx 0 7E8 027E00' "$work/c2.host")
        echo "    $got of 40 answered; the transport: $(grep -o 'slcan: [0-9]* refused frames sent again' "$work/c2.host.log")"
        check "c2: after the adapter's reset the transport configures it again and the requests are answered" \
                [ "$(json "$work/c2.json" 'r["adapter"]["resets"]')" = 1 -a "$got" -ge 38 -a \
                "$(json "$work/c2.json" 'r["ecus"][0]["requests"]')" = "$got" -a \
                "$(grep -c 'refused frames sent again' "$work/c2.host.log")" -ge 1 ]
        check "c2: the adapter was configured twice (C, S6, O)" \
                [ "$(grep -c 'slcan configuring -> open' "$work/c2.host.log")" = 2 ]
fi

# The bus-load limit: 300 frames from a node no ECU answers, at 125 kbit/s and bus-load 40, are
# spread so that they take at most 40 % of the simulated bus's time (tx-burst 1: none sent ahead
# of the schedule, which would add up to tx-burst - 1 frames to the span's share).
if start_sim c3 --bitrate 125000 --ecu ecu1,tx=0x7e0,rx=0x7e8; then
        timeout 30 "$HOST" --port "$work/c3.tty" --set bitrate=125000 --set bus-load=40 \
                --set tx-burst=1 \
                --node 0x100:0x101 --send 0:100:5555555555555555 --send 0:100:0000000000000000 \
                --send 0:100:FFFFFFFFFFFFFFFF --repeat 100 --expect 0 --hold 1500 \
                >"$work/c3.host" 2>&1
        stop_sim
        load=$(json "$work/c3.json" 'round(r["bus"]["load"], 3)')
        frames=$(json "$work/c3.json" 'r["bus"]["frames"]')
        echo "    300 frames: $frames on the bus, load $load"
        check "c3: bus-load 40 keeps our frames at or under 40 % of the bus (measured $load)" \
                python3 -c "import sys; l=float(sys.argv[1]); sys.exit(0 if $frames == 300 and 0.30 <= l <= 0.405 else 1)" "$load"
fi

# The simulated bus paces by bit time and arbitrates: 8 ECUs answer one functional request at
# 10 kbit/s; the answers come lowest id first, each a frame time (>= 11.1 ms) after the last.
ecus=()
for i in 0 1 2 3 4 5 6 7; do
        ecus+=(--ecu "$(printf 'e%d,tx=0x%x,rx=0x%x' "$i" $((0x7ef - i * 2)) $((0x7a0 - i * 2)))")
done
if start_sim c4 --bitrate 10000 "${ecus[@]}"; then
        timeout 30 "$HOST" --port "$work/c4.tty" --set bitrate=10000 --set functional-id=0x7df \
                --node 0x7e0:0x7a0 --node 0x7e1:0x79e --node 0x7e2:0x79c --node 0x7e3:0x79a \
                --node 0x7e4:0x798 --node 0x7e5:0x796 --node 0x7e6:0x794 --node 0x7e7:0x792 \
                --send 0:7DF:023E00CCCCCCCCCC --expect 8 --timeout 5000 >"$work/c4.host" 2>&1
        st=$?
        stop_sim
        sed 's/^/    /' "$work/c4.host"
        check "c4: answers in arbitration order, no faster than the bus at 10 kbit/s" \
                python3 - "$work/c4.host" <<'PY'
import sys
rx = [l.split() for l in open(sys.argv[1]) if l.startswith("rx ")]
ids = [int(r[2], 16) for r in rx]
t = [int(r[4][1:]) for r in rx]
# Each answer is a frame of at least 111 bits (11.1 ms) after the one before it, measured from
# the first (absolute, so that the host's own wake-up jitter does not count), 2 ms of slack.
ok = len(rx) == 8 and ids == sorted(ids) and all(t[i] - t[0] >= i * 11100 - 2000 for i in range(8))
sys.exit(0 if ok else 1)
PY
fi

if [ "$failures" -gt 0 ]; then
        echo "$failures check(s) failed"
        exit 1
fi
exit 0
