#!/usr/bin/env bash
# STM32 nodes in MQTT deployments: two simulated STM32F4 ROM bootloaders (stm32-sim, 8E1 timing
# at 460800 baud) behind gatewayd. Both take 1.0 (identify says chip 0x413, the manifest's
# hardware check passes); an atomic 2.0 where node B is read-protected fails with B's reason
# and node A, which took 2.0 first, is rolled back to 1.0 from the store; an image built for
# another chip (0x410) is refused before anything is written. The flash of each simulated chip
# is compared with the image it must hold at the end.
set -u

: "${GW_SRC:?GW_SRC must name the source directory}"
E2E_NAME=deploy-stm32
# shellcheck source=lib.sh
. "$GW_SRC/tests/integration/lib.sh"
SIM=$GW_BUILD/tools/sim/stm32-sim
if [ ! -x "$SIM" ]; then
        echo "SKIP: stm32-sim was not built (protocol-stm32 disabled)"
        exit 77
fi

gw="gw-e2e-stm32"
prefix=gatewayd/$gw
baud=460800
mkdir -p "$work/www" "$work/state"
gw_start_broker "$work"
gw_start_http "$work/www"

# start_stm32 NAME [OPTIONS]: a simulated F405/407 whose bootloader stays after GO (as one an
# entry sequence brings back would); its flash goes to NAME.dump when it stops.
start_stm32() {
        local name=$1 i
        shift
        "$SIM" --link "$work/$name.tty" --baud "$baud" --chip-id 0x413 --after-go stay \
                --write-ms 1 --erase-ms 5 --dump "$work/$name.dump" --report "$work/$name.json" \
                --control "$work/$name.ctl" "$@" 2>"$work/$name.log" &
        GW_PIDS+=($!)
        eval "pid_$name=$!"
        for ((i = 0; i < 100; i++)); do
                grep -q "ready on" "$work/$name.log" 2>/dev/null && return 0
                sleep 0.05
        done
        echo "FAIL: stm32-sim $name did not get ready"
        exit 1
}
start_stm32 stma
start_stm32 stmb
"$GWM" keygen --type ed25519 --out "$work/release" >/dev/null || { echo "FAIL: keygen"; exit 1; }
cat >"$work/gatewayd.yaml" <<CONF
gateway:
  id: $gw
state-dir: state
log-level: info
mqtt:
  host: 127.0.0.1
  port: $GW_BROKER_PORT
trust:
  public-keys: [release.pub]
nodes:
CONF
# stmb takes no second try at a NACKed block: one armed NACK fails its install.
for n in stma stmb; do
        cat >>"$work/gatewayd.yaml" <<CONF
  - name: $n
    class: motor
    transport: { type: uart, port: $work/$n.tty, baud: $baud }
    protocol: { type: stm32$([ $n = stmb ] && echo ", retries: 0") }
CONF
done
"$GWD" --check-config "$work/gatewayd.yaml" >/dev/null 2>"$work/check-config.log" ||
        { echo "FAIL: the test configuration is refused:"; cat "$work/check-config.log"; exit 1; }
watch_prefix
"$GWD" -c "$work/gatewayd.yaml" 2>"$work/gatewayd.log" &
gwpid=$!
GW_PIDS+=("$gwpid")

for v in 1.0 2.0; do
        for n in a b; do head -c $((20000 + RANDOM)) /dev/urandom >"$work/www/$n-$v.bin"; done
done
head -c 9000 /dev/urandom >"$work/www/f1.bin"

seq_no=$(date +%s)
# manifest ID ATOMIC CHIP IMAGES...: IMAGES are "node:file:version" triples.
manifest() {
        local id=$1 atomic=$2 chip=$3 spec node file version
        shift 3
        seq_no=$((seq_no + 1))
        rm -f "$work/www/$id.yaml"
        "$GWM" init --id "$id" --sequence "$seq_no" --out "$work/www/$id.yaml" >/dev/null 2>&1
        sed -i -e "s/^  atomic: false /  atomic: $atomic /" -e "s/^  parallel: 8 /  parallel: 1 /" \
                "$work/www/$id.yaml"
        for spec in "$@"; do
                IFS=: read -r node file version <<<"$spec"
                "$GWM" add-image "$work/www/$file" --name "fw-$node" --version "$version" \
                        --node "$node" --protocol stm32 --hardware "chip-id=$chip" \
                        "$work/www/$id.yaml" >>"$work/$id.add.log" 2>&1 ||
                        { echo "FAIL: add-image $spec"; cat "$work/$id.add.log"; exit 1; }
        done
        "$GWM" sign --key "$work/release" "$work/www/$id.yaml" >/dev/null
}
deploy() {
        mosquitto_pub -h 127.0.0.1 -p "$GW_BROKER_PORT" -q 1 -r -t "$prefix/deploy" \
                -m "{\"id\":\"$1\",\"manifest_url\":\"http://127.0.0.1:$GW_HTTP_PORT/$1.yaml\"}"
}
wait_final() {
        gw_wait_for 90 q final "$work/sub.log" "$prefix/deployments/$1" >/dev/null
        q final "$work/sub.log" "$prefix/deployments/$1"
}

# ---- 1.0 to both ----------------------------------------------------------------------------
manifest s1 false 0x413 stma:a-1.0.bin:1.0 stmb:b-1.0.bin:1.0
deploy s1
final=$(wait_final s1)
check "1.0: success" test "$(q get "$final" state)" = success
check "1.0: stma success" test "$(q get "$final" nodes.stma.state)" = success
check "1.0: stmb success" test "$(q get "$final" nodes.stmb.state)" = success

# ---- read protection: found by identify, nothing written anywhere -------------------------------
printf 'rdp\n' >"$work/stmb.ctl"
manifest s2 true 0x413 stma:a-2.0.bin:2.0 stmb:b-2.0.bin:2.0
deploy s2
final=$(wait_final s2)
check "read-protected B: the deployment fails before any write ($(q get "$final" error.code))" \
        test "$(q get "$final" error.code)" = node-incompatible
check "read-protected B: named ($(q get "$final" nodes.stmb.error.message))" \
        grep -qi "read-protected" <<<"$(q get "$final" nodes.stmb.error.message)"
printf 'no-rdp\n' >"$work/stmb.ctl"

# ---- atomic 2.0: B fails mid-write, A (flashed first) rolled back ---------------------------------
printf 'nack-block 3\n' >"$work/stmb.ctl"
manifest s4 true 0x413 stma:a-2.0.bin:2.0 stmb:b-2.0.bin:2.0
deploy s4
final=$(wait_final s4)
check "atomic 2.0: failed" test "$(q get "$final" state)" = failed
check "atomic 2.0: stmb failed on the NACK ($(q get "$final" nodes.stmb.error.message))" \
        grep -qi "nack" <<<"$(q get "$final" nodes.stmb.error.message)"
check "atomic 2.0: stma reverted ($(q get "$final" nodes.stma.state))" \
        test "$(q get "$final" nodes.stma.state)" = reverted
check "atomic 2.0: stma's report names 1.0 again" test "$(q get "$final" nodes.stma.version)" = 1.0

# ---- an image for another chip ------------------------------------------------------------------
manifest s3 false 0x410 stma:f1.bin:3.0
deploy s3
final=$(wait_final s3)
check "chip 0x410 image: refused as node-incompatible ($(q get "$final" state) $(q get "$final" error.code))" \
        test "$(q get "$final" error.code)" = node-incompatible

check "gatewayd stops cleanly" stop_within gatewayd 10
# The simulated chips' flash: A holds 1.0 again, B still 1.0 (2.0 never reached it).
for n in a b; do
        kill -TERM "$(eval echo "\$pid_stm$n")" 2>/dev/null
done
sleep 0.5
gw_wait_for 10 test -s "$work/stma.dump" -a -s "$work/stmb.dump"
check "stma's flash starts with 1.0 (rolled back)" \
        cmp -s -n "$(stat -c %s "$work/www/a-1.0.bin")" "$work/www/a-1.0.bin" "$work/stma.dump"
check "stmb's flash starts with 1.0" \
        cmp -s -n "$(stat -c %s "$work/www/b-1.0.bin")" "$work/www/b-1.0.bin" "$work/stmb.dump"
[ "$failures" -eq 0 ]
