#!/bin/bash
# The manifest authoring flow with the real gwmanifest binary: keygen, init, add-image twice,
# sign with two keys, verify against a threshold-2 trust root, show --json (read back with
# python3), lint, a tampered file, re-signing, a key rotation, --help everywhere and usage
# errors. Env: GW_BUILD (build root).
set -u

GWM="${GW_BUILD:?GW_BUILD not set}/tools/gwmanifest"
if [ ! -x "$GWM" ]; then
        echo "SKIP: $GWM is not built"
        exit 77
fi
if ! command -v python3 >/dev/null; then
        echo "SKIP: python3 is not installed (needed to read show --json)"
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
# expect_rc RC DESCRIPTION CMD...: runs CMD, output to out.txt/err.txt.
expect_rc() {
        local want=$1 what=$2 got
        shift 2
        "$@" >out.txt 2>err.txt
        got=$?
        if [ "$got" -eq "$want" ]; then
                pass "$what"
        else
                fail "$what: exit $got, expected $want"
                sed 's/^/    | /' out.txt err.txt
        fi
}
expect_err() { # CODE DESCRIPTION: err.txt holds "error: CODE: ..."
        if grep -q "^error: $1: " err.txt; then
                pass "$2 reports $1"
        else
                fail "$2: no 'error: $1:' in: $(cat err.txt)"
        fi
}
nsigs() { grep -c '^  - keyid: ' "$1"; }

# Keys: an Ed25519 and a P-256 release key; the private ones 0600.
expect_rc 0 "keygen ed25519" "$GWM" keygen --type ed25519 --out rel-a
expect_rc 0 "keygen p256" "$GWM" keygen --type p256 --out rel-b
for k in rel-a rel-b; do
        if [ "$(stat -c %a $k)" = 600 ] && [ -s $k.pub ]; then
                pass "$k is mode 0600 with $k.pub beside it"
        else
                fail "$k: mode $(stat -c %a $k)"
        fi
done
expect_rc 1 "keygen refuses to overwrite" "$GWM" keygen --type ed25519 --out rel-a

# A trust root of both keys, threshold 2.
expect_rc 0 "keys-init" "$GWM" keys-init --key rel-a.pub --key rel-b.pub --threshold 2 \
        --out keys.yaml
expect_rc 0 "lint keys.yaml" "$GWM" lint keys.yaml
expect_rc 2 "keys-init threshold above the keys" "$GWM" keys-init --key rel-a.pub \
        --threshold 2 --out k.yaml

# A manifest: template, two images.
head -c 70000 /dev/urandom >motor.bin
head -c 3000 /dev/urandom >sensor.bin
expect_rc 0 "init" "$GWM" init --id spring-r3 --sequence 5 --expires +30d --out m.yaml
grep -q '^# ' m.yaml && pass "init writes comments" || fail "init template has no comments"
expect_rc 1 "lint of the empty template" "$GWM" lint m.yaml
expect_err schema-invalid "lint of the empty template"
expect_rc 0 "add-image motor" "$GWM" add-image motor.bin --name motor-ctrl --version 1.4.2 \
        --class stm32f4-motor --protocol stm32-rom --option address=0x08000000 \
        --hardware chip-id=0x413 --mirror https://mirror.example/motor.bin m.yaml
expect_rc 0 "add-image sensor" "$GWM" add-image sensor.bin --name sensor --version 2.0-rc1 \
        --nodes sensor-1,sensor-2 --protocol ymodem --url https://cdn.example/sensor.bin m.yaml
grep -q '^# Strictly increasing' m.yaml && pass "add-image keeps comments" ||
        fail "add-image lost the template's comments"
expect_rc 1 "add-image refuses a duplicate name" "$GWM" add-image sensor.bin --name sensor \
        --version 3 --node n --protocol ymodem m.yaml
grep -q 'already has an image named sensor' err.txt && pass "duplicate name message" ||
        fail "duplicate name: $(cat err.txt)"
expect_rc 0 "lint the unsigned manifest" "$GWM" lint m.yaml
grep -q 'warning: not signed' out.txt && pass "lint warns: not signed" ||
        fail "lint did not warn about the missing signatures: $(cat out.txt)"

# Sign with both keys; verify against the threshold-2 root.
expect_rc 0 "sign with rel-a" "$GWM" sign --key rel-a m.yaml
expect_rc 1 "one signature of two needed" "$GWM" verify --trust keys.yaml m.yaml
expect_err threshold-not-met "one signature of two needed"
expect_rc 0 "sign with rel-b" "$GWM" sign --key rel-b m.yaml
expect_rc 0 "verify threshold 2" "$GWM" verify --trust keys.yaml m.yaml
for check in size envelope signature threshold body expiry sequence gateway-hardware; do
        grep -q "^  $check  *ok " out.txt || fail "verify did not print check $check as ok"
done
grep -q '^valid$' out.txt && pass "verify prints each check and 'valid'" || fail "no 'valid'"
[ "$(nsigs m.yaml)" = 2 ] && pass "two signatures" || fail "$(nsigs m.yaml) signatures"
expect_rc 0 "verify with --key and --threshold" "$GWM" verify --key rel-a.pub --key rel-b.pub \
        --threshold 2 m.yaml
expect_rc 1 "verify with --now past the expiry" "$GWM" verify --trust keys.yaml \
        --now +31d m.yaml
expect_err expired "verify with --now past the expiry"

# Re-signing replaces that key's signature.
cp m.yaml before-resign.yaml
expect_rc 0 "re-sign with rel-a" "$GWM" sign --key rel-a m.yaml
[ "$(nsigs m.yaml)" = 2 ] && pass "re-signing replaces, not appends" ||
        fail "re-signing left $(nsigs m.yaml) signatures"
expect_rc 0 "still valid after re-signing" "$GWM" verify --trust keys.yaml --quiet m.yaml

# show --json, read back.
expect_rc 0 "show --json" "$GWM" show --json m.yaml
if python3 - out.txt "$(sha256sum motor.bin | cut -d' ' -f1)" <<'EOF'; then
import json, sys
d = json.load(open(sys.argv[1]))
assert d["id"] == "spring-r3" and d["sequence"] == 5, d
assert [i["name"] for i in d["images"]] == ["motor-ctrl", "sensor"], d["images"]
m, s = d["images"]
assert m["size"] == 70000 and m["sha256"] == sys.argv[2], m
assert m["targets"] == {"class": "stm32f4-motor"} and m["hardware"] == {"chip-id": "0x413"}
assert m["options"] == {"address": "0x08000000"} and m["url"] == "motor.bin"
assert m["mirrors"] == ["https://mirror.example/motor.bin"]
assert s["targets"] == {"nodes": ["sensor-1", "sensor-2"]} and s["version"] == "2.0-rc1"
assert s["size"] == 3000 and s["url"] == "https://cdn.example/sensor.bin"
assert len(d["signatures"]) == 2
EOF
        pass "show --json matches what add-image and sign wrote"
else
        fail "show --json: $(cat out.txt)"
fi
expect_rc 0 "show" "$GWM" show m.yaml
expect_rc 0 "lint the signed manifest" "$GWM" lint m.yaml

# Tampering: a changed size, then a changed signature document.
sed 's/size: 70000/size: 70001/' m.yaml >tampered.yaml
expect_rc 1 "tampered body" "$GWM" verify --trust keys.yaml tampered.yaml
expect_err threshold-not-met "tampered body"
sed 's/^signatures:/signatures: []\nextra:/' m.yaml >tampered2.yaml
expect_rc 1 "tampered signatures document" "$GWM" verify --trust keys.yaml tampered2.yaml
expect_err envelope-malformed "tampered signatures document"

# add-image on a signed manifest drops the signatures and says so.
cp m.yaml m3.yaml
expect_rc 0 "add-image on a signed manifest" "$GWM" add-image sensor.bin --name extra \
        --version 1 --node gw-local --protocol ymodem --url https://cdn.example/x.bin m3.yaml
grep -q 'signature(s).*dropped' err.txt && pass "add-image says the signatures were dropped" ||
        fail "add-image did not say so: $(cat err.txt)"
grep -q '^signatures:' m3.yaml && fail "signatures still in m3.yaml" ||
        pass "signatures removed from m3.yaml"

# Key rotation: a version 2 root of a new key, threshold 1.
expect_rc 0 "keygen rotation key" "$GWM" keygen --type ed25519 --out rel-c
expect_rc 0 "keys-init version 2" "$GWM" keys-init --key rel-c.pub --threshold 1 --version 2 \
        --out keys2.yaml
expect_rc 0 "sign rotation with the new key" "$GWM" sign --key rel-c keys2.yaml
expect_rc 1 "rotation signed by the new key only" "$GWM" verify --trust keys.yaml keys2.yaml
expect_err threshold-not-met "rotation signed by the new key only"
expect_rc 0 "sign rotation with rel-a" "$GWM" sign --key rel-a keys2.yaml
expect_rc 1 "rotation signed by one current key of two" "$GWM" verify --trust keys.yaml keys2.yaml
expect_err threshold-not-met "rotation signed by one current key of two"
expect_rc 0 "sign rotation with rel-b" "$GWM" sign --key rel-b keys2.yaml
expect_rc 0 "rotation verified" "$GWM" verify --trust keys.yaml keys2.yaml
grep -q 'version 1 -> 2' out.txt && pass "rotation output names the versions" ||
        fail "rotation output: $(cat out.txt)"
expect_rc 0 "keys-init version 3" "$GWM" keys-init --key rel-c.pub --threshold 1 --version 3 \
        --out keys3.yaml
for k in rel-a rel-b rel-c; do "$GWM" sign --key $k keys3.yaml >/dev/null; done
expect_rc 1 "rotation skipping a version" "$GWM" verify --trust keys.yaml keys3.yaml
expect_err keys-rotation-invalid "rotation skipping a version"
# The rotated root accepts what the new key signs, and not the old manifest.
expect_rc 1 "old manifest under the new root" "$GWM" verify --trust keys2.yaml m.yaml
expect_err threshold-not-met "old manifest under the new root"

# --help everywhere (exit 0), usage errors (exit 2).
expect_rc 0 "--help" "$GWM" --help
for cmd in keygen init add-image lint sign verify show keys-init; do
        expect_rc 0 "$cmd --help" "$GWM" $cmd --help
        grep -q "^Usage: gwmanifest $cmd" out.txt || fail "$cmd --help prints no usage line"
done
expect_rc 2 "no command" "$GWM"
expect_rc 2 "unknown command" "$GWM" frobnicate
expect_rc 2 "unknown option" "$GWM" verify --bogus m.yaml
expect_rc 2 "verify without trust" "$GWM" verify m.yaml
expect_rc 2 "sign without key" "$GWM" sign m.yaml
expect_rc 2 "keygen bad type" "$GWM" keygen --type rsa --out x
expect_rc 2 "init bad expires" "$GWM" init --expires tomorrow
expect_rc 2 "add-image without target" "$GWM" add-image motor.bin --name x --version 1 \
        --protocol p m.yaml
expect_rc 2 "add-image two targets" "$GWM" add-image motor.bin --name x --version 1 \
        --node a --class b --protocol p m.yaml
expect_rc 2 "add-image bad option pair" "$GWM" add-image motor.bin --name x --version 1 \
        --node a --protocol p --option novalue m.yaml
expect_rc 2 "lint without file" "$GWM" lint
expect_rc 2 "keys-init without threshold" "$GWM" keys-init --key rel-a.pub

if [ "$failures" -ne 0 ]; then
        echo "$failures failure(s)"
        exit 1
fi
echo "all passed"
