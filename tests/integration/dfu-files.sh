#!/bin/bash
# DFU files as build tools write them, flashed by gwflash against the umockdev DFU emulator and
# cross-checked with dfu-util on the same emulator: a DFU suffix made by dfu-suffix (not sent to
# the device; its ids checked against the board's DFU-mode and run-time ids; a bad CRC refused
# before any transfer; format=raw sends the file as it is) and a DfuSe container made by
# dfuse-pack (elements written where they say, two of them sharing a page erased once, nothing
# else erased, the same memory as dfu-util leaves; several alternate settings, option address
# and a DFU 1.1 device refused with a reason).
set -u

GWFLASH_TEST=dfu-files
GWFLASH_TEST_PROGS="dfu-util dfu-suffix dfuse-pack"
# shellcheck source=gwflash-lib.sh
. "$(dirname "$0")/gwflash-lib.sh"

# holds NAME EXPR: the Python expression over NAME's report holds (d: its first device).
holds() {
        local v
        v=$(python3 -c 'import json,sys
d = json.load(open(sys.argv[1]))["devices"][0]
print(eval("(" + sys.argv[2] + ")"))' "$work/$1.json" "$2" 2>&1)
        if [ "$v" != True ]; then
                echo "    $2 does not hold ($v)"
                return 1
        fi
}

# show NAME: what the case printed, for a failure.
show() { sed 's/^/    /' "$work/$1.err" "$work/$1.out" | tail -n 12; }

# expect_refused NAME WHAT RC TEXT: exit 1, TEXT in the message, no data block sent.
expect_refused() {
        if [ "$3" -ne 1 ]; then
                fail "$2: exit $3, expected 1"
                show "$1"
        elif ! grep -qF -- "$4" "$work/$1.err"; then
                fail "$2: no \"$4\" in the message"
                show "$1"
        elif ! holds "$1" 'd["data_blocks"] == 0 and d["pages_erased"] == 0'; then
                fail "$2: the device was written although the file was refused"
        else
                pass "$2"
        fi
}

cd "$work" || exit 1
head -c 50000 /dev/urandom >fw.bin
head -c 5000 /dev/urandom >e1.bin
head -c 1000 /dev/urandom >e2.bin
head -c 3000 /dev/urandom >e3.bin
quiet() { "$@" >/dev/null 2>&1; }

# --- DFU suffix (DFU 1.1 device 1d50:6089; run-time ids 1d50:6088).
cp fw.bin fw-dfu.bin && quiet dfu-suffix -v 1d50 -p 6089 -a fw-dfu.bin
cp fw.bin fw-rt.bin && quiet dfu-suffix -v 1d50 -p 6088 -a fw-rt.bin
cp fw.bin fw-any.bin && quiet dfu-suffix -a fw-any.bin
cp fw.bin fw-other.bin && quiet dfu-suffix -v 1234 -p 5678 -a fw-other.bin
# A flipped bit in the image: the suffix's CRC no longer matches.
cp fw-dfu.bin fw-crc.bin
printf '\x55' | dd of=fw-crc.bin bs=1 seek=1000 conv=notrunc status=none
if cmp -s fw-crc.bin fw-dfu.bin; then printf '\xaa' | dd of=fw-crc.bin bs=1 seek=1000 conv=notrunc status=none; fi

sim suffix -- "$GWFLASH" -q --usb 1d50:6089 fw-dfu.bin
rc=$?
sim suffix-util -- dfu-util -a 0 -D fw-dfu.bin
rc_util=$?
if [ $rc -ne 0 ]; then
        fail "DFU suffix: gwflash exit $rc"
        show suffix
elif ! cmp -s -n 50000 fw.bin suffix.dump ||
        ! holds suffix 'd["bytes_out"] == 50000 and d["image_bytes"] == 50000'; then
        fail "DFU suffix: the device did not get exactly the image without its suffix"
elif [ $rc_util -ne 0 ] || ! cmp -s suffix.dump suffix-util.dump ||
        ! holds suffix-util 'd["bytes_out"] == 50000'; then
        fail "DFU suffix: dfu-util (exit $rc_util) left other memory than gwflash"
else
        pass "DFU suffix: 50000 bytes flashed, the 16-byte suffix not sent; same memory as dfu-util"
fi

sim suffix-rt --runtime -- "$GWFLASH" -q --usb 1d50:6088 fw-rt.bin
rc=$?
if [ $rc -eq 0 ] && cmp -s -n 50000 fw.bin suffix-rt.dump; then
        pass "DFU suffix naming the run-time ids: accepted after DFU_DETACH"
else
        fail "DFU suffix naming the run-time ids: exit $rc"
        show suffix-rt
fi
sim suffix-any -- "$GWFLASH" -q --usb 1d50:6089 fw-any.bin
rc=$?
if [ $rc -eq 0 ] && cmp -s -n 50000 fw.bin suffix-any.dump; then
        pass "DFU suffix with ids ffff:ffff: any device"
else
        fail "DFU suffix ffff:ffff: exit $rc"
        show suffix-any
fi

sim suffix-other -- "$GWFLASH" -q --usb 1d50:6089 fw-other.bin
expect_refused suffix-other "DFU suffix for another device (1234:5678): refused" $? \
        "is for 1234:5678, and this device is 1d50:6089"
# dfu-util 0.11 only looks for a device with those ids, and flashes the one it finds anyway:
# reported, not asserted (it is the peer's behaviour, not ours).
sim suffix-other-util -- dfu-util -a 0 -D fw-other.bin
rc_util=$?
echo "note: dfu-util $(dfu-util -V 2>/dev/null | head -n 1 | awk '{print $2}') on the same file: exit $rc_util," \
        "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["devices"][0]["data_blocks"])' \
                suffix-other-util.json) data blocks written"
sim suffix-raw -- "$GWFLASH" -q --usb 1d50:6089 -o format=raw fw-other.bin
rc=$?
if [ $rc -eq 0 ] && cmp -s -n 50016 fw-other.bin suffix-raw.dump &&
        holds suffix-raw 'd["bytes_out"] == 50016'; then
        pass "format=raw: the whole file, suffix included, reaches the device"
else
        fail "format=raw: exit $rc"
        show suffix-raw
fi

sim suffix-crc -- "$GWFLASH" -q --usb 1d50:6089 fw-crc.bin
rc=$?
if [ $rc -eq 1 ] && grep -q "CRC" suffix-crc.err && grep -qF "format" suffix-crc.err &&
        holds suffix-crc 'd["requests"]["DNLOAD"] == 0'; then
        pass "DFU suffix with a wrong CRC: refused before any DNLOAD, saying why"
else
        fail "DFU suffix with a wrong CRC: exit $rc"
        show suffix-crc
fi
sim suffix-dfu -- "$GWFLASH" -q --usb 1d50:6089 -o format=dfu fw.bin
expect_refused suffix-dfu "format=dfu on a file without a suffix: refused" $? "suffix"

# --- DfuSe container (0483:df11, 2 KiB pages from 0x08000000, memory filled with 0x00 so that
# every erased byte shows). e1 covers pages 0-2, e2 lies in page 2 too, e3 covers pages 8-9.
LAYOUT="@Internal Flash  /0x08000000/64*002Kg"
quiet dfuse-pack -b 0x08000000:e1.bin -b 0x08001400:e2.bin -b 0x08004000:e3.bin \
        -D 0x0483:0xdf11 three.dfu
quiet dfuse-pack -b 0x08000000:e1.bin -b 0x1fffc000@1:e3.bin -D 0x0483:0xdf11 twoalts.dfu
quiet dfuse-pack -b 0x08000000:e1.bin -D 0x0483:0xdf12 otherid.dfu
quiet dfuse-pack -b 0x08000000:e1.bin -D 0x1d50:0x6089 eleven.dfu
python3 - <<'EOF'
mem = bytearray(64 * 2048)
for page in (0, 1, 2, 8, 9):
    mem[page * 2048:(page + 1) * 2048] = b"\xff" * 2048
for off, name in ((0, "e1.bin"), (0x1400, "e2.bin"), (0x4000, "e3.bin")):
    data = open(name, "rb").read()
    mem[off:off + len(data)] = data
open("expected.bin", "wb").write(mem)
EOF

sim dfuse --dfuse --fill 0 --layout "$LAYOUT" -- "$GWFLASH" -q --usb 0483:df11 three.dfu
rc=$?
sim dfuse-util --dfuse --fill 0 --layout "$LAYOUT" -- dfu-util -a 0 -s :leave -D three.dfu
rc_util=$?
if [ $rc -ne 0 ]; then
        fail "DfuSe file: gwflash exit $rc"
        show dfuse
elif ! cmp -s expected.bin dfuse.dump; then
        fail "DfuSe file: the device's memory is not the three elements on exactly pages 0-2 and 8-9"
elif ! holds dfuse 'd["erase_page"] == 5 and d["pages_erased"] == 5 and
        d["data_blocks"] == 6 and d["set_address"] == 4 and
        d["bytes_out"] == 9000 + 5 * (d["erase_page"] + d["set_address"]) and
        d["leave_address"] == 0x08000000'; then
        fail "DfuSe file: counters"
elif [ $rc_util -ne 0 ] || ! cmp -s dfuse.dump dfuse-util.dump; then
        fail "DfuSe file: dfu-util (exit $rc_util) left other memory than gwflash"
        show dfuse-util
else
        pass "DfuSe file: 3 elements written where they say, 5 pages erased once each, left at" \
                "0x08000000; dfu-util leaves the same memory ($(python3 -c 'import json,sys
d = json.load(open(sys.argv[1]))["devices"][0]; print(d["erase_page"], "erases,", d["set_address"], "SET_ADDRESS")' dfuse-util.json) for dfu-util)"
fi

sim dfuse-alts --dfuse --layout "$LAYOUT" --layout "@Option Bytes  /0x1FFFC000/01*016Kg" -- \
        "$GWFLASH" -q --usb 0483:df11 twoalts.dfu
expect_refused dfuse-alts "DfuSe file for two alternate settings: refused" $? \
        "alternate settings 0 and 1"
sim dfuse-addr --dfuse --layout "$LAYOUT" -- \
        "$GWFLASH" -q --usb 0483:df11 --address 0x08000000 three.dfu
expect_refused dfuse-addr "DfuSe file with --address: refused" $? "carry their own addresses"
sim dfuse-id --dfuse --layout "$LAYOUT" -- "$GWFLASH" -q --usb 0483:df11 otherid.dfu
expect_refused dfuse-id "DfuSe file built for 0483:df12: refused on 0483:df11" $? \
        "is for 0483:df12"
sim dfuse-on-11 -- "$GWFLASH" -q --usb 1d50:6089 eleven.dfu
expect_refused dfuse-on-11 "DfuSe file on a DFU 1.1 device: refused" $? "not DfuSe"

[ "$failures" -eq 0 ]
