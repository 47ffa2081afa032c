#!/usr/bin/env bash
# Hotplug and the inventory: gatewayd under the umockdev DFU emulator (tools/sim/dfu-sim in
# serving mode) with one configured USB node, a second DFU board that no node claims and a
# serial node whose port comes and goes. <prefix>/inventory must say each node's link is present
# or not, list the unclaimed board, and follow every change within a few seconds, retained:
# the node's board leaving the bus and coming back, the unclaimed board doing the same, the
# serial port appearing, and the node's board vanishing in the middle of a deployment (the
# emulator's disconnect fault) and returning.
set -u

: "${GW_SRC:?GW_SRC must name the source directory}"
: "${GW_BUILD:?GW_BUILD must name the build directory}"
E2E_NAME=hotplug
# shellcheck source=lib.sh
. "$GW_SRC/tests/integration/lib.sh"
require_dfu_sim

gw=gw-hotplug
prefix=gatewayd/$gw
mkdir -p "$work/www" "$work/state"
cat >"$work/probe.yaml" <<CONF
gateway: { id: probe }
state-dir: state
mqtt: { host: 127.0.0.1 }
trust: { public-keys: [release.pub] }
nodes:
  - name: board-1
    transport: { type: usb, usb: "1d50:6089" }
    protocol: { type: dfu }
CONF
"$GWM" keygen --type ed25519 --out "$work/release" >/dev/null ||
        { echo "FAIL: gwmanifest keygen"; exit 1; }
if "$GWD" --check-config "$work/probe.yaml" 2>&1 | grep -q "'usb' is not built in"; then
        echo "SKIP: gatewayd was built without the usb transport (libusb-1.0 missing)"
        exit 77
fi

gw_start_broker "$work"
gw_start_http "$work/www"

# The emulator: NODE-1 is board-1's, SPARE-2 nobody's. A board that re-enumerates stays away
# 3 s, one that disconnects comes back after 3 s: long enough to see it gone.
"$SIM" --serial NODE-1 --serial SPARE-2 --env-file "$work/sim.env" --control "$work/sim.ctl" \
        --reenum-ms 3000 --reconnect-ms 3000 --report "$work/sim.json" \
        >"$work/sim.out" 2>"$work/sim.err" &
GW_PIDS+=($!)
gw_wait_for 10 test -s "$work/sim.env" || { echo "FAIL: dfu-sim wrote no env file"; exit 1; }
ctl() { echo "$*" >"$work/sim.ctl"; }

cat >"$work/gatewayd.yaml" <<CONF
gateway:
  id: $gw
state-dir: state
log-level: debug
mqtt:
  host: 127.0.0.1
  port: $GW_BROKER_PORT
  reconnect-max: 2
trust:
  public-keys: [release.pub]
nodes:
  - name: board-1
    class: dfu-board
    transport: { type: usb, usb: "1d50:6089", serial: NODE-1 }
    protocol: { type: dfu, alt: 0 }
  - name: tty-1
    transport: { type: uart, port: $work/tty-1, baud: 115200 }
    protocol: { type: ymodem }
CONF
"$GWD" --check-config "$work/gatewayd.yaml" >/dev/null 2>"$work/check-config.log" ||
        { echo "FAIL: the test configuration is refused:"; cat "$work/check-config.log"; exit 1; }

watch_prefix
(
        set -a
        # shellcheck disable=SC1091
        . "$work/sim.env"
        set +a
        export ASAN_OPTIONS=verify_asan_link_order=0
        exec "$GWD" -c "$work/gatewayd.yaml" 2>>"$work/gatewayd.log"
) &
GW_PIDS+=($!)

# inv EXPR: the last inventory published satisfies EXPR, a Python expression over i (the
# payload), node (nodes by name) and attached (unclaimed devices by serial).
inv() {
        python3 - "$work/sub.log" "$prefix/inventory" "$1" <<'PY'
import json, sys
last = None
with open(sys.argv[1], encoding="utf-8", errors="replace") as f:
    for line in f:
        parts = line.rstrip("\n").split(" ", 2)
        if len(parts) == 3 and parts[1] == sys.argv[2]:
            try:
                last = json.loads(parts[2])
            except ValueError:
                pass
if not isinstance(last, dict):
    sys.exit(1)
i = last
node = {n.get("name"): n for n in i.get("nodes", [])}
attached = {a.get("serial"): a for a in i.get("attached", [])}
sys.exit(0 if eval(sys.argv[3]) else 1)
PY
}
# retained_inv EXPR: the same on the message the broker retains, which must be retained.
retained_inv() {
        local m
        m=$(mosquitto_sub -h 127.0.0.1 -p "$GW_BROKER_PORT" -C 1 -W 3 -F '%r %t %p' \
                -t "$prefix/inventory" 2>/dev/null)
        case $m in 1\ *) ;; *) return 1 ;; esac
        python3 - "$m" "$1" <<'PY'
import json, sys
i = json.loads(sys.argv[1].split(" ", 2)[2])
node = {n.get("name"): n for n in i.get("nodes", [])}
attached = {a.get("serial"): a for a in i.get("attached", [])}
sys.exit(0 if eval(sys.argv[2]) else 1)
PY
}
n_inv() { q n "$work/sub.log" "$prefix/inventory"; }
present='node["board-1"].get("present") is True'
absent='node["board-1"].get("present") is False'
spare='attached.get("SPARE-2", {}).get("usb") == "1d50:6089" and attached["SPARE-2"].get("path") == "1-2"'

# ---- 1. At start: board-1 present, SPARE-2 unclaimed, tty-1 absent -------------------------
check "start: the inventory says board-1 is present" gw_wait_for 15 inv "$present"
check "start: the unclaimed board SPARE-2 is listed with its ids and port path" inv "$spare"
check "start: board-1's own board is not listed as unclaimed" inv '"NODE-1" not in attached'
check "start: tty-1's port is not there" inv 'node["tty-1"].get("present") is False'
check "start: the inventory keeps transport, protocol and class" \
        inv 'node["board-1"]["transport"] == "usb" and node["board-1"]["protocol"] == "dfu" and node["board-1"]["class"] == "dfu-board"'
check "start: the inventory is retained" retained_inv "$present and $spare"

# ---- 2. board-1 leaves the bus and comes back ------------------------------------------------
before=$(n_inv)
t0=$SECONDS
ctl "@NODE-1 reenumerate"
check "leave: board-1 not present within 2 s" gw_wait_for 2 inv "$absent"
check "leave: SPARE-2 still listed" inv "$spare"
check "leave: retained as not present" retained_inv "$absent"
check "return: board-1 present again" gw_wait_for 8 inv "$present"
check "return: not before the board came back (3 s)" test $((SECONDS - t0)) -ge 2
check "return: exactly two inventory updates for one leave and return" \
        test "$(($(n_inv) - before))" -eq 2

# ---- 3. The unclaimed board leaves and comes back -------------------------------------------
ctl "@SPARE-2 reenumerate"
check "unclaimed leave: SPARE-2 no longer listed" gw_wait_for 2 inv '"SPARE-2" not in attached'
check "unclaimed leave: board-1 still present" inv "$present"
check "unclaimed return: SPARE-2 listed again" gw_wait_for 8 inv "$spare"

# ---- 4. A serial port appears ----------------------------------------------------------------
seen=$(grep -c "a serial port directory changed" "$work/gatewayd.log")
t0=$(date +%s%N)
ln -s /dev/null "$work/tty-1"
check "serial: tty-1 present once its port exists" \
        gw_wait_for 5 inv 'node["tty-1"].get("present") is True'
echo "serial: the inventory said so $((($(date +%s%N) - t0) / 1000000)) ms after the port appeared"
check "serial: gatewayd was told by inotify, not by its 2 s poll" \
        test "$(grep -c "a serial port directory changed" "$work/gatewayd.log")" -gt "$seen"
rm -f "$work/tty-1"
check "serial: tty-1 not present once its port is gone" \
        gw_wait_for 5 inv 'node["tty-1"].get("present") is False'

# ---- 5. board-1 vanishes in the middle of a deployment and returns ---------------------------
head -c 20000 /dev/urandom >"$work/www/fw.bin"
cat >"$work/www/d1.yaml" <<MANIFEST
kind: gatewayd/manifest
format: 1
id: d1
sequence: $(date +%s)
expires: $(date -u -d '+1 day' +%Y-%m-%dT%H:%M:%SZ)
images:
  - name: fw
    version: 2.0.0
    targets: { node: board-1 }
    protocol: dfu
    size: $(stat -c %s "$work/www/fw.bin")
    sha256: $(sha256sum "$work/www/fw.bin" | cut -d' ' -f1)
    url: fw.bin
MANIFEST
"$GWM" sign --key "$work/release" "$work/www/d1.yaml" >/dev/null
ctl "@NODE-1 disconnect 3"
sleep 0.2
t0=$SECONDS
mosquitto_pub -h 127.0.0.1 -p "$GW_BROKER_PORT" -q 1 -r -t "$prefix/deploy" \
        -m "{\"id\":\"d1\",\"manifest_url\":\"http://127.0.0.1:$GW_HTTP_PORT/d1.yaml\"}"
check "disconnect: board-1 not present while it is away" gw_wait_for 10 inv "$absent"
final=$(gw_wait_for 30 q final "$work/sub.log" "$prefix/deployments/d1" >/dev/null &&
        q final "$work/sub.log" "$prefix/deployments/d1")
check "disconnect: the deployment failed (the board vanished mid-download)" \
        test "$(q get "$final" state)" = failed
check "disconnect: board-1 present again after it reconnected" gw_wait_for 10 inv "$present"
check "disconnect: retained as present" retained_inv "$present and $spare"
ctl report
sim_disconnects() {
        python3 - "$work/sim.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
d = {x["serial"]: x for x in r["devices"]}
sys.exit(0 if d["NODE-1"]["disconnects"] == 1 and d["SPARE-2"]["disconnects"] == 0 else 1)
PY
}
check "disconnect: the emulator took NODE-1 off the bus once, SPARE-2 never" \
        gw_wait_for 3 sim_disconnects

# ---- 6. With the board back, a deployment goes through and the inventory tells its version --
sed -e 's/^id: d1$/id: d2/' -e "s/^sequence: .*/sequence: $(($(date +%s) + 1))/" \
        -e '/^---$/,$d' "$work/www/d1.yaml" >"$work/www/d2.yaml"
"$GWM" sign --key "$work/release" "$work/www/d2.yaml" >/dev/null
mosquitto_pub -h 127.0.0.1 -p "$GW_BROKER_PORT" -q 1 -r -t "$prefix/deploy" \
        -m "{\"id\":\"d2\",\"manifest_url\":\"http://127.0.0.1:$GW_HTTP_PORT/d2.yaml\"}"
final=$(gw_wait_for 30 q final "$work/sub.log" "$prefix/deployments/d2" >/dev/null &&
        q final "$work/sub.log" "$prefix/deployments/d2")
check "deploy: d2 to board-1 succeeded" test "$(q get "$final" state)" = success
check "deploy: the inventory says board-1 runs 2.0.0 and is present" \
        gw_wait_for 5 inv "node['board-1'].get('version') == '2.0.0' and $present"

if grep -q "AddressSanitizer\|runtime error" "$work/gatewayd.log"; then
        fail "gatewayd reported a sanitizer error"
fi
if [ "$failures" -gt 0 ]; then
        echo "--- gatewayd.log (tail)"
        tail -n 30 "$work/gatewayd.log"
        echo "$failures check(s) failed"
        exit 1
fi
