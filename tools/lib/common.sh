# Shared by tools/demo, tools/test, the integration tests and the benchmarks: install what is
# missing, build, and start the real parts (a mosquitto broker on loopback, simulated nodes,
# an HTTP server) with every wait bounded and everything stopped on exit.
# shellcheck shell=bash

GW_PACKAGES=(meson ninja-build pkg-config gcc clang clang-format libclang-rt-14-dev
        libserialport-dev libmosquitto-dev libssl-dev libyaml-dev libcmocka-dev
        libcurl4-openssl-dev libjansson-dev libzstd-dev zlib1g-dev mosquitto mosquitto-clients lrzsz socat
        python3 openssl faketime libusb-1.0-0-dev umockdev libumockdev-dev dfu-util
        python3-can libcbor-dev python3-cbor2 openfpgaloader libsystemd-dev scdoc)
# Only the test suite needs these: the Debian package build (tests/integration/debian-package.sh).
GW_TEST_PACKAGES=(build-essential dpkg-dev debhelper lintian debootstrap)

gw_log() { printf '%s\n' "$*" >&2; }
gw_die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Installs the Debian packages the project needs when any is missing (run as root); with the
# argument "test", also those only the test suite needs.
gw_ensure_packages() {
        local missing=() p wanted=("${GW_PACKAGES[@]}")
        [ "${1:-}" = test ] && wanted+=("${GW_TEST_PACKAGES[@]}")
        for p in "${wanted[@]}"; do
                dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
                        missing+=("$p")
        done
        [ ${#missing[@]} -eq 0 ] && return 0
        if [ "$(id -u)" -ne 0 ]; then
                gw_die "missing packages: ${missing[*]} (run as root, or apt-get install them)"
        fi
        gw_log "Installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >/dev/null || gw_die "apt-get update failed"
        apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null ||
                gw_die "apt-get install failed"
}

# gw_build DIR [meson options...]: configures (once) and builds.
gw_build() {
        local dir=$1
        shift
        if [ ! -f "$dir/build.ninja" ]; then
                meson setup "$dir" "$GW_SRC" "$@" >"$dir.setup.log" 2>&1 ||
                        { cat "$dir.setup.log" >&2; gw_die "meson setup failed"; }
        fi
        ninja -C "$dir" -j2 >"$dir.build.log" 2>&1 ||
                { tail -n 40 "$dir.build.log" >&2; gw_die "build failed"; }
}

GW_PIDS=()
# Stops what was started, newest first: gatewayd says goodbye before its broker goes.
gw_cleanup() {
        local i p
        for ((i = ${#GW_PIDS[@]} - 1; i >= 0; i--)); do
                p=${GW_PIDS[i]}
                kill "$p" 2>/dev/null || continue
                timeout 5 tail --pid="$p" -f /dev/null 2>/dev/null || kill -9 "$p" 2>/dev/null
        done
        GW_PIDS=()
}

# A free TCP port on 127.0.0.1.
gw_free_port() {
        python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# gw_start_broker DIR: a mosquitto on 127.0.0.1; sets GW_BROKER_PORT. Waits for a real
# round trip through the broker, not just the port.
gw_start_broker() {
        local dir=$1 i
        GW_BROKER_PORT=$(gw_free_port)
        cat >"$dir/mosquitto.conf" <<CONF
listener $GW_BROKER_PORT 127.0.0.1
allow_anonymous true
persistence false
user root
log_dest file $dir/mosquitto.log
CONF
        mosquitto -c "$dir/mosquitto.conf" >/dev/null 2>&1 &
        GW_PIDS+=($!)
        for i in $(seq 1 100); do
                if mosquitto_pub -h 127.0.0.1 -p "$GW_BROKER_PORT" -q 1 -t gw/ping -m x \
                        2>/dev/null; then
                        return 0
                fi
                sleep 0.05
        done
        gw_die "mosquitto did not come up on port $GW_BROKER_PORT"
}

# gw_start_http DIR: serves DIR on 127.0.0.1; sets GW_HTTP_PORT.
gw_start_http() {
        local dir=$1 i
        GW_HTTP_PORT=$(gw_free_port)
        python3 -m http.server "$GW_HTTP_PORT" --bind 127.0.0.1 --directory "$dir" \
                >"$dir.http.log" 2>&1 &
        GW_PIDS+=($!)
        for i in $(seq 1 100); do
                python3 - "$GW_HTTP_PORT" <<'PY' 2>/dev/null && return 0
import socket, sys
socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=0.2).close()
PY
                sleep 0.05
        done
        gw_die "HTTP server did not come up"
}

# gw_start_sim NAME DIR BAUD [extra ymodem-sim args]: a simulated YMODEM node whose pty is
# DIR/NAME.tty, storing into DIR/NAME.out, reporting to DIR/NAME.report.
gw_start_sim() {
        local name=$1 dir=$2 baud=$3 i
        shift 3
        mkdir -p "$dir/$name.out"
        "$GW_BUILD/tools/sim/ymodem-sim" --link "$dir/$name.tty" --baud "$baud" \
                --out "$dir/$name.out" --report "$dir/$name.report" "$@" \
                2>"$dir/$name.log" &
        GW_PIDS+=($!)
        for i in $(seq 1 100); do
                [ -e "$dir/$name.tty" ] && return 0
                sleep 0.02
        done
        gw_die "simulator $name did not create its pty"
}

# gw_wait_for TIMEOUT_S COMMAND...: polls until COMMAND succeeds.
gw_wait_for() {
        local t=$1 end
        shift
        end=$((SECONDS + t))
        while [ $SECONDS -lt $end ]; do
                "$@" && return 0
                sleep 0.1
        done
        return 1
}

# gw_wait_pid PID SECONDS: waits for PID (a child of ours) and returns its status; kills it and
# returns 124 when it outlives the bound.
gw_wait_pid() {
        local i
        for ((i = 0; i < $2 * 10; i++)); do
                if ! kill -0 "$1" 2>/dev/null; then
                        wait "$1"
                        return $?
                fi
                sleep 0.1
        done
        kill "$1" 2>/dev/null
        wait "$1" 2>/dev/null
        return 124
}

# gw_report_field FILE KEY: a value from a simulator's one-line JSON report (its own compact
# format: flat, no nested strings), the last line's when there are several.
gw_report_field() {
        sed -n "s/.*\"$2\":\"\{0,1\}\([^\",}]*\)\"\{0,1\}[,}].*/\1/p" "$1" | tail -n 1
}
