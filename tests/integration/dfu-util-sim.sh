#!/bin/bash
# Cross-checks the DFU device emulator (tools/sim/dfu-sim) against dfu-util, an independent host:
# listing, DFU 1.1 download and upload, DfuSe download/upload with erase and leave, runtime mode
# with DFU_DETACH and re-enumeration, faults (injected errors, stall, disconnect) and counters.
set -u

: "${GW_BUILD:?GW_BUILD must name the build directory}"
SIM=$GW_BUILD/tools/sim/dfu-sim

for prog in dfu-util python3 cmp timeout; do
        if ! command -v "$prog" >/dev/null; then
                echo "SKIP: $prog is not installed (dfu-util, python3 and coreutils are needed)"
                exit 77
        fi
done
if ! pkg-config --exists umockdev-1.0 2>/dev/null &&
        ! ldconfig -p 2>/dev/null | grep -q libumockdev-preload.so.0; then
        echo "SKIP: umockdev is not installed (umockdev and libumockdev-dev are needed)"
        exit 77
fi
if [ ! -x "$SIM" ]; then
        echo "SKIP: $SIM was not built (meson found no umockdev-1.0)"
        exit 77
fi

work=$(mktemp -d /tmp/gw-dfu-util-sim.XXXXXX)
failures=0
serve_pid=
cleanup() {
        if [ -n "$serve_pid" ]; then
                kill "$serve_pid" 2>/dev/null
                wait "$serve_pid" 2>/dev/null
        fi
        if [ "$failures" -eq 0 ]; then rm -rf "$work"; else echo "Work directory kept: $work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() {
        echo "FAIL: $*"
        failures=$((failures + 1))
}
ok() { echo "ok $*"; }

# j FILE EXPR: a value from the emulator's JSON report; r is the report, d its first device.
j() {
        python3 -c 'import json,sys
r = json.load(open(sys.argv[1])); d = r["devices"][0]
print(eval("(" + sys.argv[2] + ")"))' "$1" "$2"
}

# expect NAME FILE EXPR: the Python expression over the report (r, d) holds.
expect() {
        local v
        v=$(j "$2" "$3" 2>&1)
        if [ "$v" != True ]; then
                fail "$1: $3 does not hold (${v})"
                python3 -c 'import json,sys; d = json.load(open(sys.argv[1]))["devices"][0]
print("    ", {k: v for k, v in d.items() if v})' "$2"
                return 1
        fi
        return 0
}

# sim NAME [OPTIONS] -- COMMAND...: runs COMMAND under the emulator; report $work/NAME.json,
# dump $work/NAME.bin, output $work/NAME.log. Returns the command's status.
sim() {
        local name=$1
        shift
        timeout 120 "$SIM" --report "$work/$name.json" --dump "$work/$name.bin" "$@" \
                >"$work/$name.log" 2>&1
}

# same_prefix FILE DUMP [OFFSET]: DUMP holds FILE byte for byte at OFFSET.
same_prefix() {
        cmp -s "$1" <(tail -c +"$((${3:-0} + 1))" "$2" | head -c "$(stat -c %s "$1")")
}

head -c 50000 /dev/urandom >"$work/fw.bin"
head -c 100000 /dev/urandom >"$work/fw2.bin"
cd "$work" || exit 1

# (1) dfu-util -l lists both personalities with their ids, names and serials.
if sim list1 --serial S-ONE --serial S-TWO -- dfu-util -l &&
        grep -q 'Found DFU: \[1d50:6089\].*path="1-1".*name="Internal Flash", serial="S-ONE"' list1.log &&
        grep -q 'Found DFU: \[1d50:6089\].*path="1-2".*serial="S-TWO"' list1.log; then
        ok "1a: dfu-util -l lists two DFU 1.1 devices told apart by serial and path"
else
        fail "1a: dfu-util -l"
        sed 's/^/    /' list1.log
fi
if sim list2 --dfuse --layout "@Internal Flash  /0x08000000/04*016Kg,01*064Kg,07*128Kg" \
        --layout "@Option Bytes  /0x1FFFC000/01*016 e" -- dfu-util -l &&
        grep -q '\[0483:df11\] ver=2200.*alt=0, name="@Internal Flash  /0x08000000/04\*016Kg,01\*064Kg,07\*128Kg"' list2.log &&
        grep -q 'alt=1, name="@Option Bytes  /0x1FFFC000/01\*016 e"' list2.log; then
        ok "1b: dfu-util -l lists the DfuSe device with its layout strings"
else
        fail "1b: dfu-util -l (DfuSe)"
        sed 's/^/    /' list2.log
fi

# (2) DFU 1.1: download then upload in one emulator session; the dump and the upload match, and
# the counters add up: 50000 bytes in 1024-byte blocks = 49 data DNLOADs + 1 zero-length.
if sim dfu11 --transfer-size 1024 --poll-timeout-ms 5 --program-ms 10 -- \
        sh -c 'dfu-util -a 0 -D fw.bin && dfu-util -a 0 -U up.bin'; then
        if ! same_prefix fw.bin dfu11.bin; then
                fail "2: the flash dump differs from the downloaded file"
        elif ! cmp -s fw.bin up.bin; then
                fail "2: the uploaded file differs from the downloaded file"
        elif expect 2 dfu11.json 'd["requests"]["DNLOAD"] == 50 and d["data_blocks"] == 49 and
                d["zero_length_dnloads"] == 1 and d["bytes_out"] == 50000 and
                d["bytes_in"] == 50000 and d["pages_erased"] == 49 and
                d["block_gaps"] == 0 and d["state"] == "dfuIDLE" and
                d["declared_wait_ms"] == 5 * d["busy_reports"] and d["busy_reports"] >= 49 and
                d["requests"]["GETSTATUS"] > d["busy_reports"] and d["stalls"] == 0 and
                d["actual_busy_ms"] == 49 * 12 and d["requests"]["UPLOAD"] == 49'; then
                ok "2: DFU 1.1 download + upload identical; $(j dfu11.json 'd["control_transfers"]') transfers, $(j dfu11.json 'd["busy_reports"]') busy reports"
        fi
else
        fail "2: dfu-util failed against the DFU 1.1 personality"
        tail -n 5 dfu11.log | sed 's/^/    /'
fi

# (3) Busy time: the device is ready only after --program-ms, whatever it declares. Declaring
# 2 ms for 15 ms of programming makes dfu-util poll several times per block; declaring 25 ms for
# 10 ms (+ 4 pages of 2 ms) makes it wait 25 ms for every block.
if sim busy1 --transfer-size 4096 --poll-timeout-ms 2 --program-ms 15 -- \
        dfu-util -a 0 -D fw.bin &&
        expect 3a busy1.json 'd["data_blocks"] == 13 and d["busy_reports"] >= 2 * 13 and
                d["actual_busy_ms"] >= 13 * 15 and d["observed_wait_ms"] >= 13 * 15'; then
        ok "3a: a device slower than it declares is polled until ready ($(j busy1.json 'd["busy_reports"]') busy reports for 13 blocks)"
else
        fail "3a: slow device"
fi
if sim busy2 --transfer-size 4096 --poll-timeout-ms 25 --program-ms 10 -- \
        dfu-util -a 0 -D fw.bin &&
        expect 3b busy2.json 'd["data_blocks"] == 13 and d["busy_reports"] == 14 and
                d["declared_wait_ms"] == 14 * 25 and d["early_polls"] == 0'; then
        ok "3b: dfu-util waits the declared 25 ms: $(j busy2.json 'd["declared_wait_ms"]') ms declared, $(j busy2.json 'round(d["actual_busy_ms"])') ms actual"
else
        fail "3b: declared wait"
fi

# (4) DfuSe at 0x08000000 with leave, on flash that starts programmed (--fill 0): dfu-util must
# erase exactly the pages it writes. 100000 bytes = 49 pages of 2 KiB = 49 blocks of 2048.
LAYOUT="@Internal Flash  /0x08000000/64*002Kg"
if sim dfuse --dfuse --fill 0 --layout "$LAYOUT" -- \
        dfu-util -a 0 -s 0x08000000:leave -D fw2.bin; then
        if ! same_prefix fw2.bin dfuse.bin 0; then
                fail "4: the DfuSe dump differs at 0x08000000"
        elif [ "$(tail -c +$((49 * 2048 + 1)) dfuse.bin | tr -d '\0' | wc -c)" -ne 0 ] ||
                [ "$(head -c $((49 * 2048)) dfuse.bin | tail -c +100001 | tr -d '\377' | wc -c)" -ne 0 ]; then
                fail "4: pages outside the image were touched, or the tail of the last page is not erased"
        elif expect 4 dfuse.json 'd["data_blocks"] == 49 and d["erase_page"] == 49 and
                d["pages_erased"] == 49 and d["mass_erase"] == 0 and d["set_address"] >= 2 and
                d["zero_length_dnloads"] == 1 and d["errors_reported"] == 0 and
                d["busy_reports"] == d["requests"]["DNLOAD"]'; then
                ok "4: DfuSe download + leave: dump identical, 49 pages erased, $(j dfuse.json 'd["set_address"]') SET_ADDRESS"
        fi
else
        fail "4: dfu-util failed against the DfuSe personality"
        tail -n 5 dfuse.log | sed 's/^/    /'
fi

# (4b) DfuSe mass erase then download.
if sim masserase --dfuse --fill 0 --layout "$LAYOUT" -- \
        dfu-util -a 0 -s 0x08000000:mass-erase:force -D fw2.bin &&
        same_prefix fw2.bin masserase.bin &&
        [ "$(tail -c +100001 masserase.bin | tr -d '\377' | wc -c)" -eq 0 ] &&
        expect 4b masserase.json 'd["mass_erase"] == 1 and d["pages_erased"] == 64 and
                d["erase_page"] == 0'; then
        ok "4b: DfuSe mass erase + download: all 64 pages erased, dump identical"
else
        fail "4b: DfuSe mass erase"
        tail -n 5 masserase.log | sed 's/^/    /'
fi

# (5) DfuSe upload of a region read back from preloaded memory, on the F4-like layout.
if sim dfuse-up --dfuse --load fw2.bin -- \
        dfu-util -a 0 -s 0x08000000:100000 -U up2.bin && cmp -s fw2.bin up2.bin; then
        ok "5: DfuSe upload of 100000 bytes at 0x08000000 is identical"
else
        fail "5: DfuSe upload"
        tail -n 5 dfuse-up.log | sed 's/^/    /'
fi

# (6) Faults must make dfu-util fail, and the device must say why.
if sim err1 --error errWRITE:3 -- dfu-util -a 0 -D fw.bin; then
        fail "6a: dfu-util succeeded although block 3 failed with errWRITE"
elif expect 6a err1.json 'd["state"] == "dfuERROR" and d["status"] == "errWRITE" and
        d["data_blocks"] == 3'; then
        ok "6a: errWRITE at block 3 makes dfu-util fail"
fi
if sim err2 --dfuse --layout "$LAYOUT" --error errERASE:2 -- \
        dfu-util -a 0 -s 0x08000000 -D fw2.bin; then
        fail "6b: dfu-util succeeded although the second erase failed"
elif expect 6b err2.json 'd["status"] == "errERASE" and d["requests"]["DNLOAD"] == 2 and
        d["erase_page"] == 1 and d["data_blocks"] == 0'; then
        ok "6b: DfuSe errERASE at the second erase makes dfu-util fail"
fi
if sim err3 --stall 4 -- dfu-util -a 0 -D fw.bin; then
        fail "6c: dfu-util succeeded through a stalled request"
elif expect 6c err3.json 'd["stalls"] == 1 and d["status"] == "errSTALLEDPKT"'; then
        ok "6c: a stalled request makes dfu-util fail"
fi
if sim err4 --dfuse --layout "$LAYOUT" -- dfu-util -a 0 -s 0x08200000 -D fw2.bin; then
        fail "6d: dfu-util succeeded writing outside the memory"
elif expect 6d err4.json 'd["requests"]["DNLOAD"] == 0'; then
        ok "6d: dfu-util refuses an address outside the layout string it read"
fi
if sim err5 --transfer-size 4096 --stuck-busy 2 -- timeout 3 dfu-util -a 0 -D fw.bin; then
        fail "6e: dfu-util succeeded against a device stuck busy"
elif expect 6e err5.json 'd["state"] == "dfuDNBUSY" and d["busy_reports"] > 10'; then
        ok "6e: a device stuck in dfuDNBUSY never completes ($(j err5.json 'd["busy_reports"]') busy reports in 3 s)"
fi

# (6f) A block programmed wrong with status OK (--corrupt 3): dfu-util reports success, and its
# own upload shows the one flipped bit, in the middle of block 3 (1024-byte blocks).
if sim corrupt --transfer-size 1024 --corrupt 3 -- \
        sh -c 'dfu-util -a 0 -D fw.bin && dfu-util -a 0 -U up3.bin' &&
        [ "$(cmp -l fw.bin up3.bin | wc -l)" -eq 1 ] &&
        [ "$(cmp -l fw.bin up3.bin | awk '{print $1}')" -eq $((2 * 1024 + 512 + 1)) ]; then
        ok "6f: --corrupt 3: dfu-util succeeds, its read-back differs in one byte of block 3"
else
        fail "6f: --corrupt: $(cmp -l fw.bin up3.bin 2>&1 | head -n 3 | tr '\n' ' ')"
fi

# (7) Runtime mode: dfu-util sends DFU_DETACH (and a USB reset when the device will not detach
# itself); the device leaves, re-enumerates in DFU mode with the same serial and takes the image.
for variant in will-detach no-will-detach; do
        if sim "rt-$variant" --runtime --"$variant" --serial RT-1 -- \
                dfu-util -E 1 -S RT-1 -a 0 -D fw.bin &&
                same_prefix fw.bin "rt-$variant.bin" &&
                expect "7 $variant" "rt-$variant.json" 'd["enumerations"] == 2 and
                        d["detaches"] == 1 and d["mode"] == "dfu" and d["state"] == "dfuIDLE"'; then
                ok "7: runtime mode ($variant): detach, re-enumeration as 1d50:6089, download identical"
        else
                fail "7: runtime mode ($variant)"
                grep -v Download "rt-$variant.log" | tail -n 5 | sed 's/^/    /'
        fi
done

# (8) Serving mode for daemons: --env-file, faults through the control FIFO for one device,
# the disconnected device comes back, SIGUSR1 writes the report.
"$SIM" --serial S-A --serial S-B --env-file serve.env --control serve.ctl --report serve.json \
        --dump serve.bin --reconnect-ms 200 >serve.out 2>serve.err &
serve_pid=$!
for _ in $(seq 100); do
        [ -f serve.env ] && break
        sleep 0.05
done
if [ ! -f serve.env ]; then
        fail "8: the emulator wrote no env file"
else
        (
                set -a
                # shellcheck disable=SC1091
                . ./serve.env
                set +a
                echo "@S-B disconnect 3" >serve.ctl
                sleep 0.2
                if timeout 30 dfu-util -S S-B -a 0 -D fw.bin >serve1.log 2>&1; then
                        echo "FAIL: 8: dfu-util succeeded through a disconnect"
                        exit 1
                fi
                sleep 0.5
                timeout 30 dfu-util -S S-B -a 0 -D fw.bin >serve2.log 2>&1 || exit 2
                timeout 30 dfu-util -S S-A -a 0 -D fw2.bin >serve3.log 2>&1 || exit 3
        )
        st=$?
        kill -USR1 "$serve_pid"
        sleep 0.3
        if [ "$st" -ne 0 ]; then
                fail "8: serving mode step $st"
        elif ! grep -q 'LIBUSB_ERROR_NO_DEVICE' serve1.log; then
                fail "8: dfu-util did not see the device vanish"
        elif expect 8 serve.json 'r["devices"][1]["disconnects"] == 1 and
                r["devices"][1]["enumerations"] == 2 and d["disconnects"] == 0 and
                d["data_blocks"] == 98'; then
                kill "$serve_pid"
                wait "$serve_pid"
                st=$?
                serve_pid=
                if [ "$st" -ne 0 ] || ! same_prefix fw.bin serve.bin.2 ||
                        ! same_prefix fw2.bin serve.bin || [ -e serve.env ] || [ -e serve.ctl ]; then
                        fail "8: exit status $st, dumps or cleanup wrong"
                else
                        ok "8: serving mode: control FIFO disconnect on one device, it returns, both dumps identical"
                fi
        fi
fi

if [ "$failures" -gt 0 ]; then
        echo "$failures check(s) failed"
        exit 1
fi
exit 0
