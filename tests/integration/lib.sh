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

CASES_NAME=$E2E_NAME
cases_cleanup() { gw_cleanup; }
# shellcheck source=cases.sh
. "$GW_SRC/tests/integration/cases.sh"

q() { python3 "$GW_SRC/tests/integration/q.py" "$@"; }

# start_evil_http DIR LOG: tests/integration/evil-http.py serving DIR on 127.0.0.1, logging each
# requested path to LOG; sets EVIL_PORT.
start_evil_http() {
        local dir=$1 log=$2 i
        EVIL_PORT=$(gw_free_port)
        : >"$log"
        python3 "$GW_SRC/tests/integration/evil-http.py" --dir "$dir" --port "$EVIL_PORT" \
                --log "$log" 2>"$dir.evil-http.err" &
        GW_PIDS+=($!)
        for i in $(seq 1 100); do
                python3 - "$EVIL_PORT" <<'PY' 2>/dev/null && return 0
import socket, sys
socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=0.2).close()
PY
                sleep 0.05
        done
        echo "FAIL: evil-http.py did not come up"
        exit 1
}

# watch_prefix: every message under $prefix, retained flag first, into $work/sub.log (the
# "<retain> <topic> <payload>" lines q.py reads).
watch_prefix() {
        mosquitto_sub -h 127.0.0.1 -p "$GW_BROKER_PORT" -q 1 -F '%r %t %p' -t "$prefix/#" \
                >"$work/sub.log" 2>"$work/sub.err" &
        GW_PIDS+=($!)
}

# stop_within NAME SECONDS: SIGTERM, then whether gatewayd exited with status 0 in time.
stop_within() {
        local st t0=$SECONDS
        kill -TERM "$gwpid"
        gw_wait_pid "$gwpid" "$2"
        st=$?
        echo "  ($1: exit status $st after $((SECONDS - t0)) s)"
        [ "$st" -eq 0 ]
}

# ymodem_config N [PROTOCOL-OPTIONS [MQTT-LINE [NODE-LINE]]]: $work/gatewayd.yaml for gateway
# $gw on the test broker, trusting release.pub, with nodes node-1..node-N on the YMODEM
# simulators' ptys at $baud (PROTOCOL-OPTIONS inside the protocol mapping, e.g.
# "start-timeout-ms: 3000"; one MQTT-LINE added under mqtt:, e.g. "reconnect-max: 2"; one
# NODE-LINE added to every node, e.g. "retries: 1"). A refused configuration ends the test.
ymodem_config() {
        local n=$1 popts=${2:-} mqtt_line=${3:-} node_line=${4:-} i
        {
                printf 'gateway:\n  id: %s\nstate-dir: state\nlog-level: info\n' "$gw"
                printf 'mqtt:\n  host: 127.0.0.1\n  port: %s\n' "$GW_BROKER_PORT"
                if [ -n "$mqtt_line" ]; then printf '  %s\n' "$mqtt_line"; fi
                printf 'trust:\n  public-keys: [release.pub]\nnodes:\n'
                for ((i = 1; i <= n; i++)); do
                        printf '  - name: node-%d\n' "$i"
                        printf '    transport: { type: uart, port: %s/node-%d.tty, baud: %s }\n' \
                                "$work" "$i" "$baud"
                        printf '    protocol: { type: ymodem%s }\n' "${popts:+, $popts}"
                        if [ -n "$node_line" ]; then printf '    %s\n' "$node_line"; fi
                done
        } >"$work/gatewayd.yaml"
        "$GWD" --check-config "$work/gatewayd.yaml" >/dev/null 2>"$work/check-config.log" || {
                echo "FAIL: the test configuration is refused:"
                cat "$work/check-config.log"
                exit 1
        }
}
