#!/bin/bash
# Cross-checks SMP over console against an independent implementation. Debian 12 packages no
# SMP host or device (mcumgr, smpclient and mcuboot's tools are not in the archive; checked with
# apt-cache below), so tests/integration/smp-peer.py, written from the specifications with
# Python's base64 and cbor2 and its own CRC, stands in: it checks its framing of mcumgr's
# published os-reset frame; as a device it takes a whole gwflash install (checking every line
# gwflash writes) and must end holding the image byte for byte; as a host it installs an image
# into smp-sim, whose slot 0 must then be that image byte for byte.
set -u

: "${GW_BUILD:?GW_BUILD must name the build directory}"
: "${GW_SRC:?GW_SRC must name the source directory}"
# shellcheck source=../../tools/lib/common.sh
. "$GW_SRC/tools/lib/common.sh"
SIM=$GW_BUILD/tools/sim/smp-sim
GWFLASH=$GW_BUILD/tools/gwflash
PEER=$GW_SRC/tests/integration/smp-peer.py
MKIMG=$GW_SRC/tools/sim/mcuboot-image.py
PY=/usr/bin/python3

if [ ! -x "$PY" ] || ! "$PY" -c 'import cbor2' 2>/dev/null; then
        echo "SKIP: /usr/bin/python3 with cbor2 is needed (Debian package python3-cbor2)"
        exit 77
fi
if [ ! -x "$SIM" ]; then
        echo "SKIP: tools/sim/smp-sim was not built (libcbor development files missing)"
        exit 77
fi
if "$GWFLASH" -t uart -p /nonexistent -P smp /dev/null 2>&1 | grep -q "unknown protocol 'smp'"; then
        echo "SKIP: gwflash was built without the smp protocol"
        exit 77
fi

CASES_NAME=smp-python
pids=()
cases_cleanup() {
        local p
        for p in "${pids[@]}"; do
                kill "$p" 2>/dev/null
                wait "$p" 2>/dev/null
        done
}
# shellcheck source=cases.sh
. "$GW_SRC/tests/integration/cases.sh"

found=$(apt-cache search --names-only 'mcumgr|smpclient|mcuboot' 2>/dev/null | tr '\n' ';')
echo "note: Debian packages matching mcumgr|smpclient|mcuboot: ${found:-none}; the peer is smp-peer.py"

"$PY" "$MKIMG" --version 1.0.0 --size 20000 --seed 11 "$work/v1.bin"
"$PY" "$MKIMG" --version 3.1.4+1 --size 70000 --seed 12 --protected "$work/v2.bin"

check "vector: smp-peer.py frames mcumgr's published os-reset packet as published" \
        "$PY" "$PEER" vector

# (a) gwflash -> smp-peer.py as the device, at two line rates.
for baud in 115200 1000000; do
        name=dev-$baud
        "$PY" "$PEER" device "$work/$name.tty" "$work/$name.slot0" "$work/v1.bin" \
                >"$work/$name.summary" 2>"$work/$name.err" &
        pid=$!
        pids+=("$pid")
        if ! gw_wait_for 10 grep -q "ready" "$work/$name.err"; then
                fail "$name: smp-peer.py did not come up"
                continue
        fi
        timeout 120 "$GWFLASH" -t uart -p "$work/$name.tty" -b "$baud" -P smp \
                -o poll-interval-ms=100 "$work/v2.bin" >"$work/$name.out" 2>&1
        st=$?
        kill "$pid"
        gw_wait_pid "$pid" 10
        check "$name: gwflash installs through the Python device (exit $st)" test "$st" -eq 0 ||
                tail -n 5 "$work/$name.out"
        echo "  ($name: $(head -n 1 "$work/$name.summary"))"
        check "$name: every line gwflash wrote was well-formed for the Python decoder" \
                grep -q "violations=0" "$work/$name.summary"
        check "$name: ... the device ends running the image, confirmed" \
                grep -q "swap=none confirmed=True" "$work/$name.summary"
        check "$name: ... byte for byte" cmp -s "$work/$name.slot0" "$work/v2.bin"
done

# (b) smp-peer.py as the host -> smp-sim, with console noise.
"$SIM" --link "$work/sim.tty" --baud 1000000 --slot0 "$work/v1.bin" --noise-ms 10 \
        --boot-ms 100 --report "$work/sim.json" --dump-slot0 "$work/sim.slot0" \
        2>"$work/sim.log" &
pid=$!
pids+=("$pid")
if gw_wait_for 10 grep -q "^smp-sim: ready" "$work/sim.log"; then
        timeout 120 "$PY" "$PEER" host "$work/sim.tty" "$work/v2.bin" >"$work/host.out" 2>&1
        st=$?
        kill "$pid"
        gw_wait_pid "$pid" 10
        echo "  ($(cat "$work/host.out"))"
        check "host: smp-peer.py installs into smp-sim (exit $st)" test "$st" -eq 0
        check "host: ... smp-sim's slot 0 is the image byte for byte" \
                cmp -s "$work/sim.slot0" "$work/v2.bin"
        check "host: ... and the device reports it confirmed" \
                test "$(gw_report_field "$work/sim.json" slot0_confirmed)" = true
else
        fail "host: smp-sim did not come up"
fi

if [ "$failures" -gt 0 ]; then
        echo "$failures check(s) failed"
        exit 1
fi
exit 0
