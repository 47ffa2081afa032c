# PASS/FAIL bookkeeping for the integration tests and a work directory kept only on failure,
# shared by lib.sh (the end-to-end tests) and gwflash-lib.sh. Set CASES_NAME (the directory's
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
