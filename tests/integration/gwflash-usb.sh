#!/bin/bash
# gwflash over the usb transport against the umockdev DFU emulator (tools/sim/dfu-sim): DFU 1.1,
# DfuSe and a board detached from runtime mode (found again by its DFU-mode ids, or at its port
# when they are not given), each memory dump compared byte for byte;
# choosing one of two boards by serial and by path; the failures a user meets (no device,
# several devices, permission denied, a DFU error status) exit 1 with a message saying what to
# do; usage errors exit 2; `gwflash list` in text and JSON; and the loop does not spin while
# the device is busy.
set -u

GWFLASH_TEST=gwflash-usb
GWFLASH_TEST_PROGS=dfu-util # the mass-erase cross-check
# shellcheck source=gwflash-lib.sh
. "$(dirname "$0")/gwflash-lib.sh"

# same IMAGE DUMP: the dump starts with exactly the image's bytes.
same() {
        cmp -s -n "$(stat -c %s "$1")" "$1" "$2"
}

# has NAME TEXT: NAME's stderr contains TEXT.
has() {
        grep -qF -- "$2" "$work/$1.err"
}

# expect_fail NAME WHAT TEXT...: the case exited 1 and its stderr holds every TEXT.
expect_fail() {
        local name=$1 what=$2 rc=$3 t
        shift 3
        if [ "$rc" -ne 1 ]; then
                fail "$what: exit $rc, expected 1"
                sed 's/^/    /' "$work/$name.err"
                return
        fi
        for t in "$@"; do
                if ! has "$name" "$t"; then
                        fail "$what: no \"$t\" in the message"
                        sed 's/^/    /' "$work/$name.err"
                        return
                fi
        done
        pass "$what"
}

# expect_ok NAME WHAT RC IMAGE DUMP: the case exited 0 and the device holds the image.
expect_ok() {
        local name=$1 what=$2 rc=$3 image=$4 dump=$5
        if [ "$rc" -ne 0 ]; then
                fail "$what: exit $rc"
                sed 's/^/    /' "$work/$name.err"
        elif ! same "$image" "$dump"; then
                fail "$what: the device's memory differs from the image"
        else
                pass "$what"
        fi
}

head -c 100000 /dev/urandom >"$work/img.bin"
head -c 300000 /dev/urandom >"$work/big.bin"

# Usage errors: exit 2 before any device is looked at.
for bad in "0483" "0483:df11,path=1" "0483:df11,serial=" "0483:df11,colour=red" "g483:df11"; do
        "$GWFLASH" --usb "$bad" "$work/img.bin" >/dev/null 2>"$work/usage.err"
        rc=$?
        if [ $rc -eq 2 ] && grep -q -- "--usb" "$work/usage.err"; then
                pass "usage error for --usb $bad"
        else
                fail "--usb $bad: exit $rc, expected 2 with a message about --usb"
        fi
done
# Options neither the transport nor the protocol reads, and bad values, before any device is
# looked at: exit 2 naming the option.
for bad in "-o baudrate=9600:unknown option 'baudrate'" "-o timeout-ms=0:option timeout-ms" \
        "--alt=:option alt" "-o leave=perhaps:option leave"; do
        arg=${bad%%:*}
        want=${bad#*:}
        # shellcheck disable=SC2086 # the option and its value are two words
        "$GWFLASH" --usb 0483:df11 $arg "$work/img.bin" >/dev/null 2>"$work/usage.err"
        rc=$?
        if [ $rc -eq 2 ] && grep -qF -- "$want" "$work/usage.err"; then
                pass "usage error for $arg"
        else
                fail "$arg: exit $rc, expected 2 with '$want': $(head -n 1 "$work/usage.err")"
        fi
done
"$GWFLASH" --usb 0483:df11 --transport uart "$work/img.bin" >/dev/null 2>&1
rc=$?
if [ $rc -eq 2 ]; then
        pass "usage error for --usb with another transport"
else
        fail "--usb with --transport uart: exit $rc, expected 2"
fi

# DFU 1.1: plain download, JSON result.
sim dfu11 -- "$GWFLASH" --json --usb 1d50:6089 --alt 0 "$work/img.bin"
rc=$?
expect_ok dfu11 "DFU 1.1 download, dump identical" $rc "$work/img.bin" "$work/dfu11.dump"
if tail -n 1 "$work/dfu11.out" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
sys.exit(0 if r["result"] == "ok" and r["bytes"] == r["total"] == 100000 else 1)'; then
        pass "DFU 1.1 --json result line"
else
        fail "DFU 1.1 --json result line: $(tail -n 1 "$work/dfu11.out")"
fi

# The identify event comes first on --json: what the board reports before anything is written.
if head -n 1 "$work/dfu11.out" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
f = r["facts"]
sys.exit(0 if r["event"] == "identify" and f["usb-id"] == "1d50:6089" and f["mode"] == "dfu"
         and f["alt"] == "0" else 1)'; then
        pass "DFU 1.1 --json identify event before the transfer"
else
        fail "DFU 1.1 --json identify event: $(head -n 1 "$work/dfu11.out")"
fi

# --identify alone: the facts, nothing written (the dump stays erased), exit 0.
sim identify --dfuse -- "$GWFLASH" --usb 0483:df11 --alt 0 --identify
rc=$?
if [ "$rc" = 0 ] && grep -q "^Node: usb-id=0483:df11, .*mode=dfu.*layout=" "$work/identify.err" &&
        ! grep -q "Flashing" "$work/identify.err"; then
        pass "--identify prints the board's facts and writes nothing"
else
        fail "--identify: exit $rc, $(cat "$work/identify.err")"
fi
if "$GWFLASH" --usb 0483:df11 --identify "$work/img.bin" >/dev/null 2>&1; then
        fail "--identify with a FILE was accepted"
else
        [ $? = 2 ] && pass "--identify with a FILE is a usage error" ||
                fail "--identify with a FILE: not exit 2"
fi

# DfuSe: erase, SET_ADDRESS, download, then leave DFU mode (the device resets and vanishes).
sim dfuse --dfuse -- "$GWFLASH" -q --usb 0483:df11 --alt 0 --address 0x08000000 "$work/big.bin"
rc=$?
expect_ok dfuse "DfuSe download with leave, dump identical" $rc "$work/big.bin" \
        "$work/dfuse.dump"
# The same by alt name, staying in DFU mode.
sim dfuse-stay --dfuse -- "$GWFLASH" -q --usb 0483:df11 --alt "Internal Flash" \
        -o leave=false "$work/big.bin"
rc=$?
expect_ok dfuse-stay "DfuSe download by alt name, no leave, dump identical" $rc \
        "$work/big.bin" "$work/dfuse-stay.dump"

# A board running its application: DFU_DETACH, it re-enumerates with its DFU-mode ids, and
# the transport finds the same board again.
sim runtime --runtime -- "$GWFLASH" -q --usb 1d50:6088 --dfu-usb 1d50:6089 --alt 0 \
        "$work/img.bin"
rc=$?
expect_ok runtime "detach from runtime mode, reopen, download" $rc "$work/img.bin" \
        "$work/runtime.dump"
# Detached from its application (bitWillDetach: no reset for that), the board is reset once
# written, so that it runs again: at exit the emulator finds it on its way back to run-time mode
# (off the bus, or back) after one reset. -o reset=false keeps it in DFU mode.
mode_of() {
        python3 -c 'import json,sys; d = json.load(open(sys.argv[1]))["devices"][0]
print(d["mode"], d["resets"])' "$1"
}
case $(mode_of "$work/runtime.json") in
"runtime 1" | "absent 1") pass "the detached board was reset to leave DFU mode after the download" ;;
*) fail "the detached board: mode and resets at exit: $(mode_of "$work/runtime.json"), expected a reset" ;;
esac
sim runtime-stay --runtime -- "$GWFLASH" -q --usb 1d50:6088 --dfu-usb 1d50:6089 --alt 0 \
        -o reset=false "$work/img.bin"
rc=$?
if [ $rc -eq 0 ] && [ "$(mode_of "$work/runtime-stay.json")" = "dfu 0" ]; then
        pass "-o reset=false: the board stays in DFU mode"
else
        fail "-o reset=false: exit $rc, mode $(mode_of "$work/runtime-stay.json")"
fi
# Without --dfu-usb: the board is found again at the port it was on, whatever ids it now has
# (here 1d50:6089 in DFU mode). Of two boards, the one asked for, not its neighbour.
sim runtime-port --runtime -- "$GWFLASH" -q --usb 1d50:6088 --alt 0 "$work/img.bin"
rc=$?
expect_ok runtime-port "detach, found again at its port without --dfu-usb, download" $rc \
        "$work/img.bin" "$work/runtime-port.dump"
sim runtime-two --runtime --serial AAA1 --serial BBB2 -- "$GWFLASH" -q \
        --usb 1d50:6088,serial=BBB2 --alt 0 "$work/img.bin"
rc=$?
expect_ok runtime-two "two boards in runtime mode: the second detached, found, written" $rc \
        "$work/img.bin" "$work/runtime-two.dump.2"
if [ $rc -eq 0 ] && same "$work/img.bin" "$work/runtime-two.dump"; then
        fail "two boards in runtime mode: the other board was written too"
fi

# No such device.
sim none -- "$GWFLASH" -q --usb 0483:df11 --alt 0 "$work/img.bin"
expect_fail none "no device: exit 1, says what to check" $? \
        "No DFU device 0483:df11 found" "is it in DFU mode?" "gwflash list"

# Two identical boards: refused with both listed, then each chosen by serial or path.
sim two --serial AAA1 --serial BBB2 -- "$GWFLASH" -q --usb 1d50:6089 --alt 0 "$work/img.bin"
expect_fail two "two matching devices: exit 1, both listed" $? \
        "Several devices match 1d50:6089" "serial=AAA1" "serial=BBB2" "path=1-1" \
        "Add ,serial=S or ,path=P"
sim by-serial --serial AAA1 --serial BBB2 -- "$GWFLASH" -q --usb 1d50:6089,serial=BBB2 \
        --alt 0 "$work/img.bin"
rc=$?
expect_ok by-serial "two devices, ,serial= picks the second" $rc "$work/img.bin" \
        "$work/by-serial.dump.2"
if [ $rc -eq 0 ] && same "$work/img.bin" "$work/by-serial.dump"; then
        fail "two devices, ,serial=: the other board was written too"
fi
sim by-path --serial AAA1 --serial BBB2 -- "$GWFLASH" -q --usb 1d50:6089,path=1-1 --alt 0 \
        "$work/img.bin"
rc=$?
expect_ok by-path "two devices, ,path=1-1 picks the first" $rc "$work/img.bin" \
        "$work/by-path.dump"

# A DFU error status from the device: exit 1 with the status named and explained.
sim errwrite --error errWRITE:3 -- "$GWFLASH" -q --usb 1d50:6089 --alt 0 "$work/img.bin"
expect_fail errwrite "injected errWRITE: exit 1, mapped message" $? "errWRITE" \
        "cannot write"

# -o verify=true reads back what was written. A block programmed wrong with status OK
# (--corrupt: a marginal flash) passes unseen without it; with it gwflash fails, names the
# address, and a DfuSe board is not told to leave (it stays in its bootloader, not in a broken
# application).
LAYOUT="@Internal Flash  /0x08000000/64*002Kg"
sim verify --dfuse --layout "$LAYOUT" -- "$GWFLASH" -q --usb 0483:df11 -o verify=true \
        "$work/img.bin"
rc=$?
if [ $rc -eq 0 ] && same "$work/img.bin" "$work/verify.dump" &&
        python3 -c 'import json,sys; d = json.load(open(sys.argv[1]))["devices"][0]
sys.exit(not (d["requests"]["UPLOAD"] == 49 and d["bytes_in"] == 100000 and
              d["leave_address"] == 0x08000000))' "$work/verify.json"; then
        pass "verify: 100000 bytes read back in 49 UPLOADs, then the board left"
else
        fail "verify: exit $rc, or dump, read-back or leave wrong"
fi
sim corrupt-unseen --dfuse --layout "$LAYOUT" --corrupt 7 -- "$GWFLASH" -q --usb 0483:df11 \
        "$work/img.bin"
rc=$?
if [ $rc -eq 0 ] && ! same "$work/img.bin" "$work/corrupt-unseen.dump"; then
        pass "a block programmed wrong goes unseen without verify (exit 0, memory differs)"
else
        fail "--corrupt without verify: exit $rc (expected 0 with the memory differing)"
fi
sim corrupt --dfuse --layout "$LAYOUT" --corrupt 7 -- "$GWFLASH" -q --usb 0483:df11 \
        --verify "$work/img.bin"
expect_fail corrupt "verify catches it: exit 1, the address named, the board stays in DFU mode" \
        $? "verify failed: 0x08003400" "stays in DFU mode"
if ! python3 -c 'import json,sys; d = json.load(open(sys.argv[1]))["devices"][0]
sys.exit(d["leave_address"] is not None)' "$work/corrupt.json"; then
        fail "verify failed, yet the board was told to leave"
fi
# -o mass-erase=true: one ERASE of the whole memory instead of the image's pages; on memory
# filled with 0x00 the result is exactly what dfu-util's :mass-erase:force leaves.
sim mass --dfuse --fill 0 --layout "$LAYOUT" -- "$GWFLASH" -q --usb 0483:df11 \
        -o mass-erase=true "$work/img.bin"
rc=$?
sim mass-util --dfuse --fill 0 --layout "$LAYOUT" -- dfu-util -a 0 -s 0x08000000:mass-erase:force \
        -D "$work/img.bin"
rc_util=$?
if [ $rc -eq 0 ] && [ $rc_util -eq 0 ] && cmp -s "$work/mass.dump" "$work/mass-util.dump" &&
        python3 -c 'import json,sys; d = json.load(open(sys.argv[1]))["devices"][0]
sys.exit(not (d["mass_erase"] == 1 and d["erase_page"] == 0 and d["pages_erased"] == 64))' \
                "$work/mass.json"; then
        pass "mass-erase: one ERASE, all 64 pages erased, the same memory as dfu-util's mass erase"
else
        fail "mass-erase: exit $rc (dfu-util $rc_util), or counters or memory differ"
fi

sim verify-nontol --no-manifest-tolerant -- "$GWFLASH" -q --usb 1d50:6089 -o verify=true \
        "$work/img.bin"
expect_fail verify-nontol "verify on a device that resets after manifestation: refused first" \
        $? "bitManifestationTolerant"

# A stall of a DFU request is a failure, never a success.
sim stall --stall 5 -- "$GWFLASH" -q --usb 1d50:6089 --alt 0 "$work/img.bin"
rc=$?
if [ $rc -eq 1 ]; then
        pass "stalled request: exit 1"
else
        fail "stalled request: exit $rc, expected 1"
fi

# Permission denied on the device node: take away the DAC override from root (or just the
# mode bits from anyone else) and check the message names the node and the fix.
rm -f "$work/env"
"$SIM" --env-file "$work/env" >/dev/null 2>&1 &
sim_pid=$!
for ((i = 0; i < 100; i++)); do
        [ -s "$work/env" ] && break
        sleep 0.05
done
if [ ! -s "$work/env" ]; then
        fail "permission denied: the emulator did not start"
elif ! command -v setpriv >/dev/null && [ "$(id -u)" -eq 0 ]; then
        echo "SKIP: permission denied case: setpriv missing, and root ignores mode bits"
else
        (
                set -a
                # shellcheck disable=SC1091
                . "$work/env"
                set +a
                chmod 000 "$UMOCKDEV_DIR/dev/bus/usb/001/002"
                if [ "$(id -u)" -eq 0 ]; then
                        exec setpriv --bounding-set=-dac_override,-dac_read_search \
                                timeout 60 "$GWFLASH" -q --usb 1d50:6089 --alt 0 "$work/img.bin"
                fi
                exec timeout 60 "$GWFLASH" -q --usb 1d50:6089 --alt 0 "$work/img.bin"
        ) >"$work/eacces.out" 2>"$work/eacces.err"
        expect_fail eacces "permission denied: exit 1, names the node and the fix" $? \
                "Permission denied on /dev/bus/usb/001/002" 'ATTR{idVendor}=="1d50"' \
                "run gwflash as root"
fi
kill "$sim_pid" 2>/dev/null
wait "$sim_pid" 2>/dev/null
sim_pid=

# gwflash list: both personalities side by side is not possible in one emulator; list each.
sim list --serial AAA1 --serial BBB2 -- "$GWFLASH" list
rc=$?
if [ $rc -eq 0 ] && grep -q '^usb *1-1 *1d50:6089 serial=AAA1' "$work/list.out" &&
        grep -q '^usb *1-2 *1d50:6089 serial=BBB2' "$work/list.out" &&
        grep -q 'alt 0 (interface 0) "Internal Flash"  DFU 1.1, 1024-byte transfers' \
                "$work/list.out"; then
        pass "gwflash list: both boards with serial, path and alt settings"
else
        fail "gwflash list (exit $rc):"
        sed 's/^/    /' "$work/list.out"
fi
sim list-json --dfuse -- "$GWFLASH" list --json
rc=$?
if [ $rc -eq 0 ] && python3 -c '
import json, sys
devs = [d for d in json.load(open(sys.argv[1])) if d["transport"] == "usb"]
assert len(devs) == 1, devs
d = devs[0]
assert d["usb"] == "0483:df11" and d["path"] == "1-1" and d["mode"] == "dfu", d
assert d["serial"] and d["node"].startswith("/dev/bus/usb/"), d
a = d["alts"][0]
assert a["alt"] == 0 and a["name"].startswith("@Internal Flash"), a
assert a["dfu_version"] == "1.1a" and a["transfer_size"] == 2048, a
' "$work/list-json.out"; then
        pass "gwflash list --json: DfuSe layout, version and transfer size"
else
        fail "gwflash list --json (exit $rc):"
        sed 's/^/    /' "$work/list-json.out" "$work/list-json.err"
fi
sim list-runtime --runtime -- "$GWFLASH" list
if grep -q '1d50:6088.*runtime mode' "$work/list-runtime.out"; then
        pass "gwflash list: a board in runtime mode is listed as such"
else
        fail "gwflash list, runtime mode:"
        sed 's/^/    /' "$work/list-runtime.out"
fi

# While the device is busy (a 25 ms bwPollTimeout on each of 98 blocks) gwflash waits on its
# loop: its CPU time stays far below the time it waits.
# shellcheck disable=SC2016 # expanded by the inner bash
sim idle --poll-timeout-ms 25 --program-ms 20 -- bash -c \
        'TIMEFORMAT="%U %S %R"; time "$0" -q --usb 1d50:6089 --alt 0 "$1"' \
        "$GWFLASH" "$work/img.bin"
rc=$?
read -r user sys real < <(tail -n 1 "$work/idle.err")
if [ $rc -eq 0 ] && python3 -c 'import sys; u, s, r = map(float, sys.argv[1:]); sys.exit(0 if r > 1.0 and u + s < 0.25 * r else 1)' \
        "$user" "$sys" "$real"; then
        pass "no busy loop while the device is busy (cpu ${user}+${sys} s in ${real} s)"
else
        fail "gwflash while the device is busy: exit $rc, cpu ${user:-?}+${sys:-?} s in ${real:-?} s"
fi

# Read-back (--upload): DFU 1.1 ends on the device's short block; DfuSe needs --size and reads
# from --address; a refused upload leaves no file behind.
sim upload11 --load "$work/img.bin" -- "$GWFLASH" --usb 1d50:6089 --alt 0 \
        --upload "$work/back11.bin"
rc=$?
if [ $rc -eq 0 ] && same "$work/img.bin" "$work/back11.bin"; then
        pass "DFU 1.1 --upload reads the memory back"
else
        fail "DFU 1.1 --upload: exit $rc or different bytes"
fi
sim uploadse --dfuse --layout "@Internal Flash  /0x08000000/64*002Kg" --load "$work/img.bin" \
        -- "$GWFLASH" --usb 0483:df11 --alt 0 --address 0x08000000 --size 100000 \
        --upload "$work/backse.bin"
rc=$?
if [ $rc -eq 0 ] && cmp -s "$work/img.bin" "$work/backse.bin"; then
        pass "DfuSe --upload --size reads exactly that many bytes back"
else
        fail "DfuSe --upload: exit $rc or different bytes"
fi
sim uploadnosize --dfuse --layout "@Internal Flash  /0x08000000/64*002Kg" \
        -- "$GWFLASH" --usb 0483:df11 --alt 0 --upload "$work/nosize.bin"
rc=$?
expect_fail uploadnosize "DfuSe --upload without --size is refused with a reason" $rc "needs a size"
if [ -e "$work/nosize.bin" ]; then
        fail "a refused upload left $work/nosize.bin behind"
else
        pass "a refused upload leaves no file"
fi
"$GWFLASH" --usb 1d50:6089 --size 10 "$work/img.bin" >/dev/null 2>&1
rc=$?
if [ $rc -eq 2 ]; then
        pass "--size without --upload is a usage error"
else
        fail "--size without --upload: exit $rc, expected 2"
fi

echo "$failures failure(s)"
[ "$failures" -eq 0 ]
