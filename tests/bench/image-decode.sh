#!/bin/bash
# Image pipeline cost on the gateway: gatewayd's decoder (gatewayd/decode.c, run by
# decode-bench) turns a 64 MiB firmware-like image back from its zstd, AES-256-GCM and
# zstd+AES-256-GCM blobs and from a delta, as gwmanifest add-image made them; prints time,
# throughput and peak resident memory (anonymous and file-backed) of each, and the same with a
# 16 MiB image to show that memory does not grow with the image. Beside it, the zstd command
# decompressing the same blob in the same run (when installed). Not a pass/fail test: it fails
# only when a decode fails or gives another image.
set -u

: "${GW_BUILD:?GW_BUILD must name the build directory}"
BENCH=$GW_BUILD/tests/bench/decode-bench
GWM=$GW_BUILD/tools/gwmanifest
work=$(mktemp -d /tmp/gw-decode-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

"$GWM" keygen --type x25519 --out "$work/gw" >/dev/null || exit 1
for mib in 16 64; do
        /usr/bin/env python3 - "$work/fw-$mib.bin" "$work/fw-$mib-old.bin" "$mib" <<'PY'
import random, sys
out, old, mib = sys.argv[1], sys.argv[2], int(sys.argv[3])
r = random.Random(mib)
words = [r.randbytes(4) for _ in range(4096)]
data = bytearray(b"".join(r.choice(words) for _ in range(mib * 262144)))
open(old, "wb").write(data)
for k in range(20):  # a release: scattered changed functions
    at = r.randrange(len(data) - 4096)
    data[at:at + 1024] = r.randbytes(1024)
open(out, "wb").write(data)
PY
        for kind in zstd gcm zstd+gcm; do
                args=()
                [[ $kind == *zstd* ]] && args+=(--compress)
                [[ $kind == *gcm* ]] && args+=(--encrypt-for "$work/gw.pub")
                rm -f "$work/m.yaml"
                "$GWM" init --out "$work/m.yaml" >/dev/null 2>&1
                "$GWM" add-image "$work/fw-$mib.bin" --name fw --version 1 --node n \
                        --protocol ymodem "${args[@]}" "$work/m.yaml" >/dev/null || exit 1
                printf '%-9s %3d MiB: ' "$kind" "$mib"
                "$BENCH" -k "$work/gw" "$work/m.yaml" "$work" || exit 1
                rm -f "$work"/*.out
        done
        rm -f "$work/m.yaml" "$work"/fw-"$mib".bin.*
        "$GWM" init --out "$work/m.yaml" >/dev/null 2>&1
        "$GWM" add-image "$work/fw-$mib.bin" --name fw --version 1 --node n --protocol ymodem \
                --compress --delta-from "$work/fw-$mib-old.bin" "$work/m.yaml" >/dev/null || exit 1
        printf '%-9s %3d MiB: ' delta "$mib"
        "$BENCH" -b "$work/fw-$mib-old.bin" "$work/m.yaml" "$work" || exit 1
        if command -v zstd >/dev/null; then
                t0=$(date +%s.%N)
                zstd -q -d -f "$work/fw-$mib.bin.zst" -o "$work/peer.out" || exit 1
                t1=$(date +%s.%N)
                printf 'zstd -d   %3d MiB: %.3f s (the zstd command, same blob, same run)\n' \
                        "$mib" "$(echo "$t1 - $t0" | bc)"
        fi
        ls -l "$work"/fw-"$mib".bin* | awk '{print "  " $5 " bytes  " $NF}'
        rm -f "$work"/fw-"$mib"* "$work"/*.out "$work/m.yaml" "$work/peer.out"
done
