# PASS/FAIL bookkeeping for the integration tests, a work directory kept only on failure, and
# the USB emulator's requirements; shared by lib.sh (the end-to-end tests) and gwflash-lib.sh. Set CASES_NAME (the directory's
# name) first; a test may define cases_cleanup, run at exit before the directory goes.
# shellcheck shell=bash
work=$(mktemp -d "/tmp/gw-$CASES_NAME.XXXXXX")
failures=0
cases_finish() {
        if declare -F cases_cleanup >/dev/null; then cases_cleanup; fi
        if [ "$failures" -eq 0 ]; then rm -rf "$work"; else echo "Work directory kept: $work"; fi
}
trap cases_finish EXIT
trap 'exit 130' INT TERM

pass() { echo "PASS: $*"; }
fail() {
        echo "FAIL: $*"
        failures=$((failures + 1))
}
# check NAME COMMAND...: one case.
check() {
        local name=$1
        shift
        if "$@"; then pass "$name"; else fail "$name"; fi
}

# require_dfu_sim: sets SIM to the USB DFU emulator, or skips the test (exit 77) when it
# cannot run here.
require_dfu_sim() {
        SIM=${GW_BUILD:?GW_BUILD must name the build directory}/tools/sim/dfu-sim
        if [ ! -x "$SIM" ]; then
                echo "SKIP: tools/sim/dfu-sim was not built (umockdev development files missing)"
                exit 77
        fi
        if ! ldconfig -p 2>/dev/null | grep -q libumockdev-preload.so.0; then
                echo "SKIP: libumockdev-preload.so.0 is not installed (package umockdev)"
                exit 77
        fi
}
