#!/usr/bin/env bash
# The attacks on gatewayd's trust, end to end through a real broker and simulated nodes, with a
# threshold-2 gatewayd/keys root: key compromise (one key alone, a key counted twice, a rotation
# signed only by its own keys, a valid rotation after which the old keys are refused), fast-
# forward (a huge sequence signed with compromised keys stops blocking after the rotation),
# key rotation from a file (gatewayd --rotate-keys) picked up by the running daemon, replay of
# a manifest signed before a rotation by a key it kept, rollback
# (an older manifest replayed after a restart), and indefinite freeze (expired; the clock set
# back to 1970 with a later latest-trusted-time persisted; a gateway offline past expiry).
: "${GW_SRC:?GW_SRC must name the source directory}"
E2E_NAME=attacks-keys
# shellcheck source=attacks-lib.sh
. "$GW_SRC/tests/integration/attacks-lib.sh"

# libfaketime preloaded straight into gatewayd (the faketime command would fork and stand
# between the test and the daemon's pid). Monotonic time stays real: timers keep working.
faketime_lib=$(find /usr/lib -path '*/faketime/libfaketime.so.1' 2>/dev/null | head -n 1)
if [ -z "$faketime_lib" ]; then
        echo "SKIP: libfaketime is not installed (apt-get install faketime)"
        exit 77
fi


keygen k1 ed25519
keygen k2 ed25519
keygen k3 p256
keygen n1 ed25519
keygen n2 p256
keygen m1 ed25519
{ keys_body 1 2 k1 k2 k3; printf -- '---\nsignatures: []\n'; } >"$work/keys-v1.yaml"
attacks_setup "  keys: keys-v1.yaml"
start_gwd

www=$work/www
for f in a b c d e f g; do head -c 2500 /dev/urandom >"$www/$f.bin"; done
keys_pub() { mosquitto_pub -h 127.0.0.1 -p "$GW_BROKER_PORT" -q 1 -r -t "$prefix/keys" -f "$1"; }
keys_status_n() { q n "$work/sub.log" "$prefix/keys/status"; }
# keys_wait N: waits for more than N keys/status reports and prints the last.
keys_wait() {
        gw_wait_for 10 test "$(keys_status_n)" -gt "$1"
        q last "$work/sub.log" "$prefix/keys/status"
}

# ---- Key compromise: below the threshold --------------------------------------------------------
{ head_ one-key; img a 1.0 "node: node-1" a.bin; } >"$www/one-key.yaml"
sign "$www/one-key.yaml" k1
deploy_url one-key
expect "key compromise, one key of a threshold-2 root signs alone" one-key rejected threshold-not-met

# The one signature twice: a key counts once.
{ sed '/^---$/,$d' "$www/one-key.yaml"; sed -n '/^---$/,$p' "$www/one-key.yaml"; sed -n '/^  - keyid/,$p' "$www/one-key.yaml"; } \
        >"$www/twice.yaml"
check "key compromise: the doubled manifest lists two signatures" test "$(grep -c 'keyid:' "$www/twice.yaml")" = 2
deploy_url twice "twice.yaml"
expect "key compromise, one key's signature given twice" twice rejected threshold-not-met

{ head_ good-1; img a 1.0 "node: node-1" a.bin; } >"$www/good-1.yaml"
sign "$www/good-1.yaml" k1 k3
deploy_url good-1
expect_success "threshold met by two of three keys" good-1 node-1 a.bin a-1.0.bin

# ---- Fast-forward: compromised k1 and k2 sign a huge sequence --------------------------------------
{ head_ ff-attack "" 1000000000000; img b 6.6.6 "node: node-1" b.bin missing.bin; } >"$www/ff-attack.yaml"
sign "$www/ff-attack.yaml" k1 k2
deploy_url ff-attack
expect "fast-forward: the attacker's manifest (valid keys, image missing)" ff-attack failed download-failed
{ head_ ff-blocked; img b 2.0 "node: node-1" b.bin; } >"$www/ff-blocked.yaml"
sign "$www/ff-blocked.yaml" k1 k2
deploy_url ff-blocked
expect "fast-forward: before the rotation the huge sequence blocks" ff-blocked rejected sequence-rollback

# ---- Key rotation over MQTT -------------------------------------------------------------------------
keys_body 2 2 n1 n2 >"$work/keys-v2-own.yaml"
sign "$work/keys-v2-own.yaml" n1 n2
n=$(keys_status_n)
keys_pub "$work/keys-v2-own.yaml"
st=$(keys_wait "$n")
check "key compromise: a rotation signed only by the new keys is rejected ($st)" \
        test "$(q get "$st" state)/$(q get "$st" error.code)/$(q get "$st" version)" = rejected/threshold-not-met/1
{ head_ still-old; img c 1.0 "node: node-2" c.bin; } >"$www/still-old.yaml"
sign "$www/still-old.yaml" n1 n2
deploy_url still-old
expect "key compromise: after a refused rotation the new keys are not trusted" still-old rejected threshold-not-met

keys_body 2 2 n1 n2 >"$work/keys-v2.yaml"
sign "$work/keys-v2.yaml" k1 k2 n1 n2
n=$(keys_status_n)
keys_pub "$work/keys-v2.yaml"
st=$(keys_wait "$n")
check "key rotation: signed by 2 current and 2 own keys is applied ($st)" \
        test "$(q get "$st" state)/$(q get "$st" version)" = applied/2
check "key rotation: persisted in the state dir" cmp -s "$work/keys-v2.yaml" "$work/state/trust/keys.yaml"

{ head_ ff-recovered "" 5; img b 2.0 "node: node-1" b.bin; } >"$www/ff-recovered.yaml"
sign "$www/ff-recovered.yaml" n1 n2
deploy_url ff-recovered
expect_success "fast-forward: after the rotation a lower sequence under the new keys succeeds" \
        ff-recovered node-1 b.bin b-2.0.bin
{ head_ old-keys "" 2000000000000; img c 1.0 "node: node-2" c.bin; } >"$www/old-keys.yaml"
sign "$www/old-keys.yaml" k1 k2 k3
deploy_url old-keys
expect "key compromise: after the rotation the old keys are refused" old-keys rejected threshold-not-met

# The retained keys document comes again on reconnect: not decided twice.
n=$(keys_status_n)
keys_pub "$work/keys-v2.yaml"
sleep 0.5
check "key rotation: the document in force, published again, is not reported again" \
        test "$(keys_status_n)" = "$n"

# ---- Key rotation from a file, while gatewayd runs ----------------------------------------------------
# exited_saying RC PATTERN: the last command ($rc, $out) exited RC and printed PATTERN.
exited_saying() { [ "$rc" -eq "$1" ] && grep -q "$2" <<<"$out"; }
keys_body 3 1 m1 >"$work/keys-v3.yaml"
cp "$work/keys-v3.yaml" "$work/keys-v3-own.yaml"
sign "$work/keys-v3-own.yaml" m1
out=$("$GWD" -c "$work/gatewayd.yaml" --rotate-keys "$work/keys-v3-own.yaml" 2>&1)
rc=$?
check "gatewayd --rotate-keys: signed only by the new key, exit 1 with threshold-not-met ($rc: $out)" \
        exited_saying 1 "^error: threshold-not-met: "
sign "$work/keys-v3.yaml" n1 n2 m1
out=$("$GWD" -c "$work/gatewayd.yaml" --rotate-keys "$work/keys-v3.yaml" 2>/dev/null)
rc=$?
check "gatewayd --rotate-keys: a valid rotation is applied, exit 0 ($rc: $out)" \
        exited_saying 0 "applied: trust root version 3"
out=$("$GWD" -c "$work/gatewayd.yaml" --rotate-keys "$work/keys-v3.yaml" 2>&1)
rc=$?
check "gatewayd --rotate-keys: the same rotation again is refused ($rc: $out)" \
        exited_saying 1 "^error: keys-rotation-invalid: "
# As a server would: the retained document follows the rotation.
n=$(keys_status_n)
keys_pub "$work/keys-v3.yaml"
{ head_ file-rot "" 1; img c 1.0 "node: node-2" c.bin; } >"$www/file-rot.yaml"
sign "$www/file-rot.yaml" m1
deploy_url file-rot
expect_success "key rotation from a file: the running gatewayd verifies with the new key" \
        file-rot node-2 c.bin c-1.0.bin
st=$(keys_wait "$n")
check "key rotation from a file: keys/status reports version 3 applied ($st)" \
        test "$(q get "$st" state)/$(q get "$st" version)" = applied/3

# ---- Rollback: an older manifest replayed after a restart ----------------------------------------------
{ head_ r-old "" 10; img d 1.0 "node: node-2" d.bin; } >"$www/r-old.yaml"
sign "$www/r-old.yaml" m1
deploy_url r-old
expect_success "rollback: the older manifest" r-old node-2 d.bin d-1.0.bin
{ head_ r-new "" 11; img e 1.1 "node: node-2" e.bin; } >"$www/r-new.yaml"
sign "$www/r-new.yaml" m1
deploy_url r-new
expect_success "rollback: the newer manifest" r-new node-2 e.bin e-1.1.bin
stop_gwd
start_gwd
deploy_url r-replay r-old.yaml
expect "rollback: the older manifest replayed after a restart" r-replay rejected sequence-rollback

# ---- Replay across a rotation that keeps a key ----------------------------------------------------------
# m1 signed r-withheld (sequence 11) but it was never delivered; r-new (11) was. A rotation to
# {m1, p1} starts a new sequence, yet what m1 alone signed before it must not come back.
{ head_ r-withheld "" 11; img f 4.0 "node: node-1" f.bin; } >"$www/r-withheld.yaml"
sign "$www/r-withheld.yaml" m1
keygen p1 ed25519
keys_body 4 1 m1 p1 >"$work/keys-v4.yaml"
sign "$work/keys-v4.yaml" m1 p1
out=$("$GWD" -c "$work/gatewayd.yaml" --rotate-keys "$work/keys-v4.yaml" 2>&1)
rc=$?
check "replay across a rotation: the rotation keeping m1 is applied ($rc: $out)" \
        exited_saying 0 "applied: trust root version 4"
deploy_url r-withheld
expect "replay across a rotation: an unseen manifest m1 signed before it, sequence 11" \
        r-withheld rejected sequence-rollback
check "replay across a rotation: the report says why" \
        grep -q "signed only by keys trusted before the last key rotation" "$work/gatewayd.log"
{ head_ r-p1 "" 3; img g 3.0 "node: node-1" g.bin; } >"$www/r-p1.yaml"
sign "$www/r-p1.yaml" p1
deploy_url r-p1
expect_success "replay across a rotation: the new key starts the new sequence (3)" \
        r-p1 node-1 g.bin g-3.0.bin

# ---- Indefinite freeze ------------------------------------------------------------------------------------
{ head_ expired "$(date -u -d '-1 hour' +%Y-%m-%dT%H:%M:%SZ)" 20; img f 1.0 "node: node-1" f.bin; } \
        >"$www/expired.yaml"
sign "$www/expired.yaml" m1
deploy_url expired
expect "indefinite freeze, expired manifest" expired rejected expired

# The clock set back to 1970: the manifest would still be valid by that clock, but the latest
# trusted time persisted by the last accepted manifest (now) is after its expiry.
stop_gwd
start_gwd env LD_PRELOAD="$faketime_lib" FAKETIME='@1970-01-02 00:00:00' FAKETIME_DONT_FAKE_MONOTONIC=1
deploy_url expired-1970 expired.yaml
expect "indefinite freeze, gateway clock at 1970, trusted time persisted" expired-1970 rejected expired
ts=$(q get "$(wait_final expired-1970)" ts)
check "indefinite freeze: gatewayd's clock said 1970 (report ts $ts)" test "${ts:0:10}" = 1970-01-02
# Offline past expiry: a manifest valid for a day, a gateway that comes back two days later.
stop_gwd
start_gwd env LD_PRELOAD="$faketime_lib" FAKETIME='+2d' FAKETIME_DONT_FAKE_MONOTONIC=1
{ head_ offline "" 21; img f 1.0 "node: node-1" f.bin; } >"$www/offline.yaml"
sign "$www/offline.yaml" m1
deploy_url offline
expect "indefinite freeze, gateway offline past expiry" offline rejected expired
ts=$(q get "$(wait_final offline)" ts)
check "indefinite freeze: gatewayd's clock was two days ahead (report ts $ts)" \
        test "${ts:0:10}" = "$(date -u -d '+2 days' +%Y-%m-%d)"
stop_gwd

attacks_finish
