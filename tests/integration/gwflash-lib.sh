# Shared by the gwflash tests against the umockdev DFU emulator (gwflash-usb.sh, dfu-files.sh):
# what they need (or a SKIP that says what is missing), a work directory kept only on failure,
# PASS/FAIL bookkeeping, and sim: one command under a fresh emulator. Set GWFLASH_TEST (the
# work directory's name) and GWFLASH_TEST_PROGS (programs the test needs besides) first.
# shellcheck shell=bash
: "${GW_BUILD:?GW_BUILD must name the build directory}"
GWFLASH=$GW_BUILD/tools/gwflash
sim_pid= # an emulator the test serves from in the background, stopped at the end
cases_cleanup() {
        if [ -n "$sim_pid" ]; then
                kill "$sim_pid" 2>/dev/null
                wait "$sim_pid" 2>/dev/null
        fi
}
CASES_NAME=$GWFLASH_TEST
# shellcheck source=cases.sh
. "$(dirname "${BASH_SOURCE[0]}")/cases.sh"

if [ ! -x "$GWFLASH" ]; then
        echo "FAIL: $GWFLASH was not built"
        exit 1
fi
if "$GWFLASH" --usb 1:1 /dev/null 2>&1 | grep -q "built without the usb transport"; then
        echo "SKIP: gwflash was built without the usb transport (libusb-1.0 missing)"
        exit 77
fi
require_dfu_sim
for prog in timeout cmp python3 ${GWFLASH_TEST_PROGS:-}; do
        if ! command -v "$prog" >/dev/null; then
                echo "SKIP: $prog is not installed"
                exit 77
        fi
done

# sim NAME [SIM OPTIONS...] -- COMMAND...: runs COMMAND under a fresh emulator, bounded;
# stdout to $work/NAME.out, stderr to $work/NAME.err, alt 0's memory to $work/NAME.dump,
# counters to $work/NAME.json. Returns COMMAND's status.
sim() {
        local name=$1
        shift
        timeout 120 "$SIM" --dump "$work/$name.dump" --report "$work/$name.json" "$@" \
                >"$work/$name.out" 2>"$work/$name.err"
}
