#!/usr/bin/env bash
# gatewayd's MQTT over TLS against real mosquitto brokers on 127.0.0.1, with a CA and certificates
# made here by the openssl command: a signed deployment over mutual TLS; a client certificate the
# broker does not trust; a broker certificate for another name (refused, accepted with
# insecure: true); and --check-config on the mqtt.tls mapping.
set -u

: "${GW_SRC:?GW_SRC must name the source directory}"
E2E_NAME=mqtt-tls
# shellcheck source=lib.sh
. "$GW_SRC/tests/integration/lib.sh"

if ! command -v openssl >/dev/null; then
        echo "SKIP: the openssl command is not installed (package openssl)"
        exit 77
fi

# ---- Certificates -------------------------------------------------------------------------------
# make_cert NAME CN ISSUER [SAN]: $pki/NAME.pem and $pki/NAME.key, an ECDSA P-256 key and a
# certificate for CN valid one day. ISSUER "self" makes a CA (req -x509 adds CA:TRUE); otherwise
# it names the CA (made by make_cert) that signs it. SAN is a subjectAltName value such as
# "IP:127.0.0.1,DNS:localhost". Written as a helper any TLS test could share.
pki=$work/pki
mkdir -p "$pki"
make_cert() {
        local name=$1 cn=$2 issuer=$3 san=${4:-}
        if [ "$issuer" = self ]; then
                openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
                        -subj "/CN=$cn" -keyout "$pki/$name.key" -out "$pki/$name.pem"
        else
                if [ -n "$san" ]; then echo "subjectAltName=$san"; fi >"$pki/$name.ext"
                openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$cn" \
                        -keyout "$pki/$name.key" -out "$pki/$name.csr" &&
                        openssl x509 -req -in "$pki/$name.csr" -CA "$pki/$issuer.pem" \
                                -CAkey "$pki/$issuer.key" -set_serial "0x$(openssl rand -hex 8)" \
                                -days 1 -extfile "$pki/$name.ext" -out "$pki/$name.pem"
        fi >>"$pki/openssl.log" 2>&1 || { echo "FAIL: openssl could not make $name"; exit 1; }
}
make_cert ca gatewayd-test-ca self
make_cert rogue-ca rogue-ca self
make_cert server 127.0.0.1 ca "IP:127.0.0.1,DNS:localhost"
make_cert other other.example ca "DNS:other.example"
make_cert operator operator ca
make_cert gw-tls gw-tls ca
make_cert gw-name gw-name ca
make_cert gw-untrusted gw-untrusted rogue-ca

# ---- Brokers ------------------------------------------------------------------------------------
# The test's own client: the operator's certificate, trusting our CA.
OP=(--cafile "$pki/ca.pem" --cert "$pki/operator.pem" --key "$pki/operator.key")

# start_tls_broker NAME SERVER_CERT [mosquitto_pub options]: a mosquitto with one TLS listener on
# 127.0.0.1 that requires a client certificate signed by our CA and knows each client by its
# certificate's CN; the ACL lets a gateway use only gatewayd/<its CN>/# and the operator
# everything. Sets BROKER_PORT; waits for a publish through the TLS listener (a CONNACK, not just
# the port: as root the broker may open its port and then exit on its key, see the notes).
start_tls_broker() {
        local name=$1 cert=$2 dir=$work/broker-$1 port
        shift 2
        mkdir -p "$dir"
        port=$(gw_free_port)
        printf 'user operator\ntopic readwrite #\n\npattern readwrite gatewayd/%%u/#\n' >"$dir/acl"
        cat >"$dir/mosquitto.conf" <<CONF
listener $port 127.0.0.1
allow_anonymous false
user root
persistence false
log_dest file $dir/mosquitto.log
log_type all
cafile $pki/ca.pem
certfile $pki/$cert.pem
keyfile $pki/$cert.key
require_certificate true
use_identity_as_username true
acl_file $dir/acl
CONF
        mosquitto -c "$dir/mosquitto.conf" >"$dir/stdout.log" 2>&1 &
        GW_PIDS+=($!)
        if ! gw_wait_for 10 mosquitto_pub -h 127.0.0.1 -p "$port" "${OP[@]}" "$@" -q 1 \
                -t gw/ping -m x 2>/dev/null; then
                echo "FAIL: the TLS broker $name did not come up"
                cat "$dir/mosquitto.log" "$dir/stdout.log"
                exit 1
        fi
        BROKER_PORT=$port
}
start_tls_broker mutual server
PORT_mutual=$BROKER_PORT
no_cert_refused() {
        ! mosquitto_pub -h 127.0.0.1 -p "$PORT_mutual" --cafile "$pki/ca.pem" -q 1 -t gw/ping \
                -m x 2>/dev/null
}
check "mutual TLS: the broker refuses a client without a certificate" no_cert_refused
# The test's own clients need --insecure with this one too.
start_tls_broker other other --insecure
PORT_other=$BROKER_PORT

# sub PORT [mosquitto_sub options]: mosquitto_sub through the TLS broker as the operator.
sub() {
        local port=$1
        shift
        mosquitto_sub -h 127.0.0.1 -p "$port" "${OP[@]}" "$@"
}
# retained PORT TOPIC [options]: "<retain flag> <payload>" of the message retained on TOPIC, or
# nothing.
retained() { sub "$1" -C 1 -W 3 -F '%r %p' -t "$2" "${@:3}" 2>/dev/null; }
# retained_state PORT GATEWAY [options]: the "state" of GATEWAY's retained state message, or
# nothing.
retained_state() {
        local r
        r=$(retained "$1" "gatewayd/$2/state" "${@:3}")
        [ "${r%% *}" = 1 ] && q get "${r#* }" state 2>/dev/null
}

# ---- gatewayd -----------------------------------------------------------------------------------
"$GWM" keygen --type ed25519 --out "$work/release" >/dev/null ||
        { echo "FAIL: gwmanifest keygen"; exit 1; }

# write_config NAME PORT TLS_MAPPING [NODES...]: $work/NAME/gatewayd.yaml for gateway NAME with
# the given flow mapping as mqtt.tls (paths relative to the configuration's directory) and one
# simulated YMODEM node per name in NODES.
baud=921600
write_config() {
        local name=$1 port=$2 tls=$3 n
        shift 3
        mkdir -p "$work/$name/state"
        cp "$work/release.pub" "$work/$name/"
        cat >"$work/$name/gatewayd.yaml" <<CONF
gateway:
  id: $name
state-dir: state
log-level: debug
mqtt:
  host: 127.0.0.1
  port: $port
  reconnect-min: 1
  reconnect-max: 4
  connect-timeout: 5
  tls: $tls
trust:
  public-keys: [release.pub]
CONF
        [ $# -gt 0 ] && echo "nodes:" >>"$work/$name/gatewayd.yaml"
        for n in "$@"; do
                cat >>"$work/$name/gatewayd.yaml" <<CONF
  - name: $n
    class: tls-mcu
    transport: { type: uart, port: $work/$n.tty, baud: $baud }
    protocol: { type: ymodem }
CONF
        done
}

gwpid=
# start_gw NAME: runs gatewayd for NAME, its log in $work/NAME/gatewayd.log; sets gwpid.
start_gw() {
        "$GWD" -c "$work/$1/gatewayd.yaml" 2>>"$work/$1/gatewayd.log" &
        gwpid=$!
        GW_PIDS+=("$gwpid")
}
logged() { grep -Eq -- "$2" "$work/$1/gatewayd.log"; }
never_connected() { ! logged "$1" "MQTT: connected to"; }
broker_log() { grep -Ec -- "$2" "$work/broker-$1/mosquitto.log"; }

# ---- 4. --check-config on mqtt.tls ----------------------------------------------------------------
# (First: the other cases use these configurations.)
mtls="{ ca: ../pki/ca.pem, cert: ../pki/gw-tls.pem, key: ../pki/gw-tls.key }"
write_config gw-tls "$PORT_mutual" "$mtls" node-1 node-2
"$GWD" --check-config "$work/gw-tls/gatewayd.yaml" >"$work/check.out" 2>"$work/check.err"
rc=$?
check "check-config: ca, cert and key (relative paths) are accepted ($(cat "$work/check.out"))" \
        test $rc -eq 0
mkdir -p "$work/bad-tls"
cp "$work/release.pub" "$work/bad-tls/"
# refused CASE TLS_BLOCK LINE COL: a configuration whose mqtt.tls is TLS_BLOCK (block style, the
# mapping starting at LINE:COL) is refused with file:line:col and the reason.
refused() {
        local f=$work/bad-tls/$1.yaml rc
        printf 'gateway:\n  id: bad-tls\nmqtt:\n  host: 127.0.0.1\n  tls:\n%s\ntrust:\n  public-keys: [release.pub]\n' \
                "$2" >"$f"
        "$GWD" --check-config "$f" >"$work/bad-tls/$1.out" 2>"$work/bad-tls/$1.err"
        rc=$?
        check "check-config: $1 is refused (exit status $rc)" test $rc -eq 1
        check "check-config: $1 is reported at $f:$3:$4 ($(head -n 1 "$work/bad-tls/$1.err"))" \
                grep -q "^$f:$3:$4: mqtt.tls: 'cert' and 'key' must be given together" \
                "$work/bad-tls/$1.err"
}
refused "cert-without-key" "    ca: ../pki/ca.pem
    cert: ../pki/gw-tls.pem" 6 5
refused "key-without-cert" "    key: ../pki/gw-tls.key
    insecure: true" 6 5

# ---- 1. Mutual TLS: a signed deployment to two simulated nodes ----------------------------------
mkdir -p "$work/www"
gw_start_http "$work/www"
for n in 1 2; do
        gw_start_sim "node-$n" "$work" "$baud"
done
prefix=gatewayd/gw-tls
# Not through sub(): a function run in the background is a subshell, and stopping it would leave
# its mosquitto_sub running.
mosquitto_sub -h 127.0.0.1 -p "$PORT_mutual" "${OP[@]}" -q 1 -F '%r %t %p' -t "$prefix/#" \
        >"$work/sub.log" 2>"$work/sub.err" &
GW_PIDS+=($!)
start_gw gw-tls
online() { [ "$(retained_state "$PORT_mutual" gw-tls)" = online ]; }
check "mutual TLS: the state 'online' is retained, read back through the TLS broker" \
        gw_wait_for 15 online
check "mutual TLS: the broker knows gatewayd by its certificate (username gw-tls)" \
        test "$(broker_log mutual "as gatewayd-gw-tls \(p5, .*u'gw-tls'\)")" -ge 1

expires=$(date -u -d '+1 day' +%Y-%m-%dT%H:%M:%SZ)
{
        echo "kind: gatewayd/manifest"
        echo "format: 1"
        echo "id: t1"
        echo "sequence: $(date +%s)"
        echo "expires: $expires"
        echo "policy: { parallel: 2 }"
        echo "images:"
        for n in 1 2; do
                head -c $((1500 + n * 3001)) /dev/urandom >"$work/www/t1-node-$n.bin"
                echo "  - name: app-node-$n"
                echo "    version: 1.0.$n"
                echo "    targets: { node: node-$n }"
                echo "    protocol: ymodem"
                echo "    size: $(stat -c %s "$work/www/t1-node-$n.bin")"
                echo "    sha256: $(sha256sum "$work/www/t1-node-$n.bin" | cut -d' ' -f1)"
                echo "    url: t1-node-$n.bin"
        done
} >"$work/www/t1.yaml"
"$GWM" sign --key "$work/release" "$work/www/t1.yaml" >/dev/null ||
        { echo "FAIL: gwmanifest sign"; exit 1; }
mosquitto_pub -h 127.0.0.1 -p "$PORT_mutual" "${OP[@]}" -q 1 -r -t "$prefix/deploy" \
        -m "{\"id\":\"t1\",\"manifest_url\":\"http://127.0.0.1:$GW_HTTP_PORT/t1.yaml\"}" ||
        fail "mutual TLS: publishing the deployment through the TLS broker"
gw_wait_for 30 q final "$work/sub.log" "$prefix/deployments/t1" >/dev/null
final=$(q final "$work/sub.log" "$prefix/deployments/t1")
check "mutual TLS: the final report of t1 says success ($(q get "$final" state) $(q get "$final" error.code))" \
        test "$(q get "$final" state)" = success
r=$(retained "$PORT_mutual" "$prefix/deployments/t1")
check "mutual TLS: the final report is retained, read back through the TLS broker" \
        test "${r%% *}" = 1 -a "$(q get "${r#* }" state 2>/dev/null)" = success
for n in 1 2; do
        check "mutual TLS: the report lists node-$n as success" \
                test "$(q get "${r#* }" "nodes.node-$n.state" 2>/dev/null)" = success
        check "mutual TLS: node-$n holds its image byte for byte" \
                cmp -s "$work/www/t1-node-$n.bin" "$work/node-$n.out/app-node-$n-1.0.$n.bin"
        st=$(q states "$work/sub.log" "$prefix/nodes/node-$n/status" t1)
        check "mutual TLS: node-$n status went queued downloading verifying flashing success ($st)" \
                test "$st" = "queued downloading verifying flashing success"
done
check "mutual TLS: SIGTERM stops gatewayd with status 0" stop_within gw-tls 10
check "mutual TLS: the state 'offline' is retained after SIGTERM" \
        test "$(retained_state "$PORT_mutual" gw-tls)" = offline

# ---- 2. A client certificate the broker does not trust ------------------------------------------
write_config gw-untrusted "$PORT_mutual" \
        "{ ca: ../pki/ca.pem, cert: ../pki/gw-untrusted.pem, key: ../pki/gw-untrusted.key }"
start_gw gw-untrusted
# reconnect-min 1, reconnect-max 4: the delays are 1, 2, 4 s.
delays() {
        sed -n "s/.*MQTT: reconnecting to 127\.0\.0\.1:$PORT_mutual in \([0-9]*\) s.*/\1/p" \
                "$work/gw-untrusted/gatewayd.log" | head -n "$1" | tr '\n' ' '
}
third_delay() { [ "$(delays 3)" = "1 2 4 " ]; }
if gw_wait_for 15 third_delay; then
        pass "untrusted client certificate: gatewayd retries with backoff (delays: $(delays 9)s)"
else
        fail "untrusted client certificate: retries with delays 1 2 4 s (got: $(delays 9))"
fi
three_refused() { [ "$(broker_log mutual "certificate verify failed")" -ge 3 ]; }
gw_wait_for 5 three_refused
verify_failed=$(broker_log mutual "certificate verify failed")
check "untrusted client certificate: every attempt reached the broker, which refused the certificate ($verify_failed times)" \
        test "$verify_failed" -ge 3 -a "$verify_failed" -le 4
check "untrusted client certificate: gatewayd never connected" never_connected gw-untrusted
check "untrusted client certificate: no state retained for the gateway" \
        test -z "$(retained "$PORT_mutual" gatewayd/gw-untrusted/state)"
warnings=$(grep -c '^warning: MQTT: ' "$work/gw-untrusted/gatewayd.log")
tries=$(grep -c 'MQTT: reconnecting to' "$work/gw-untrusted/gatewayd.log")
check "untrusted client certificate: every failed attempt is logged as a warning ($warnings for $tries)" \
        test "$warnings" -ge "$tries" -a "$tries" -ge 3
echo "  gatewayd said: $(grep '^warning: MQTT: ' "$work/gw-untrusted/gatewayd.log" |
        sed 's/ (\.\..*//' | sort | uniq -c | sed 's/^ *//' | paste -sd ';')"
check "untrusted client certificate: SIGTERM during the backoff stops gatewayd with status 0" \
        stop_within gw-untrusted 5
check "untrusted client certificate: the signal was handled by the loop" \
        logged gw-untrusted "Received .*, shutting down"

# ---- 3. A broker certificate for another name ---------------------------------------------------
nametls="{ ca: ../pki/ca.pem, cert: ../pki/gw-name.pem, key: ../pki/gw-name.key"
write_config gw-name "$PORT_other" "$nametls }"
start_gw gw-name
attempts() { grep -c 'MQTT: reconnecting to' "$work/gw-name/gatewayd.log"; }
two_attempts() { [ "$(attempts)" -ge 2 ]; }
check "name mismatch: gatewayd keeps failing and retrying" gw_wait_for 10 two_attempts
check "name mismatch: gatewayd never connected" never_connected gw-name
check "name mismatch: no state retained for the gateway" \
        test -z "$(retained "$PORT_other" gatewayd/gw-name/state --insecure)"
# The broker is content with the client certificate: it is gatewayd that gives up the handshake.
check "name mismatch: the broker did not refuse the client certificate" \
        test "$(broker_log other "certificate verify failed")" -eq 0
# (Each attempt's reachability probe also leaves an "unexpected eof" there: not counted.)
two_alerts() { [ "$(broker_log other "OpenSSL Error.*alert")" -ge 2 ]; }
check "name mismatch: the broker saw gatewayd abort the handshake with an alert" \
        gw_wait_for 5 two_alerts
said=$(grep -E '^(warning|error): MQTT: ' "$work/gw-name/gatewayd.log" |
        sed 's/ (\.\..*//' | sort | uniq -c | sed 's/^ *//' | paste -sd ';')
n_warn=$(grep -Ec '^(warning|error): MQTT: ' "$work/gw-name/gatewayd.log")
# A handshake that fails in mosquitto_loop_read() (mqtt.c on_io -> connection_lost) rather than
# inside mosquitto_connect_bind_v5() leaves only the info line "reconnecting ... in N s".
check "name mismatch: every failed attempt is logged as a warning or error ($n_warn for $(attempts) attempt(s): ${said:-nothing})" \
        test "$n_warn" -ge "$(attempts)"
check "name mismatch: SIGTERM stops gatewayd with status 0" stop_within gw-name 5

# The same broker, certificate and client, with the host name check off.
write_config gw-name "$PORT_other" "$nametls, insecure: true }"
"$GWD" --check-config "$work/gw-name/gatewayd.yaml" >/dev/null 2>"$work/check-insecure.err"
rc=$?
check "check-config: insecure: true is accepted" test $rc -eq 0
lines=$(wc -l <"$work/gw-name/gatewayd.log")
start_gw gw-name
online_name() { [ "$(retained_state "$PORT_other" gw-name --insecure)" = online ]; }
check "insecure: true: gatewayd connects to the broker named other.example (state 'online' retained)" \
        gw_wait_for 10 online_name
connected_again() {
        tail -n +$((lines + 1)) "$work/gw-name/gatewayd.log" |
                grep -q "MQTT: connected to 127\.0\.0\.1:$PORT_other "
}
check "insecure: true: gatewayd logged the connection" connected_again
check "insecure: true: SIGTERM stops gatewayd with status 0" stop_within gw-name 10
check "insecure: true: the state 'offline' is retained after SIGTERM" \
        test "$(retained_state "$PORT_other" gw-name --insecure)" = offline

if [ "$failures" -ne 0 ]; then
        for g in gw-tls gw-untrusted gw-name; do
                echo "--- $g: gatewayd log (last 15 lines) ---"
                tail -n 15 "$work/$g/gatewayd.log" 2>/dev/null
        done
        exit 1
fi
exit 0
