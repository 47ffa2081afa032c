#!/usr/bin/env bash
# gatewayd's native journal entries, without journald: in a mount namespace of the test's own, a
# tmpfs on /run holds /run/systemd/journal/socket, served by sd-listen.py. gatewayd is started
# as systemd starts it, stderr on a stream whose device and inode $JOURNAL_STREAM names, and must
# then log natively: every entry with PRIORITY=, SYSLOG_IDENTIFIER=gatewayd and CODE_FILE=; the
# messages about a deployment with GW_DEPLOYMENT=<id>, those about a node with GW_NODE=<node>
# too; nothing on stderr. With a $JOURNAL_STREAM that is not its stderr, it logs to stderr.
set -u

: "${GW_SRC:?GW_SRC must name the source directory}"
E2E_NAME=journal-fields
# shellcheck source=lib.sh
. "$GW_SRC/tests/integration/lib.sh"

if ! grep -q '^#define GW_HAVE_SYSTEMD 1' "$GW_BUILD/core/gw-config.h" 2>/dev/null; then
        echo "SKIP: built without libsystemd (-Dsystemd=disabled or libsystemd-dev missing)"
        exit 77
fi
if [ "$(id -u)" -ne 0 ] || ! unshare -m true 2>/dev/null; then
        echo "SKIP: needs a mount namespace of its own (root, unshare -m) for a journald socket"
        exit 77
fi

gw="gw-e2e-journal"
prefix=gatewayd/$gw
baud=921600
mkdir -p "$work/www" "$work/state"
gw_start_broker "$work"
gw_start_http "$work/www"
for n in 1 2; do
        gw_start_sim "node-$n" "$work" "$baud"
done
"$GWM" keygen --type ed25519 --out "$work/release" >/dev/null ||
        { echo "FAIL: gwmanifest keygen"; exit 1; }
ymodem_config 2
watch_prefix

# The namespace: tmpfs on /run, the journal's socket in it, then gatewayd with stderr on a file
# that $JOURNAL_STREAM names (as systemd names the stream it connects to the journal).
cat >"$work/in-ns.sh" <<'NS'
set -u
work=$1 gwd=$2 src=$3
mount -t tmpfs -o mode=0755 tmpfs /run || exit 90
mkdir -p /run/systemd/journal
python3 "$src/tests/integration/sd-listen.py" journal /run/systemd/journal/socket \
        "$work/journal.log" >"$work/listen.out" 2>"$work/listen.err" &
listener=$!
for _ in $(seq 1 100); do
        grep -q ready "$work/listen.out" 2>/dev/null && break
        sleep 0.05
done
: >"$work/stderr.log"
exec 2>>"$work/stderr.log"
JOURNAL_STREAM=$(stat -c '%d:%i' "$work/stderr.log") "$gwd" -c "$work/gatewayd.yaml" &
echo $! >"$work/gatewayd.pid"
wait $!
rc=$?
kill $listener
exit $rc
NS
unshare -m --propagation private bash "$work/in-ns.sh" "$work" "$GWD" "$GW_SRC" &
nspid=$!
GW_PIDS+=("$nspid")
gw_wait_for 10 test -s "$work/gatewayd.pid" || { echo "FAIL: gatewayd did not start in the namespace"; exit 1; }
gwpid=$(cat "$work/gatewayd.pid")
GW_PIDS+=("$gwpid")

seq_no=$(date +%s)
expires=$(date -u -d '+1 day' +%Y-%m-%dT%H:%M:%SZ)
for n in 1 2; do head -c $((3000 * n)) /dev/urandom >"$work/www/j1-node-$n.bin"; done
{
        printf 'kind: gatewayd/manifest\nformat: 1\nid: j1\nsequence: %s\n' "$seq_no"
        printf 'expires: %s\npolicy: { parallel: 2 }\nimages:\n' "$expires"
        for n in 1 2; do
                printf '  - name: app-node-%s\n    version: 1.%s\n' "$n" "$n"
                printf '    targets: { node: node-%s }\n    protocol: ymodem\n' "$n"
                printf '    size: %s\n' "$(stat -c %s "$work/www/j1-node-$n.bin")"
                printf '    sha256: %s\n' "$(sha256sum "$work/www/j1-node-$n.bin" | cut -d' ' -f1)"
                printf '    url: j1-node-%s.bin\n' "$n"
        done
} >"$work/www/j1.yaml"
"$GWM" sign --key "$work/release" "$work/www/j1.yaml" >/dev/null || { echo "FAIL: sign"; exit 1; }
mosquitto_pub -h 127.0.0.1 -p "$GW_BROKER_PORT" -q 1 -r -t "$prefix/deploy" \
        -m "{\"id\":\"j1\",\"manifest_url\":\"http://127.0.0.1:$GW_HTTP_PORT/j1.yaml\"}"
gw_wait_for 30 q final "$work/sub.log" "$prefix/deployments/j1" >/dev/null
check "j1 ends success" test "$(q get "$(q final "$work/sub.log" "$prefix/deployments/j1")" state)" = success
kill -TERM "$gwpid"
gw_wait_pid "$nspid" 10
rc=$?
check "gatewayd stops with status 0 (got $rc)" test $rc -eq 0

# entry MESSAGE-REGEX [FIELD=VALUE...]: an entry whose MESSAGE matches and that has exactly
# these fields (FIELD=- : absent). Prints the entry.
entry() {
        python3 - "$work/journal.log" "$@" <<'PY'
import json, re, sys
log, pattern, want = sys.argv[1], sys.argv[2], sys.argv[3:]
for line in open(log):
    e = json.loads(line)
    if not re.search(pattern, e.get("MESSAGE", "")):
        continue
    ok = True
    for w in want:
        k, v = w.split("=", 1)
        ok = ok and (k not in e if v == "-" else re.fullmatch(v, e.get(k, "\0")) is not None)
    if ok:
        print(json.dumps(e))
        sys.exit(0)
sys.exit(1)
PY
}
n_entries=$(wc -l <"$work/journal.log" 2>/dev/null || echo 0)
check "gatewayd logged to the journal natively ($n_entries entries)" test "$n_entries" -gt 5
check "nothing went to stderr instead ($(wc -c <"$work/stderr.log") bytes)" test ! -s "$work/stderr.log"
check "every entry has PRIORITY=, SYSLOG_IDENTIFIER=gatewayd, CODE_FILE= and CODE_LINE=" \
        python3 - "$work/journal.log" <<'PY'
import json, sys
es = [json.loads(l) for l in open(sys.argv[1])]
sys.exit(not all(e.get("SYSLOG_IDENTIFIER") == "gatewayd" and e.get("PRIORITY", "").isdigit()
                 and e.get("CODE_FILE") and e.get("CODE_LINE", "").isdigit() for e in es))
PY
check "a message about the gateway has no deployment or node field" \
        entry '^Trust root version' PRIORITY=6 GW_DEPLOYMENT=- GW_NODE=-
check "'Deployment j1 accepted' carries GW_DEPLOYMENT=j1 and no node" \
        entry '^Deployment j1 accepted' GW_DEPLOYMENT=j1 GW_NODE=- PRIORITY=6
for n in 1 2; do
        check "'node-$n: took ...' carries GW_DEPLOYMENT=j1 and GW_NODE=node-$n, from deploy-flash.c" \
                entry "^node-$n: took app-node-$n 1.$n" GW_DEPLOYMENT=j1 GW_NODE=node-$n \
                PRIORITY=6 'CODE_FILE=.*deploy-flash\.c' CODE_FUNC=.+
done
check "'Deployment j1 succeeded' carries GW_DEPLOYMENT=j1" \
        entry '^Deployment j1 succeeded' GW_DEPLOYMENT=j1 GW_NODE=-

# A $JOURNAL_STREAM that is not our stderr (a child of a service, say): stderr as before.
JOURNAL_STREAM=1:2 "$GWD" --check-config "$work/gatewayd.yaml" >/dev/null 2>"$work/check.err"
sed 's/release.pub/missing.pub/' "$work/gatewayd.yaml" >"$work/bad.yaml"
JOURNAL_STREAM=1:2 "$GWD" -c "$work/bad.yaml" 2>"$work/bad.err"
check "with a foreign JOURNAL_STREAM, errors go to stderr" grep -q 'missing.pub' "$work/bad.err"

if [ "$failures" -ne 0 ]; then
        echo "--- journal entries ---"
        tail -n 20 "$work/journal.log"
        exit 1
fi
exit 0
