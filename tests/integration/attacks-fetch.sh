#!/usr/bin/env bash
# The attacks on what gatewayd installs and fetches, end to end through a real broker, a hostile
# HTTP server (evil-http.py) and simulated nodes; each refused with its stable code and nothing
# flashed: arbitrary installation (unsigned, no signatures, wrong key), endless data (an image
# or a manifest that never ends, a manifest over the cap), extraneous dependencies (URLs not in
# the signed manifest are never requested), malicious mirrors, mix-and-match, slow retrieval
# (below the minimum rate; one deadline for all downloads, mirrors included), and wrong
# software (hardware mismatch, unknown node, another node's protocol, downgrade).
: "${GW_SRC:?GW_SRC must name the source directory}"
E2E_NAME=attacks-fetch
# shellcheck source=attacks-lib.sh
. "$GW_SRC/tests/integration/attacks-lib.sh"

keygen release ed25519
keygen other p256
attacks_setup "  public-keys: [release.pub]"
start_gwd

head -c 3000 /dev/urandom >"$work/www/a.bin"
head -c 3000 /dev/urandom >"$work/www/a-other.bin" # same size, other bytes
head -c 2000 /dev/urandom >"$work/www/b.bin"
head -c 6000 /dev/urandom >"$work/www/big.bin"
head -c 6000 /dev/urandom >"$work/www/big-other.bin"
head -c 2000 /dev/urandom >"$work/www/absent.bin"
head -c 2000 /dev/urandom >"$work/www/extra.bin"
# The store is content-addressed: an image already stored is not fetched again, so each fetch
# case has bytes of its own.
for f in endless mirror mirror-bad; do head -c 3000 /dev/urandom >"$work/www/$f.bin"; done
www=$work/www
requested() { grep -c -- "$1" "$work/http.log"; }

# ---- Arbitrary installation ---------------------------------------------------------------------
{ head_ unsigned; img a 1.0 "node: node-1" a.bin; printf -- '---\nsignatures: []\n'; } >"$www/unsigned.yaml"
deploy_url unsigned
expect "arbitrary installation, no signature" unsigned rejected threshold-not-met

{ head_ nosigdoc; img a 1.0 "node: node-1" a.bin; } >"$www/nosigdoc.yaml"
deploy_url nosigdoc
expect "arbitrary installation, no signatures document" nosigdoc rejected envelope-malformed

{ head_ wrongkey; img a 1.0 "node: node-1" a.bin; } >"$www/wrongkey.yaml"
sign "$www/wrongkey.yaml" other
deploy_url wrongkey
expect "arbitrary installation, signed by an untrusted key" wrongkey rejected threshold-not-met
check "arbitrary installation: no image was requested" test "$(requested a.bin)" = 0

# ---- Extraneous dependencies ---------------------------------------------------------------------
# A signed manifest with an image for a class this gateway does not have: only what the nodes
# need is fetched, and nothing that is not in the manifest.
: >"$work/http.log"
{ head_ extraneous; img a 1.0 "node: node-1" a.bin; img absent 1.0 "class: no-such-class" absent.bin; } \
        >"$www/extraneous.yaml"
sign "$www/extraneous.yaml" release
deploy_url extraneous
expect_success "extraneous dependencies, signed" extraneous node-1 a.bin a-1.0.bin
check "extraneous dependencies: exactly the manifest and a.bin were requested ($(tr '\n' ' ' <"$work/http.log"))" \
        test "$(sort "$work/http.log" | tr '\n' ' ')" = "/a.bin /extraneous.yaml "
# The same manifest with an image added after signing: refused before any image is fetched.
: >"$work/http.log"
{
        sed '/^---$/,$d' "$www/extraneous.yaml"
        img extra 1.0 "node: node-2" extra.bin
        sed -n '/^---$/,$p' "$www/extraneous.yaml"
} >"$www/extraneous-added.yaml"
deploy_url extraneous-added
expect "extraneous dependencies, image added after signing" extraneous-added rejected threshold-not-met
check "extraneous dependencies: extra.bin was never requested" test "$(requested extra.bin)" = 0
check "extraneous dependencies: only the manifest was requested" \
        test "$(tr '\n' ' ' <"$work/http.log")" = "/extraneous-added.yaml "

# ---- Endless data ---------------------------------------------------------------------------------
{ head_ endless; img e 1.1 "node: node-1" endless.bin endless/endless.bin; } >"$www/endless.yaml"
sign "$www/endless.yaml" release
deploy_url endless
expect "endless data, image server sends more than the declared size" endless failed image-size-mismatch

{ head_ huge; echo "# $(head -c 9000 /dev/zero | tr '\0' x)"; img a 1.1 "node: node-1" a.bin; } >"$www/huge.yaml"
sign "$www/huge.yaml" release
deploy_url huge
expect "endless data, manifest over limits.manifest-size" huge rejected manifest-too-large
deploy_url huge-endless endless/extraneous.yaml
expect "endless data, manifest that never ends" huge-endless rejected manifest-too-large
deploy "{\"id\":\"huge-inline\",\"manifest\":\"$(base64 -w0 "$www/huge.yaml")\"}"
expect "endless data, inline manifest over limits.manifest-size" huge-inline rejected manifest-too-large

# ---- Malicious mirrors ----------------------------------------------------------------------------
{ head_ mirror-ok; img m 2.0 "node: node-1" mirror.bin wrong/mirror.bin "" "" mirror.bin; } >"$www/mirror-ok.yaml"
sign "$www/mirror-ok.yaml" release
deploy_url mirror-ok
expect_success "malicious mirrors, first URL wrong, mirror right" mirror-ok node-1 mirror.bin m-2.0.bin
check "malicious mirrors: the wrong URL was tried first, then the mirror" \
        test "$(tail -n 2 "$work/http.log" | tr '\n' ' ')" = "/wrong/mirror.bin /mirror.bin "

{ head_ mirror-bad; img m 2.1 "node: node-1" mirror-bad.bin wrong/mirror-bad.bin "" "" "a-other.bin, wrong/mirror-bad.bin"; } \
        >"$www/mirror-bad.yaml"
sign "$www/mirror-bad.yaml" release
deploy_url mirror-bad
expect "malicious mirrors, every source wrong" mirror-bad failed image-hash-mismatch

# ---- Mix-and-match ----------------------------------------------------------------------------------
{ head_ mix-a; img a 3.0 "node: node-1" a.bin; } >"$www/mix-a.yaml"
{ head_ mix-b; img b 3.0 "node: node-2" b.bin; } >"$www/mix-b.yaml"
sign "$www/mix-a.yaml" release
sign "$www/mix-b.yaml" release
{ sed '/^---$/,$d' "$www/mix-a.yaml"; sed -n '/^---$/,$p' "$www/mix-b.yaml"; } >"$www/mix.yaml"
deploy_url mix
expect "mix-and-match, signatures of another manifest" mix rejected threshold-not-met

# ---- Slow retrieval -----------------------------------------------------------------------------------
t0=$SECONDS
{ head_ slow; img big 1.0 "node: node-2" big.bin trickle/300/big.bin; } >"$www/slow.yaml"
sign "$www/slow.yaml" release
deploy_url slow
expect "slow retrieval, below fetch.min-rate" slow failed download-too-slow
msg=$(q get "$(wait_final slow)" error.message)
check "slow retrieval: the minimum rate stopped it ($msg)" grep -q 'too slow' <<<"$msg"
check "slow retrieval: refused within 6 s (took $((SECONDS - t0)) s)" test $((SECONDS - t0)) -le 6
# Above the minimum rate, but the wrong bytes slowly from the first URL and then the right
# ones slowly from the mirror: each alone fits fetch.deadline (3 s), both do not.
{ head_ deadline; img big 1.1 "node: node-2" big.bin trickle/2600/big-other.bin "" "" trickle/2600/big.bin; } \
        >"$www/deadline.yaml"
sign "$www/deadline.yaml" release
deploy_url deadline
expect "slow retrieval, one deadline for all downloads and mirrors" deadline failed download-too-slow
check "slow retrieval: the mirror was tried" test "$(requested /trickle/2600/big.bin)" = 1
msg=$(q get "$(wait_final deadline)" error.message)
check "slow retrieval: the deadline stopped it, not the rate ($msg)" \
        grep -qE 'timed out|deadline' <<<"$msg"

# ---- Dropped connections ----------------------------------------------------------------------------
# Every connection is cut after 1500 body bytes: the download goes on where it stopped with a range
# request (If-Range on the server's ETag) until the 6000 bytes are there, hashed across the pieces.
{ head_ resume; img big 1.2 "node: node-2" big.bin drop/1500/big.bin; } >"$www/resume.yaml"
sign "$www/resume.yaml" release
deploy_url resume
expect_success "a dropped connection resumes with range requests" resume node-2 big.bin big-1.2.bin
check "dropped connection: resumed from where each piece ended (ranges $(grep -o 'drop/1500/big.bin range=[0-9]*' "$work/http.log" | sed 's/.*=//' | tr '\n' ' '))" \
        test "$(grep -c 'drop/1500/big.bin range=1500$' "$work/http.log")" = 1 -a \
        "$(grep -c 'drop/1500/big.bin range=4500$' "$work/http.log")" = 1
# A server that cannot serve ranges: started over once, then it stands as a failed download.
head -c 6000 /dev/urandom >"$work/www/big2.bin"
{ head_ norange; img big 1.3 "node: node-2" big2.bin norange/1500/big2.bin; } >"$www/norange.yaml"
sign "$www/norange.yaml" release
deploy_url norange
expect "a dropped connection the server cannot resume" norange failed download-failed
check "no ranges: started over once, then given up ($(requested norange/1500/big2.bin) requests)" \
        test "$(requested norange/1500/big2.bin)" -ge 2 -a "$(requested norange/1500/big2.bin)" -le 10

# ---- Once per digest -----------------------------------------------------------------------------
# Two images with the same bytes (two names) for two nodes: fetched once.
head -c 4000 /dev/urandom >"$work/www/same.bin"
{ head_ twice; img s1 9.0 "node: node-1" same.bin; img s2 9.0 "node: node-2" same.bin; } \
        >"$www/twice.yaml"
sign "$www/twice.yaml" release
deploy_url twice
expect_success "one digest under two names, node-1" twice node-1 same.bin s1-9.0.bin
check "one digest under two names: node-2 holds it too" \
        cmp -s "$work/www/same.bin" "$work/node-2.out/s2-9.0.bin"
check "one digest under two names: fetched once ($(requested /same.bin) requests)" \
        test "$(requested /same.bin)" = 1

# ---- Wrong software installation -------------------------------------------------------------------
{ head_ hw; img a 4.0 "node: node-1" a.bin "" "chip-id: 0x999"; } >"$www/hw.yaml"
sign "$www/hw.yaml" release
deploy_url hw
expect "wrong software, hardware mismatch" hw rejected node-incompatible

{ head_ unknown; img a 4.0 "node: node-9" a.bin; } >"$www/unknown.yaml"
sign "$www/unknown.yaml" release
deploy_url unknown
expect "wrong software, unknown node" unknown rejected node-unknown

{ head_ proto; img a 4.0 "node: node-1" a.bin "" "" stm32-rom; } >"$www/proto.yaml"
sign "$www/proto.yaml" release
deploy_url proto
expect "wrong software, image for another node's protocol" proto rejected node-incompatible

# node-1 runs 2.0 (mirror-ok); 1.9 is older.
{ head_ down; img a 1.9 "class: motor" a.bin "" "chip-id: 1043"; } >"$www/down.yaml"
sign "$www/down.yaml" release
deploy_url down
expect "wrong software, downgrade" down rejected downgrade

{ head_ down-ok "" "" "allow-downgrade: true"; img a 1.9 "class: motor" a.bin "" "chip-id: 1043"; } \
        >"$www/down-ok.yaml"
sign "$www/down-ok.yaml" release
deploy_url down-ok
expect_success "wrong software, downgrade allowed by the signed policy" down-ok node-1 a.bin a-1.9.bin

attacks_finish
