# Shared by the end-to-end tests: requirements, a work directory kept only on failure,
# PASS/FAIL bookkeeping and JSON queries on the subscription log (q.py). Set E2E_NAME first.
# shellcheck shell=bash
: "${GW_SRC:?GW_SRC must name the source directory}"
: "${GW_BUILD:?GW_BUILD must name the build directory}"
# shellcheck source=../../tools/lib/common.sh
. "$GW_SRC/tools/lib/common.sh"

for prog in mosquitto mosquitto_pub mosquitto_sub python3 cmp; do
        if ! command -v "$prog" >/dev/null; then
                echo "SKIP: $prog is not installed (mosquitto, mosquitto-clients, python3 needed)"
                exit 77
        fi
done
GWD=$GW_BUILD/gatewayd/gatewayd
GWM=$GW_BUILD/tools/gwmanifest
for b in "$GWD" "$GWM" "$GW_BUILD/tools/sim/ymodem-sim"; do
        [ -x "$b" ] || { echo "FAIL: $b was not built"; exit 1; }
done

work=$(mktemp -d "/tmp/gw-$E2E_NAME.XXXXXX")
failures=0
finish() {
        gw_cleanup
        if [ "$failures" -eq 0 ]; then rm -rf "$work"; else echo "Work directory kept: $work"; fi
}
trap finish EXIT
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

q() { python3 "$GW_SRC/tests/integration/q.py" "$@"; }
