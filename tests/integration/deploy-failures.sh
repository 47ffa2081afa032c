#!/usr/bin/env bash
# Deployments that must fail over MQTT, each with its stable error code on
# <prefix>/deployments/<id> and nothing flashed: bad and tampered signatures, a garbage manifest,
# image hash and size mismatches, unreachable images, an expired manifest, another gateway's
# hardware, an unknown node, an unreachable manifest, sequence rollbacks, and a node that never
# answers (the other node still succeeds).
# gatewayd must survive all of them and run a good deployment afterwards.
set -u

: "${GW_SRC:?GW_SRC must name the source directory}"
E2E_NAME=deploy-failures
# shellcheck source=lib.sh
. "$GW_SRC/tests/integration/lib.sh"

# ---- The parts --------------------------------------------------------------------------------
gw="gw-e2e-fail"
prefix=gatewayd/$gw
baud=921600
mkdir -p "$work/www" "$work/state"
gw_start_broker "$work"
gw_start_http "$work/www"
gw_start_sim node-1 "$work" "$baud"
gw_start_sim node-2 "$work" "$baud"
# node-3 never answers: no 'C', nothing. The fault is armed both ways the simulator offers
# (command line and control FIFO).
gw_start_sim node-3 "$work" "$baud" --silent --control "$work/node-3.ctl"
timeout 5 sh -c "printf 'silent\\n' >'$work/node-3.ctl'" ||
        { echo "FAIL: cannot arm the silent fault of node-3"; exit 1; }
# node-4 (not configured in gatewayd) checks that ymodem-sim --silent itself sends nothing.
gw_start_sim node-4 "$work" "$baud" --silent
"$GWM" keygen --type ed25519 --out "$work/release" >/dev/null &&
        "$GWM" keygen --type ed25519 --out "$work/other" >/dev/null ||
        { echo "FAIL: gwmanifest keygen"; exit 1; }

cat >"$work/gatewayd.yaml" <<CONF
gateway:
  id: $gw
  hardware: gw-e2e-hw
state-dir: state
log-level: info
mqtt:
  host: 127.0.0.1
  port: $GW_BROKER_PORT
fetch:
  connect-timeout: 2
trust:
  public-keys: [release.pub]
nodes:
CONF
for n in 1 2 3; do
        cat >>"$work/gatewayd.yaml" <<CONF
  - name: node-$n
    transport: { type: uart, port: $work/node-$n.tty, baud: $baud }
    protocol: { type: ymodem, start-timeout-ms: 2000 }
CONF
done
"$GWD" --check-config "$work/gatewayd.yaml" >/dev/null 2>"$work/check-config.log" ||
        { echo "FAIL: the test configuration is refused:"; cat "$work/check-config.log"; exit 1; }

watch_prefix

"$GWD" -c "$work/gatewayd.yaml" 2>"$work/gatewayd.log" &
gwpid=$!
GW_PIDS+=("$gwpid")

seq_no=$(date +%s)
expires=$(date -u -d '+1 day' +%Y-%m-%dT%H:%M:%SZ)
# head ID [EXPIRES [GATEWAY-HARDWARE]]: a manifest body's start, with the next sequence number.
head_() {
        seq_no=$((seq_no + 1))
        echo "kind: gatewayd/manifest"
        echo "format: 1"
        echo "id: $1"
        echo "sequence: $seq_no"
        echo "expires: ${2:-$expires}"
        [ -n "${3:-}" ] && echo "gateway: { hardware: [$3] }"
        echo "policy: { parallel: 3 }"
        echo "images:"
}
# img NAME VERSION NODE FILE [URL [SIZE [SHA256]]]: one image; size and hash default to FILE's.
img() {
        local f=$work/www/$4
        echo "  - name: $1"
        echo "    version: $2"
        echo "    targets: { node: $3 }"
        echo "    protocol: ymodem"
        echo "    size: ${6:-$(stat -c %s "$f")}"
        echo "    sha256: ${7:-$(sha256sum "$f" | cut -d' ' -f1)}"
        echo "    url: ${5:-$4}"
}
sign() { "$GWM" sign --key "$work/${2:-release}" "$1" >/dev/null; }
deploy() { mosquitto_pub -h 127.0.0.1 -p "$GW_BROKER_PORT" -q 1 -r -t "$prefix/deploy" -m "$1"; }
deploy_url() { deploy "{\"id\":\"$1\",\"manifest_url\":\"http://127.0.0.1:$GW_HTTP_PORT/$1.yaml\"}"; }
wait_final() {
        gw_wait_for 30 q final "$work/sub.log" "$prefix/deployments/$1" >/dev/null
        q final "$work/sub.log" "$prefix/deployments/$1"
}
# flashed: a fingerprint of what the nodes have received (report lines, files stored).
flashed() {
        local n
        for n in 1 2 3; do
                printf '%s/%s ' "$(cat "$work/node-$n.report" 2>/dev/null | wc -l)" \
                        "$(find "$work/node-$n.out" -type f | wc -l)"
        done
}

head -c 3000 /dev/urandom >"$work/www/a.bin"
head -c 5000 /dev/urandom >"$work/www/b.bin"
head -c 3000 /dev/urandom >"$work/www/other.bin"

# expect NAME ID STATE CODE: the final report of ID has STATE and error code CODE, nothing
# reached a node, and gatewayd is still running. Call right after publishing.
expect() {
        local name=$1 id=$2 state=$3 code=$4 before=$5 final
        final=$(wait_final "$id")
        check "$name: deployments/$id ends $state" test "$(q get "$final" state)" = "$state"
        check "$name: the error code is $code (got '$(q get "$final" error.code)')" \
                test "$(q get "$final" error.code)" = "$code"
        check "$name: nothing was flashed" test "$(flashed)" = "$before"
        check "$name: gatewayd is still running" kill -0 "$gwpid"
}

# ---- The simulator's silence (the precondition of the node-unreachable case) ------------------
silent_bytes=$(python3 - "$work/node-4.tty" <<'PY'
import os, select, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
got, end = b"", time.monotonic() + 1.5
while time.monotonic() < end:
    if select.select([fd], [], [], 0.1)[0]:
        try:
            got += os.read(fd, 64)
        except BlockingIOError:
            pass
os.close(fd)
print(len(got))
PY
)
check "ymodem-sim --silent sends nothing to a host that opens its pty (got $silent_bytes bytes)" \
        test "$silent_bytes" = 0

# ---- Signatures and envelope ------------------------------------------------------------------
b=$(flashed)
{ head_ f-badsig; img a 1.0 node-1 a.bin; } >"$work/www/f-badsig.yaml"
sign "$work/www/f-badsig.yaml" other
deploy_url f-badsig
expect "signed by an untrusted key" f-badsig rejected threshold-not-met "$b"

{ head_ f-tamper; img a 1.0 node-1 a.bin; } >"$work/www/f-tamper.yaml"
sign "$work/www/f-tamper.yaml"
sed -i 's/^    version: 1\.0$/    version: 6.6/' "$work/www/f-tamper.yaml"
grep -q 'version: 6.6' "$work/www/f-tamper.yaml" || fail "tampered body: sed did not change it"
deploy_url f-tamper
expect "body changed after signing" f-tamper rejected threshold-not-met "$b"

printf 'this is not a manifest\nat all\n' >"$work/www/f-garbage.yaml"
deploy_url f-garbage
expect "garbage manifest without ---" f-garbage rejected envelope-malformed "$b"

# ---- Images -----------------------------------------------------------------------------------
{
        head_ f-hash
        img a 1.0 node-1 a.bin "" "" "$(sha256sum "$work/www/other.bin" | cut -d' ' -f1)"
} >"$work/www/f-hash.yaml"
sign "$work/www/f-hash.yaml"
deploy_url f-hash
expect "image sha256 of another file" f-hash failed image-hash-mismatch "$b"

{ head_ f-size-big; img a 1.0 node-1 a.bin "" 3001; } >"$work/www/f-size-big.yaml"
sign "$work/www/f-size-big.yaml"
deploy_url f-size-big
expect "image shorter than its declared size" f-size-big failed image-size-mismatch "$b"

{ head_ f-size-small; img a 1.0 node-1 a.bin "" 2999; } >"$work/www/f-size-small.yaml"
sign "$work/www/f-size-small.yaml"
deploy_url f-size-small
expect "image longer than its declared size" f-size-small failed image-size-mismatch "$b"

{ head_ f-404; img a 1.0 node-1 a.bin missing.bin; } >"$work/www/f-404.yaml"
sign "$work/www/f-404.yaml"
deploy_url f-404
expect "image URL answers HTTP 404" f-404 failed download-failed "$b"

closed=$(gw_free_port)
{ head_ f-closed; img a 1.0 node-1 a.bin "http://127.0.0.1:$closed/a.bin"; } \
        >"$work/www/f-closed.yaml"
sign "$work/www/f-closed.yaml"
deploy_url f-closed
expect "image URL on a closed port" f-closed failed download-failed "$b"

accepted_seq=$seq_no # f-closed was accepted (it failed later, downloading): its sequence holds

# ---- Manifest checks ----------------------------------------------------------------------------
deploy "{\"id\":\"f-nomanifest\",\"manifest_url\":\"http://127.0.0.1:$GW_HTTP_PORT/no-such.yaml\"}"
expect "manifest_url answers HTTP 404" f-nomanifest rejected download-failed "$b"

{ head_ f-rollback; img a 1.0 node-1 a.bin; } >"$work/www/f-rollback.yaml"
sed -i 's/^sequence: .*/sequence: 1/' "$work/www/f-rollback.yaml"
sign "$work/www/f-rollback.yaml"
deploy_url f-rollback
expect "sequence below the last accepted one" f-rollback rejected sequence-rollback "$b"

{ head_ f-sameseq; img a 1.0 node-1 a.bin; } >"$work/www/f-sameseq.yaml"
sed -i "s/^sequence: .*/sequence: $accepted_seq/" "$work/www/f-sameseq.yaml"
sign "$work/www/f-sameseq.yaml"
deploy_url f-sameseq
expect "same sequence as the last accepted, other bytes" f-sameseq rejected sequence-rollback "$b"

{ head_ f-expired "$(date -u -d '-1 day' +%Y-%m-%dT%H:%M:%SZ)"; img a 1.0 node-1 a.bin; } \
        >"$work/www/f-expired.yaml"
sign "$work/www/f-expired.yaml"
deploy_url f-expired
expect "expired manifest" f-expired rejected expired "$b"

{ head_ f-gwhw "" other-hw; img a 1.0 node-1 a.bin; } >"$work/www/f-gwhw.yaml"
sign "$work/www/f-gwhw.yaml"
deploy_url f-gwhw
expect "manifest for other gateway hardware" f-gwhw rejected gateway-incompatible "$b"

{ head_ f-node; img a 1.0 node-1 a.bin; img b 1.0 node-9 b.bin; } >"$work/www/f-node.yaml"
sign "$work/www/f-node.yaml"
deploy_url f-node
expect "target node that is not configured" f-node rejected node-unknown "$b"

# An image option the node's protocol does not read, or a value it refuses, would fail that node
# only once it is flashed, after the others took their images: refused before anything moves.
{
        head_ f-optkey
        img a 1.0 node-1 a.bin
        img b 1.0 node-2 b.bin
        echo "    options: { ack-timeout: 5000 }"
} >"$work/www/f-optkey.yaml"
sign "$work/www/f-optkey.yaml"
deploy_url f-optkey
expect "image option the protocol does not read" f-optkey rejected node-incompatible "$b"
check "image option the protocol does not read: the message names it" \
        grep -q "image b for node node-2: protocol ymodem: unknown option 'ack-timeout'" \
        "$work/gatewayd.log"
{
        head_ f-optval
        img a 1.0 node-1 a.bin
        echo "    options: { retries: 100000 }"
} >"$work/www/f-optval.yaml"
sign "$work/www/f-optval.yaml"
deploy_url f-optval
expect "image option value the protocol refuses" f-optval rejected node-incompatible "$b"

# ---- A node that never answers ------------------------------------------------------------------
{ head_ f-silent; img a 1.0 node-1 a.bin; img b 1.0 node-3 b.bin; } >"$work/www/f-silent.yaml"
sign "$work/www/f-silent.yaml"
deploy_url f-silent
final=$(wait_final f-silent)
check "silent node: deployments/f-silent ends failed" test "$(q get "$final" state)" = failed
check "silent node: node-3 failed (got '$(q get "$final" nodes.node-3.state)')" \
        test "$(q get "$final" nodes.node-3.state)" = failed
check "silent node: node-3's error is node-unreachable (got '$(q get "$final" nodes.node-3.error.code)')" \
        test "$(q get "$final" nodes.node-3.error.code)" = node-unreachable
check "silent node: node-1 in the same deployment succeeded" \
        test "$(q get "$final" nodes.node-1.state)" = success
check "silent node: node-1 holds its image" cmp -s "$work/www/a.bin" "$work/node-1.out/a-1.0.bin"
check "silent node: node-3 stored nothing" \
        test "$(find "$work/node-3.out" -type f | wc -l)" -eq 0
r=$(q final "$work/sub.log" "$prefix/nodes/node-3/status" 2>/dev/null)
check "silent node: node-3's status says failed, node-unreachable" \
        test "$(q get "$r" state)/$(q get "$r" error.code)" = failed/node-unreachable
check "silent node: gatewayd is still running" kill -0 "$gwpid"

# ---- Still working ------------------------------------------------------------------------------
{ head_ good "" "other-hw, gw-e2e-hw"; img a 2.0 node-1 a.bin; img b 2.0 node-2 b.bin; } \
        >"$work/www/good.yaml"
sign "$work/www/good.yaml"
deploy_url good
final=$(wait_final good)
check "after all failures: a good deployment succeeds" test "$(q get "$final" state)" = success
check "after all failures: node-1 holds its image" \
        cmp -s "$work/www/a.bin" "$work/node-1.out/a-2.0.bin"
check "after all failures: node-2 holds its image" \
        cmp -s "$work/www/b.bin" "$work/node-2.out/b-2.0.bin"

if [ "$failures" -ne 0 ]; then
        echo "--- gatewayd log (last 40 lines) ---"
        tail -n 40 "$work/gatewayd.log"
        exit 1
fi
exit 0
