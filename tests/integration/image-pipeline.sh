#!/usr/bin/env bash
# Images that travel compressed, encrypted and as deltas, end to end over MQTT: manifests made
# by gwmanifest add-image (--compress, --delta-from, --encrypt-for), a gateway with an X25519
# decryption-key, a YMODEM node that must end with exactly the image. A delta is fetched when
# the store holds its base and falls back to the full image when it does not decode to the
# image; a truncated compressed stream, a tampered ciphertext and an image encrypted for
# another gateway fail with their codes and nothing flashed. Prints the bytes fetched for a
# typical firmware change.
set -u

: "${GW_SRC:?GW_SRC must name the source directory}"
E2E_NAME=image-pipeline
# shellcheck source=lib.sh
. "$GW_SRC/tests/integration/lib.sh"

gw="gw-e2e-pipe"
prefix=gatewayd/$gw
baud=921600
mkdir -p "$work/www" "$work/state"
gw_start_broker "$work"
gw_start_http "$work/www"
gw_start_sim node-1 "$work" "$baud"
"$GWM" keygen --type ed25519 --out "$work/release" >/dev/null &&
        "$GWM" keygen --type x25519 --out "$work/gw" >/dev/null &&
        "$GWM" keygen --type x25519 --out "$work/other" >/dev/null ||
        { echo "FAIL: gwmanifest keygen"; exit 1; }
ymodem_config 1
echo "decryption-key: gw" >>"$work/gatewayd.yaml"
"$GWD" --check-config "$work/gatewayd.yaml" >/dev/null 2>"$work/check-config.log" ||
        { echo "FAIL: decryption-key refused:"; cat "$work/check-config.log"; exit 1; }
watch_prefix
"$GWD" -c "$work/gatewayd.yaml" 2>"$work/gatewayd.log" &
gwpid=$!
GW_PIDS+=("$gwpid")

# Firmware-like images: code that compresses about 3:1; 1.1 changes a few functions and shifts
# the rest, as a rebuild does.
python3 - "$work/www" <<'PY'
import random, sys
d = sys.argv[1]
r = random.Random(7)
words = [bytes(r.randrange(256) for _ in range(4)) for _ in range(300)]
base = b"".join(r.choice(words) for _ in range(128 * 1024 // 4))
new = bytearray(base)
new[5000:5200] = bytes(r.randrange(256) for _ in range(200))
new = bytes(new[:90000]) + b"\x13\x37" * 150 + bytes(new[90000:])
new = new[:len(base)]
other = b"".join(r.choice(words) for _ in range(128 * 1024 // 4))
for name, data in (("fw-1.0.bin", base), ("fw-1.1.bin", new), ("other.bin", other)):
    open(f"{d}/{name}", "wb").write(data)
open(f"{d}/fw-2.0.bin", "wb").write(new[::-1])
open(f"{d}/fw-3.0.bin", "wb").write(base[::-1])
PY

seq_no=$(date +%s)
# manifest ID IMAGE VERSION [ADD-IMAGE OPTIONS...]: $work/www/ID.yaml, unsigned.
manifest() {
        local id=$1 image=$2 version=$3
        shift 3
        seq_no=$((seq_no + 1))
        rm -f "$work/www/$id.yaml"
        "$GWM" init --id "$id" --sequence "$seq_no" --out "$work/www/$id.yaml" >/dev/null &&
                "$GWM" add-image "$work/www/$image" --name app --version "$version" \
                        --node node-1 --protocol ymodem "$@" "$work/www/$id.yaml" \
                        >"$work/$id.add.log" 2>&1 ||
                { echo "FAIL: making $id:"; cat "$work/$id.add.log"; exit 1; }
}
sign() { "$GWM" sign --key "$work/release" "$work/www/$1.yaml" >/dev/null; }
deploy() {
        mosquitto_pub -h 127.0.0.1 -p "$GW_BROKER_PORT" -q 1 -r -t "$prefix/deploy" \
                -m "{\"id\":\"$1\",\"manifest_url\":\"http://127.0.0.1:$GW_HTTP_PORT/$1.yaml\"}"
}
wait_final() {
        gw_wait_for 60 q final "$work/sub.log" "$prefix/deployments/$1" >/dev/null
        q final "$work/sub.log" "$prefix/deployments/$1"
}
# The node's received file is exactly IMAGE.
received() { cmp -s "$work/node-1.out/$1" "$work/www/$2"; }
# set_blob ID FIELD FILE: the manifest's FIELD (transfer or delta) now names FILE's size and
# hash (a blob changed after add-image, re-signed as a hostile or broken publisher would).
set_blob() {
        python3 - "$work/www/$1.yaml" "$2" "$work/www/$3" <<'PY'
import hashlib, re, sys
path, field, blob = sys.argv[1:]
data = open(blob, "rb").read()
text = open(path).read()
size, sha = len(data), hashlib.sha256(data).hexdigest()
if field == "transfer":
    text = re.sub(r"(transfer: \{ size: )\d+(, sha256: )[0-9a-f]{64}", rf"\g<1>{size}\g<2>{sha}",
                  text)
else:
    text = re.sub(r"(delta:\n(?:      .*\n)*?      size: )\d+", rf"\g<1>{size}", text)
    text = re.sub(r"(delta:\n(?:      .*\n)*?      sha256: )[0-9a-f]{64}", rf"\g<1>{sha}", text)
open(path, "w").write(text)
PY
}
fetched() { grep -c "GET /$1 " "$work/www.http.log"; }

# ---- compressed and encrypted ---------------------------------------------------------------
manifest p1 fw-1.0.bin 1.0 --compress --encrypt-for "$work/gw.pub" --encrypt-for "$work/other.pub"
sign p1
deploy p1
final=$(wait_final p1)
check "compressed + encrypted: success" test "$(q get "$final" state)" = success
check "compressed + encrypted: the node has exactly fw-1.0" received app-1.0.bin fw-1.0.bin
check "compressed + encrypted: the encrypted blob was fetched, not the image" \
        test "$(fetched fw-1.0.bin.zst.enc)" = 1 -a "$(fetched fw-1.0.bin)" = 0
full=$(stat -c %s "$work/www/fw-1.0.bin.zst.enc")

# ---- a delta against the image the store holds ----------------------------------------------
manifest p2 fw-1.1.bin 1.1 --compress --delta-from "$work/www/fw-1.0.bin" \
        --encrypt-for "$work/gw.pub"
sign p2
deploy p2
final=$(wait_final p2)
check "delta: success" test "$(q get "$final" state)" = success
check "delta: the node has exactly fw-1.1" received app-1.1.bin fw-1.1.bin
delta_file=$(basename "$(ls "$work/www"/fw-1.1.bin.delta-*)")
check "delta: the delta was fetched, not the full image" \
        test "$(fetched "$delta_file")" = 1 -a "$(fetched fw-1.1.bin.zst.enc)" = 0
dsize=$(stat -c %s "$work/www/$delta_file")
zsize=$(stat -c %s "$work/www/fw-1.1.bin.zst.enc")
isize=$(stat -c %s "$work/www/fw-1.1.bin")
echo "NOTE: a typical change (200 bytes patched, 300 inserted) of a $isize-byte image:" \
        "delta $dsize bytes fetched; compressed full image $zsize bytes; raw $isize bytes" \
        "($full bytes for 1.0 compressed)"
check "delta: under a tenth of the compressed image ($dsize of $zsize bytes)" \
        test $((dsize * 10)) -lt "$zsize"

# ---- a delta that does not decode to the image falls back to the full one -------------------
# Made against other.bin but declared against fw-1.1 (in the store): the patch decodes to
# something else, whose hash is not the image's.
manifest p3 fw-2.0.bin 2.0 --compress --delta-from "$work/www/other.bin"
python3 - "$work/www/p3.yaml" "$work/www/fw-1.1.bin" <<'PY'
import hashlib, re, sys
path, base = sys.argv[1:]
data = open(base, "rb").read()
text = open(path).read()
text = re.sub(r"base-sha256: [0-9a-f]{64}", "base-sha256: " + hashlib.sha256(data).hexdigest(),
              text)
text = re.sub(r"base-size: \d+", f"base-size: {len(data)}", text)
open(path, "w").write(text)
PY
sign p3
deploy p3
final=$(wait_final p3)
check "wrong delta base: success through the full image" test "$(q get "$final" state)" = success
check "wrong delta base: the node has exactly fw-2.0" received app-2.0.bin fw-2.0.bin
check "wrong delta base: gatewayd says it fell back" \
        grep -q "image app: the delta failed .*fetching the full image" "$work/gatewayd.log"

# ---- failures: nothing flashed ----------------------------------------------------------------
before=$(find "$work/node-1.out" -type f | wc -l)
expect_fail() { # NAME ID CODE
        local final
        final=$(wait_final "$2")
        check "$1: failed" test "$(q get "$final" state)" = failed
        check "$1: error code $3 (got '$(q get "$final" error.code)')" \
                test "$(q get "$final" error.code)" = "$3"
        check "$1: nothing flashed" \
                test "$(find "$work/node-1.out" -type f | wc -l)" = "$before"
        check "$1: gatewayd still runs" kill -0 "$gwpid"
}

manifest f1 fw-3.0.bin 3.0 --compress
head -c -64 "$work/www/fw-3.0.bin.zst" >"$work/www/fw-3.0.bin.zst.cut"
mv "$work/www/fw-3.0.bin.zst.cut" "$work/www/fw-3.0.bin.zst"
set_blob f1 transfer fw-3.0.bin.zst
sign f1
deploy f1
expect_fail "truncated compressed stream" f1 decode-failed

rm -f "$work/www/fw-3.0.bin.zst"
manifest f2 fw-3.0.bin 3.0 --encrypt-for "$work/gw.pub"
python3 - "$work/www/fw-3.0.bin.enc" <<'PY'
import sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
b[len(b) // 2] ^= 0x20
open(p, "wb").write(b)
PY
set_blob f2 transfer fw-3.0.bin.enc
sign f2
deploy f2
expect_fail "tampered ciphertext" f2 decrypt-failed

manifest f3 fw-3.0.bin 3.0 --encrypt-for "$work/other.pub"
sign f3
deploy f3
expect_fail "encrypted for another gateway" f3 decrypt-failed
check "encrypted for another gateway: the message says so" \
        grep -q "not encrypted for this gateway's key" "$work/gatewayd.log"

check "gatewayd stops cleanly" stop_within gatewayd 10
[ "$failures" -eq 0 ]
