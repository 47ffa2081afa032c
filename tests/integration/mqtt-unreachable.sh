#!/usr/bin/env bash
# gatewayd's loop never waits for the broker's network: a broker address that drops SYNs is
# reported as "cannot reach ... timed out" after mqtt.connect-timeout and SIGTERM still takes
# effect at once while such an attempt runs; a host name that does not resolve is reported as
# "cannot resolve"; and a broker that comes up later is connected to for real (online state).
# Everything stays on 127.0.0.1 (the .invalid name only asks the local resolver).
set -u

: "${GW_SRC:?GW_SRC must name the source directory}"
E2E_NAME=mqtt-unreachable
# shellcheck source=lib.sh
. "$GW_SRC/tests/integration/lib.sh"

"$GWM" keygen --type ed25519 --out "$work/release" >/dev/null ||
        { echo "FAIL: gwmanifest keygen"; exit 1; }

# write_config NAME HOST PORT: $work/NAME/gatewayd.yaml for gateway NAME, no nodes.
write_config() {
        mkdir -p "$work/$1/state"
        cp "$work/release.pub" "$work/$1/"
        cat >"$work/$1/gatewayd.yaml" <<CONF
gateway:
  id: $1
state-dir: state
log-level: debug
mqtt:
  host: $2
  port: $3
  reconnect-min: 1
  reconnect-max: 2
  connect-timeout: 2
trust:
  public-keys: [release.pub]
CONF
        "$GWD" --check-config "$work/$1/gatewayd.yaml" >/dev/null 2>"$work/$1/check-config.log" ||
                { echo "FAIL: the test configuration is refused:"; cat "$work/$1/check-config.log"
                  exit 1; }
}

# start_gw NAME: runs gatewayd for NAME, its log in $work/NAME/gatewayd.log; sets gwpid.
start_gw() {
        "$GWD" -c "$work/$1/gatewayd.yaml" 2>"$work/$1/gatewayd.log" &
        gwpid=$!
        GW_PIDS+=("$gwpid")
}

# logged NAME PATTERN: the log of NAME has a line matching PATTERN (extended regex).
logged() { grep -Eq -- "$2" "$work/$1/gatewayd.log"; }
# logged_times NAME PATTERN N: at least N such lines.
logged_times() { [ "$(grep -Ec -- "$2" "$work/$1/gatewayd.log")" -ge "$3" ]; }


# ---- a. A SYN black hole on loopback ----------------------------------------------------------
# A listener with backlog 0 whose accept queue is filled by connections nobody accepts: the
# kernel then drops further SYNs, so a connect to it gets no answer at all. The script checks
# that before it reports its port.
python3 - "$work/hole.port" <<'PY' 2>"$work/hole.err" &
import os, signal, socket, sys

listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(0)
port = listener.getsockname()[1]
fillers = []
for _ in range(4):
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex(("127.0.0.1", port))
    fillers.append(s)
probe = socket.socket()
probe.settimeout(1.0)
try:
    probe.connect(("127.0.0.1", port))
    sys.exit("the listener answered: no black hole")
except socket.timeout:
    pass
probe.close()
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write("%d\n" % port)
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
signal.pause()
PY
GW_PIDS+=($!)
holepid=$!
gw_wait_for 10 test -s "$work/hole.port" || {
        if kill -0 "$holepid" 2>/dev/null; then echo "FAIL: the black hole did not come up"; exit 1; fi
        echo "SKIP: cannot build a SYN black hole on loopback here: $(cat "$work/hole.err")"
        exit 77
}
hole=$(cat "$work/hole.port")

write_config gw-hole 127.0.0.1 "$hole"
start_gw gw-hole
check "a: an unanswered broker is reported as 'cannot reach 127.0.0.1:$hole: ... timed out'" \
        gw_wait_for 20 logged gw-hole "cannot reach 127\.0\.0\.1:$hole: .*timed out"
check "a: the failed attempt is followed by the reconnect delay" \
        gw_wait_for 10 logged gw-hole "reconnecting to 127\.0\.0\.1:$hole in"
# The next probe has just started and has connect-timeout (2 s) to run: stop now.
if gw_wait_for 10 logged_times gw-hole "MQTT: probing 127\.0\.0\.1:$hole" 2; then
        check "a: SIGTERM while an attempt is pending stops gatewayd (status 0) within 10 s" \
                stop_within gw-hole 10
else
        fail "a: no second connection attempt"
fi
check "a: the signal was handled by the loop" logged gw-hole "Received .*, shutting down"

# ---- b. Nothing listening, then a real broker on that port ------------------------------------
mkdir -p "$work/broker"
gw_start_broker "$work/broker"
bport=$GW_BROKER_PORT
# Stop it again: the port is known, free and refuses connections until the broker is back.
brokerpid=${GW_PIDS[${#GW_PIDS[@]} - 1]}
kill "$brokerpid"
gw_wait_pid "$brokerpid" 5 >/dev/null

write_config gw-late 127.0.0.1 "$bport"
start_gw gw-late
check "b: a refused connection is reported as 'cannot reach ... refused'" \
        gw_wait_for 20 logged gw-late "cannot reach 127\.0\.0\.1:$bport: Connection refused"

mosquitto -c "$work/broker/mosquitto.conf" >/dev/null 2>&1 &
GW_PIDS+=($!)
broker_up() { mosquitto_pub -h 127.0.0.1 -p "$bport" -q 1 -t gw/ping -m x 2>/dev/null; }
gw_wait_for 10 broker_up || { echo "FAIL: mosquitto did not come back on port $bport"; exit 1; }
state() {
        mosquitto_sub -h 127.0.0.1 -p "$bport" -C 1 -W 3 -F '%r %p' -t gatewayd/gw-late/state \
                2>/dev/null
}
online() { state | grep -q '^1 .*"online"'; }
check "b: once the broker is up gatewayd connects and its retained state says online" \
        gw_wait_for 20 online
check "b: gatewayd logged the connection" logged gw-late "MQTT: connected to 127\.0\.0\.1:$bport"
check "b: SIGTERM stops it (status 0)" stop_within gw-late 10
offline() { state | grep -q '^1 .*"offline"'; }
check "b: its retained state then says offline" offline

# ---- c. A host name that does not resolve -----------------------------------------------------
write_config gw-noname nonexistent.invalid 1883
start_gw gw-noname
check "c: an unresolvable host is reported as 'cannot resolve nonexistent.invalid'" \
        gw_wait_for 30 logged gw-noname "cannot resolve nonexistent\.invalid: "
check "c: SIGTERM stops it (status 0) within 10 s" stop_within gw-noname 10

no_sanitizer_report() { ! grep -Eq "Sanitizer|runtime error" "$work/$1/gatewayd.log"; }
for d in gw-hole gw-late gw-noname; do
        check "$d: no sanitizer report in its log" no_sanitizer_report "$d"
done
exit $((failures > 0))
