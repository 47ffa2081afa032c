#!/usr/bin/env bash
# A device node gatewayd may not open, really: gatewayd runs unprivileged (user nobody, through
# setpriv, no supplementary groups, as the service's own user would) against a simulated YMODEM
# node whose pty the test made unreadable (mode 000). The open fails with EACCES, and gatewayd
# must say so once, naming the device node (the pty, not the symbolic link the configuration
# gives), its owner and mode, the user it runs as, and the fix (the gatewayd group, README.udev,
# udevadm trigger after installing 60-gatewayd.rules); the node's status upstream carries the
# same, and the other node, readable, takes its image. gwflash run as that user says the same.
set -u

: "${GW_SRC:?GW_SRC must name the source directory}"
E2E_NAME=device-permission
# shellcheck source=lib.sh
. "$GW_SRC/tests/integration/lib.sh"

if [ "$(id -u)" -ne 0 ]; then
        echo "SKIP: needs root to make a device node unreadable to another user (setpriv)"
        exit 77
fi
if ! command -v setpriv >/dev/null; then
        echo "SKIP: setpriv (util-linux) is not installed"
        exit 77
fi
user=nobody
uid=$(id -u "$user" 2>/dev/null) || { echo "SKIP: no user $user"; exit 77; }
gid=$(id -g "$user")
as_user() { setpriv --reuid="$uid" --regid="$gid" --clear-groups --inh-caps=-all "$@"; }

gw="gw-e2e-perm"
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

# The unprivileged user reads the configuration and owns the state directory, nothing more. It
# runs copies of the programs: the build tree may sit under a directory only root may enter
# (a clone in /root, or in a mktemp -d folder).
chmod 755 "$work"
mkdir -p "$work/bin"
cp "$GWD" "$GW_BUILD/tools/gwflash" "$work/bin/"
chmod 755 "$work/bin" "$work/bin/gatewayd" "$work/bin/gwflash"
chmod 644 "$work/gatewayd.yaml" "$work/release.pub"
chown "$uid:$gid" "$work/state"
for n in 1 2; do
        pty=$(readlink -f "$work/node-$n.tty")
        chown "$uid:$gid" "$pty"
        chmod 600 "$pty"
done
denied=$(readlink -f "$work/node-1.tty")
chown root:root "$denied"
chmod 000 "$denied"
echo "  node-1's pty: $denied ($(stat -c '%A %U:%G' "$denied"))"
cannot_open() { ! as_user sh -c "exec 3<>'$1'" 2>/dev/null; }
check "the test really cannot open it as $user" cannot_open "$denied"

setpriv --reuid="$uid" --regid="$gid" --clear-groups --inh-caps=-all \
        "$work/bin/gatewayd" -c "$work/gatewayd.yaml" 2>"$work/gatewayd.log" &
gwpid=$!
GW_PIDS+=("$gwpid")

seq_no=$(date +%s)
expires=$(date -u -d '+1 day' +%Y-%m-%dT%H:%M:%SZ)
for n in 1 2; do head -c $((2000 * n)) /dev/urandom >"$work/www/p1-node-$n.bin"; done
{
        printf 'kind: gatewayd/manifest\nformat: 1\nid: p1\nsequence: %s\n' "$seq_no"
        printf 'expires: %s\npolicy: { parallel: 2 }\nimages:\n' "$expires"
        for n in 1 2; do
                printf '  - name: app-node-%s\n    version: 1.%s\n' "$n" "$n"
                printf '    targets: { node: node-%s }\n    protocol: ymodem\n' "$n"
                printf '    size: %s\n' "$(stat -c %s "$work/www/p1-node-$n.bin")"
                printf '    sha256: %s\n' "$(sha256sum "$work/www/p1-node-$n.bin" | cut -d' ' -f1)"
                printf '    url: p1-node-%s.bin\n' "$n"
        done
} >"$work/www/p1.yaml"
"$GWM" sign --key "$work/release" "$work/www/p1.yaml" >/dev/null || { echo "FAIL: sign"; exit 1; }
mosquitto_pub -h 127.0.0.1 -p "$GW_BROKER_PORT" -q 1 -r -t "$prefix/deploy" \
        -m "{\"id\":\"p1\",\"manifest_url\":\"http://127.0.0.1:$GW_HTTP_PORT/p1.yaml\"}"
gw_wait_for 30 q final "$work/sub.log" "$prefix/deployments/p1" >/dev/null
final=$(q final "$work/sub.log" "$prefix/deployments/p1")
check "p1 ends failed (got $(q get "$final" state))" test "$(q get "$final" state)" = failed
check "node-1 failed as node-unreachable (got $(q get "$final" nodes.node-1.error.code))" \
        test "$(q get "$final" nodes.node-1.error.code)" = node-unreachable
check "node-2, readable, took its image" test "$(q get "$final" nodes.node-2.state)" = success
check "gatewayd ran as $user all along" \
        test "$(stat -c %U "$work/state/deployments/p1.json" 2>/dev/null)" = "$user"

echo "  gatewayd said:"
grep 'permission denied' "$work/gatewayd.log" | sed 's/^/    /'
check "gatewayd says it once about the node (and the deployment's failure names it)" \
        test "$(grep -c '^error: node-1: cannot open uart link: permission denied' "$work/gatewayd.log")" -eq 1
line=$(grep -m1 'permission denied' "$work/gatewayd.log")
check "... about node-1, naming the device node $denied" \
        grep -qF "error: node-1: cannot open uart link: permission denied on $denied " <<<"$line"
check "... with its owner, group and mode, and who gatewayd runs as" \
        grep -qF "(owner root, group root, mode 0000; this process runs as $user)" <<<"$line"
check "... and the fix: the gatewayd group, README.udev, udevadm trigger after 60-gatewayd.rules" \
        grep -qE 'add the device to the gatewayd group: see /.*/doc/gatewayd/README\.udev, or run: sudo udevadm trigger after installing 60-gatewayd\.rules$' <<<"$line"
status=$(q last "$work/sub.log" "$prefix/nodes/node-1/status")
check "node-1's status upstream carries the same message" \
        grep -qF "permission denied on $denied" <<<"$(q get "$status" error.message)"
kill -TERM "$gwpid"
gw_wait_pid "$gwpid" 10
check "gatewayd stops with status 0" test $? -eq 0

# gwflash, run by the same user, says the same.
head -c 1000 /dev/urandom >"$work/fw.bin"
chmod 644 "$work/fw.bin"
as_user timeout 20 "$work/bin/gwflash" --transport uart --port "$work/node-1.tty" \
        --baud "$baud" --protocol ymodem -q "$work/fw.bin" 2>"$work/gwflash.err"
rc=$?
check "gwflash exits 1 on the unreadable node (got $rc)" test $rc -eq 1
check "gwflash names the device node and the fix ($(cat "$work/gwflash.err"))" \
        grep -qF "permission denied on $denied (owner root, group root, mode 0000; this process runs as $user): add the device to the gatewayd group" \
        "$work/gwflash.err"

[ "$failures" -eq 0 ] || { tail -n 20 "$work/gatewayd.log"; exit 1; }
exit 0
