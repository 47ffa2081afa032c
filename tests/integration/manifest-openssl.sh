#!/bin/bash
# Cross-checks manifest signatures with an independent implementation, the openssl command:
# for Ed25519 and P-256, a signature openssl makes over a hand-built DSSE PAE is accepted by
# gwmanifest verify, and one gwmanifest sign makes is accepted by openssl; tampered ones are
# rejected by both. Env: GW_BUILD (build root), GW_SRC (source root).
set -u

GWM="${GW_BUILD:?GW_BUILD not set}/tools/gwmanifest"
TYPE=application/vnd.gatewayd.manifest+yaml

if ! command -v openssl >/dev/null; then
        echo "SKIP: the openssl command is not installed"
        exit 77
fi
if [ ! -x "$GWM" ]; then
        echo "SKIP: $GWM is not built"
        exit 77
fi

T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
cd "$T" || exit 1

failures=0
pass() { echo "PASS: $*"; }
fail() {
        echo "FAIL: $*"
        failures=$((failures + 1))
}

cat >body.yaml <<'EOF'
kind: gatewayd/manifest
format: 1
id: openssl-cross-check
sequence: 7
expires: 2099-01-01T00:00:00Z
images:
  - name: motor-ctrl
    version: 1.4.2
    targets: { class: stm32f4-motor }
    protocol: stm32-rom
    size: 131072
    sha256: 5f0c5f0c5f0c5f0c5f0c5f0c5f0c5f0c5f0c5f0c5f0c5f0c5f0c5f0c5f0c5f0c
    url: images/motor-ctrl-1.4.2.bin
EOF
sed 's/^sequence: 7$/sequence: 8/' body.yaml >tampered.yaml

# PAE = "DSSEv1" SP len(type) SP type SP len(body) SP body, lengths in ASCII decimal.
make_pae() {
        printf 'DSSEv1 %d %s %d ' "${#TYPE}" "$TYPE" "$(stat -c %s "$1")" >"$2"
        cat "$1" >>"$2"
}
# keyid = lowercase hex SHA-256 of the SubjectPublicKeyInfo DER.
keyid_of() {
        openssl pkey -pubin -in "$1" -outform DER | sha256sum | cut -d' ' -f1
}
openssl_sign() { # type key pae sig
        if [ "$1" = ed25519 ]; then
                openssl pkeyutl -sign -rawin -inkey "$2" -in "$3" -out "$4"
        else
                openssl dgst -sha256 -sign "$2" -out "$4" "$3"
        fi
}
openssl_verify() { # type pub pae sig
        if [ "$1" = ed25519 ]; then
                openssl pkeyutl -verify -rawin -pubin -inkey "$2" -in "$3" -sigfile "$4" \
                        >/dev/null 2>&1
        else
                openssl dgst -sha256 -verify "$2" -signature "$4" "$3" >/dev/null 2>&1
        fi
}
envelope() { # body keyid sig out
        {
                cat "$1"
                printf -- '---\nsignatures:\n  - keyid: %s\n    sig: %s\n' "$2" \
                        "$(base64 -w0 "$3")"
        } >"$4"
}

make_pae body.yaml body.pae
make_pae tampered.yaml tampered.pae

for type in ed25519 p256; do
        # openssl signs, gwmanifest verifies.
        if [ "$type" = ed25519 ]; then
                openssl genpkey -algorithm ED25519 -out "o-$type.key" 2>/dev/null
        else
                openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
                        -out "o-$type.key" 2>/dev/null
        fi
        openssl pkey -in "o-$type.key" -pubout -out "o-$type.pub"
        kid=$(keyid_of "o-$type.pub")
        if ! openssl_sign "$type" "o-$type.key" body.pae "o-$type.sig"; then
                fail "$type: openssl could not sign"
                continue
        fi
        envelope body.yaml "$kid" "o-$type.sig" "o-$type.yaml"
        if out=$("$GWM" verify --key "o-$type.pub" "o-$type.yaml" 2>&1); then
                pass "$type: openssl signature accepted by gwmanifest verify"
        else
                fail "$type: openssl signature rejected by gwmanifest verify: $out"
        fi
        # The same signature on a tampered body.
        envelope tampered.yaml "$kid" "o-$type.sig" "o-$type-tampered.yaml"
        out=$("$GWM" verify --key "o-$type.pub" "o-$type-tampered.yaml" 2>&1)
        rc=$?
        if [ $rc -eq 1 ] && grep -q '^error: threshold-not-met: ' <<<"$out"; then
                pass "$type: tampered body rejected by gwmanifest verify (threshold-not-met)"
        else
                fail "$type: tampered body not rejected by gwmanifest verify (exit $rc): $out"
        fi

        # gwmanifest signs, openssl verifies.
        if ! gkid=$("$GWM" keygen --type "$type" --out "g-$type"); then
                fail "$type: gwmanifest keygen failed"
                continue
        fi
        if [ "$(stat -c %a "g-$type")" = 600 ]; then
                pass "$type: private key file has mode 0600"
        else
                fail "$type: private key file mode is $(stat -c %a "g-$type")"
        fi
        if [ "$gkid" = "$(keyid_of "g-$type.pub")" ]; then
                pass "$type: keyid matches openssl's SHA-256 of the SPKI DER"
        else
                fail "$type: keyid $gkid differs from openssl's $(keyid_of "g-$type.pub")"
        fi
        # openssl can read the private key (PKCS#8 PEM) too.
        if openssl pkey -in "g-$type" -noout 2>/dev/null; then
                pass "$type: openssl reads the private key"
        else
                fail "$type: openssl cannot read the private key"
        fi
        cp body.yaml "g-$type.yaml"
        if ! "$GWM" sign --key "g-$type" "g-$type.yaml" >/dev/null; then
                fail "$type: gwmanifest sign failed"
                continue
        fi
        if head -c "$(stat -c %s body.yaml)" "g-$type.yaml" | cmp -s - body.yaml; then
                pass "$type: gwmanifest sign kept the body bytes"
        else
                fail "$type: gwmanifest sign changed the body"
        fi
        if grep -q "^  - keyid: $gkid\$" "g-$type.yaml"; then
                pass "$type: signature entry carries the keyid"
        else
                fail "$type: no signature entry with keyid $gkid"
        fi
        sed -n 's/^    sig: //p' "g-$type.yaml" | base64 -d >"g-$type.sig"
        if openssl_verify "$type" "g-$type.pub" body.pae "g-$type.sig"; then
                pass "$type: gwmanifest signature accepted by openssl"
        else
                fail "$type: gwmanifest signature rejected by openssl"
        fi
        if openssl_verify "$type" "g-$type.pub" tampered.pae "g-$type.sig"; then
                fail "$type: openssl accepted the signature over a tampered body"
        else
                pass "$type: tampered body rejected by openssl"
        fi
        # And a tampered signature (one bit of byte 10 flipped) is rejected by both.
        perl -0777 -pe 'substr($_, 10, 1) = chr(ord(substr($_, 10, 1)) ^ 1)' \
                "g-$type.sig" >"g-$type-bad.sig"
        if openssl_verify "$type" "g-$type.pub" body.pae "g-$type-bad.sig"; then
                fail "$type: openssl accepted a tampered signature"
        else
                pass "$type: tampered signature rejected by openssl"
        fi
        envelope body.yaml "$gkid" "g-$type-bad.sig" "g-$type-bad.yaml"
        out=$("$GWM" verify --key "g-$type.pub" "g-$type-bad.yaml" 2>&1)
        rc=$?
        if [ $rc -eq 1 ] && grep -q '^error: threshold-not-met: ' <<<"$out"; then
                pass "$type: tampered signature rejected by gwmanifest verify"
        else
                fail "$type: tampered signature not rejected by gwmanifest verify (exit $rc)"
        fi
done

# Both keys together, threshold 2, through a gatewayd/keys trust root.
{
        printf 'kind: gatewayd/keys\nformat: 1\nversion: 1\nthreshold: 2\nkeys:\n'
        for k in o-ed25519.pub g-p256.pub; do
                printf '  - public: |\n'
                sed 's/^/      /' "$k"
        done
        printf -- '---\nsignatures: []\n'
} >trust.yaml
cp g-p256.yaml both.yaml
"$GWM" sign --key o-ed25519.key both.yaml >/dev/null
if out=$("$GWM" verify --trust trust.yaml both.yaml 2>&1); then
        pass "threshold 2 of a gatewayd/keys root met by an openssl key and a gwmanifest key"
else
        fail "threshold 2 via --trust: $out"
fi
if "$GWM" verify --trust trust.yaml g-p256.yaml >/dev/null 2>&1; then
        fail "one signature met a threshold of 2"
else
        pass "one signature does not meet a threshold of 2"
fi

if [ $failures -ne 0 ]; then
        echo "$failures check(s) FAILED"
        exit 1
fi
echo "all checks passed"
exit 0
