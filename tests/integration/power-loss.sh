#!/usr/bin/env bash
# Power loss at any instant, end to end: a real broker, an HTTP server, three simulated YMODEM
# nodes and gatewayd. A signed deployment of three images (policy parallel 3) waits retained on
# <prefix>/deploy; gatewayd is started and killed with SIGKILL (no cleanup, like a power cut)
# again and again, each kill at a random moment of a different phase (start-up, manifest,
# download, verification, flashing, the first node done, all nodes done). After every kill the
# state directory must hold only well-formed files (journal JSON, manifest-state lines, store
# files whose content matches their name) and gatewayd must start again. Finally gatewayd runs
# to the end: the deployment ends success, every node holds its image byte for byte, the node
# records name the new version and still remember the version before it. Then an atomic
# deployment loses power right after its first node took its image and fails after the restart:
# every node, that one included, must go back to what it ran before. No sanitizer may speak.
# GW_POWERLOSS_SEED=N replays a run (the seed is printed first).
set -u

: "${GW_SRC:?GW_SRC must name the source directory}"
E2E_NAME=power-loss
# shellcheck source=lib.sh
. "$GW_SRC/tests/integration/lib.sh"

seed=${GW_POWERLOSS_SEED:-$$}
RANDOM=$seed
echo "power-loss: seed $seed (replay with GW_POWERLOSS_SEED=$seed)"
t_start=$SECONDS

# ---- The parts --------------------------------------------------------------------------------
gw="gw-e2e-powerloss"
prefix=gatewayd/$gw
# 921600 baud is about 92 KB/s on the line: the images below take 1 to 2.5 s to flash.
baud=921600
# The images come through a paced server, so that a kill can land in the middle of a download.
trickle=400000
mkdir -p "$work/www" "$work/state"
gw_start_broker "$work"
gw_start_http "$work/www"
start_evil_http "$work/www" "$work/images-http.log"
for n in 1 2 3; do
        # The 'C' prompt comes often, so that a restarted sender is answered at once.
        gw_start_sim "node-$n" "$work" "$baud" --c-interval 100 --control "$work/node-$n.ctl"
done
"$GWM" keygen --type ed25519 --out "$work/release" >/dev/null ||
        { echo "FAIL: gwmanifest keygen"; exit 1; }

ymodem_config 3 "start-timeout-ms: 3000" "reconnect-max: 2"

watch_prefix

seq_no=$(date +%s)
expires=$(date -u -d '+1 day' +%Y-%m-%dT%H:%M:%SZ)
# manifest ID VERSION BASE SIZE1 SIZE2 SIZE3: www/ID.yaml sending app-node-N VERSION (SIZEn
# random bytes, made here) to node-N, all three at once; BASE is prefixed to each image file
# name; policy.atomic is $ATOMIC (default false). Published retained on <prefix>/deploy.
manifest() {
        local id=$1 v=$2 base=$3 n f
        shift 3
        seq_no=$((seq_no + 1))
        {
                printf 'kind: gatewayd/manifest\nformat: 1\nid: %s\nsequence: %s\n' "$id" "$seq_no"
                printf 'expires: %s\npolicy: { parallel: 3, atomic: %s }\nimages:\n' "$expires" \
                        "${ATOMIC:-false}"
                for n in 1 2 3; do
                        f=app-node-$n-$v.bin
                        head -c "$1" /dev/urandom >"$work/www/$f"
                        shift
                        echo "  - name: app-node-$n"
                        echo "    version: $v"
                        echo "    targets: { node: node-$n }"
                        echo "    protocol: ymodem"
                        echo "    size: $(stat -c %s "$work/www/$f")"
                        echo "    sha256: $(sha256sum "$work/www/$f" | cut -d' ' -f1)"
                        echo "    url: $base$f"
                done
        } >"$work/www/$id.yaml"
        "$GWM" sign --key "$work/release" "$work/www/$id.yaml" >/dev/null ||
                { echo "FAIL: gwmanifest sign $id"; exit 1; }
        mosquitto_pub -h 127.0.0.1 -p "$GW_BROKER_PORT" -q 1 -r -t "$prefix/deploy" \
                -m "{\"id\":\"$id\",\"manifest_url\":\"http://127.0.0.1:$GW_HTTP_PORT/$id.yaml\"}"
}
# holds NODE VERSION: the last file NODE received completely is app-NODE-VERSION.bin, and it
# is that image byte for byte.
holds() {
        local last
        last=$(python3 - "$work/$1.report" <<'PY'
import json, sys
ok = [j for j in map(json.loads, open(sys.argv[1])) if j.get("result") == "ok"]
print(ok[-1]["file"] if ok else "")
PY
)
        [ "$last" = "app-$1-$2.bin" ] &&
                cmp -s "$work/www/app-$1-$2.bin" "$work/$1.out/app-$1-$2.bin"
}
retained() {
        mosquitto_sub -h 127.0.0.1 -p "$GW_BROKER_PORT" -C 1 -W 3 -F '%r %p' -t "$1" 2>/dev/null
}

# check_state: every file gatewayd reads back from the state directory is well-formed:
# deployments/<id>.json and nodes/<node>.json are JSON objects of the documented shape,
# manifest-state is "key value" lines, and each file of the content-addressed image store
# hashes to its name. Temporary files of an interrupted write-then-rename are listed (TEMP)
# and do not fail; anything malformed is printed (BAD) and fails.
check_state() {
        python3 - "$work/state" <<'PY'
import hashlib, json, os, re, sys

root = sys.argv[1]
bad, temps, other = [], [], []
STATES = {"accepted", "flashing", "success", "failed", "rejected", "interrupted"}
HEX64 = re.compile(r"^[0-9a-f]{64}$")
JOURNAL_TMP = re.compile(r"\.tmp\.[0-9]+$")

def load_json(path):
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        bad.append("%s: not JSON (%s)" % (path, e))
        return None

for dirpath, _, files in os.walk(root):
    rel_dir = os.path.relpath(dirpath, root)
    for name in sorted(files):
        path = os.path.join(dirpath, name)
        rel = os.path.normpath(os.path.join(rel_dir, name))
        if JOURNAL_TMP.search(name) or name == ".manifest-state.tmp" or (
                rel_dir == "images" and re.match(r"^\.[0-9a-f]{64}\.[A-Za-z0-9]{6}$", name)):
            temps.append("%s (%d bytes)" % (rel, os.path.getsize(path)))
            continue
        if rel_dir == "deployments" and name.endswith(".json"):
            o = load_json(path)
            if o is None:
                continue
            if not isinstance(o, dict) or o.get("id") != name[:-5] or \
                    not HEX64.match(str(o.get("manifest_sha256"))) or o.get("state") not in STATES:
                bad.append("%s: unexpected content %r" % (rel, o))
        elif rel_dir == "nodes" and name.endswith(".json"):
            o = load_json(path)
            if o is None:
                continue
            if not isinstance(o, dict):
                bad.append("%s: not an object: %r" % (rel, o))
                continue
            for p in ("", "previous_", "incomplete_"):
                if p + "version" in o and not (
                        isinstance(o.get(p + "version"), str) and
                        isinstance(o.get(p + "image"), str) and
                        HEX64.match(str(o.get(p + "sha256"))) and
                        isinstance(o.get(p + "size"), int) and
                        isinstance(o.get(p + "options"), dict)):
                    bad.append("%s: incomplete %simage record %r" % (rel, p, o))
        elif rel == "manifest-state":
            with open(path, "rb") as f:
                text = f.read()
            keys = {}
            try:
                lines = text.decode("ascii").split("\n")
            except UnicodeDecodeError:
                lines = None
                bad.append("manifest-state: not text")
            if lines is not None:
                if not text.endswith(b"\n"):
                    bad.append("manifest-state: truncated (no final newline): %r" % text)
                for line in filter(None, lines):
                    k, sep, v = line.partition(" ")
                    keys[k] = v
                    ok = sep and {
                        "sequence": lambda v: v.isdigit(),
                        "sha256": lambda v: bool(HEX64.match(v)),
                        "latest-trusted-time": lambda v: v.isdigit(),
                        "key-floor": lambda v: re.match(r"^[0-9a-f]{64} [0-9]+$", v),
                    }.get(k, lambda v: False)(v)
                    if not ok:
                        bad.append("manifest-state: bad line %r" % line)
                if ("sequence" in keys) != ("sha256" in keys):
                    bad.append("manifest-state: sequence and sha256 not together: %r" % text)
        elif rel_dir == "images":
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(65536), b""):
                    h.update(chunk)
            if h.hexdigest() != name:
                bad.append("images/%s: content hashes to %s" % (name, h.hexdigest()))
        else:
            other.append(rel)

for t in temps:
    print("TEMP: " + t)
for o in other:
    print("OTHER: " + o)
for b in bad:
    print("BAD: " + b)
sys.exit(1 if bad else 0)
PY
}

gwpid=
round=0
start_gw() {
        "$GWD" -c "$work/gatewayd.yaml" 2>"$work/gatewayd.$round.log" &
        gwpid=$!
        GW_PIDS+=("$gwpid")
}

# ---- 1. Before the power cuts: 1.0.0 on every node, so that each has a previous image ---------
start_gw
manifest base 1.0.0 "" 4000 5000 6000
gw_wait_for 30 q final "$work/sub.log" "$prefix/deployments/base" >/dev/null
final=$(q final "$work/sub.log" "$prefix/deployments/base")
check "base: 1.0.0 reaches every node (got $(q get "$final" state))" \
        test "$(q get "$final" state)" = success
kill -TERM "$gwpid"
gw_wait_pid "$gwpid" 10
rc=$?
check "base: gatewayd stops on SIGTERM with status 0 (got $rc)" test $rc -eq 0
if [ "$failures" -ne 0 ]; then
        tail -n 20 "$work/gatewayd.0.log"
        exit 1
fi

# ---- 2. The deployment that keeps losing power -------------------------------------------------
# node-1 finishes first (about 1 s on the line), node-3 last (about 2.5 s).
manifest pl 2.0.0 "http://127.0.0.1:$EVIL_PORT/trickle/$trickle/" 98304 163840 229376

# The helpers below look only at what happened since the round started.
sub0=0
log_has() { grep -qE "$1" "$work/gatewayd.$round.log"; }
# seen STATE MIN: at least MIN nodes reported STATE for deployment $dep in this round.
dep=pl
seen() {
        [ "$(tail -n +$((sub0 + 1)) "$work/sub.log" |
                grep -E "^[01] $prefix/nodes/node-[0-9]+/status \\{\"state\":\"$1\",\"deployment\":\"$dep\"" |
                cut -d' ' -f2 | sort -u | wc -l)" -ge "$2" ]
}
seen_any() {
        local st
        for st in "$@"; do
                seen "$st" 1 && return 0
        done
        return 1
}
over() { q final "$work/sub.log" "$prefix/deployments/$dep" >/dev/null || log_has "$dep .*already done"; }
# until_event TIMEOUT_S COMMAND...: polls every 10 ms; fails on time-out, or when the deployment
# is over (nothing more to wait for) or gatewayd died.
until_event() {
        local end=$((SECONDS + $1))
        shift
        while [ $SECONDS -lt $end ]; do
                "$@" && return 0
                if over; then
                        "$@" # it may have come together with the end
                        return
                fi
                kill -0 "$gwpid" 2>/dev/null || return 1
                sleep 0.01
        done
        return 1
}
# records_true: every node whose record (state/nodes/<node>.json) names a version finished
# receiving that version last, with that image's hash (the simulator's report; its file may be
# rewritten by a transfer in progress): the journal may lag behind a node, never run ahead.
records_true() {
        local n v ok=0 got
        for n in 1 2 3; do
                v=$(q get "$(cat "$work/state/nodes/node-$n.json" 2>/dev/null)" version)
                [ -n "$v" ] || continue
                got=$(python3 - "$work/node-$n.report" <<'PY'
import json, sys
ok = [j for j in map(json.loads, open(sys.argv[1])) if j.get("result") == "ok"]
print("%s %s" % (ok[-1]["file"], ok[-1]["sha256"]) if ok else "")
PY
)
                if [ "$got" != "app-node-$n-$v.bin $(sha256sum "$work/www/app-node-$n-$v.bin" | cut -d' ' -f1)" ]; then
                        echo "  node-$n: the journal says $v, the node last took ${got:-nothing}" >&2
                        ok=1
                fi
        done
        return $ok
}
msleep() { sleep "$(printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)))"; }
# where: one line saying where the deployment stood when the power went.
where() {
        local j n last out
        j=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("state"))' \
                "$work/state/deployments/$dep.json" 2>/dev/null || echo none)
        out="journal=$j"
        for n in 1 2 3; do
                last=$(tail -n +$((sub0 + 1)) "$work/sub.log" |
                        grep "^[01] $prefix/nodes/node-$n/status .*\"deployment\":\"$dep\"" | tail -n 1 |
                        sed -E 's/.*"state":"([a-z]+)".*/\1/;')
                out="$out node-$n=${last:-idle}"
                case $last in
                flashing | downloading)
                        out="$out:$(tail -n +$((sub0 + 1)) "$work/sub.log" |
                                grep "^[01] $prefix/nodes/node-$n/status .*\"deployment\":\"$dep\"" |
                                tail -n 1 | sed -nE 's/.*"progress":([0-9]+).*/\1/p')%"
                        ;;
                esac
        done
        echo "$out"
}

# One round per phase to hit: a trigger to wait for, then a random delay (ms, up to the bound).
# YMODEM nodes cannot identify themselves: the verification phase covers that step.
triggers=(
        "start:150"              # start-up, MQTT connect, the retained deploy, manifest fetch
        "accepted:400"           # manifest verified; downloads (paced) running
        "downloading:300"        # downloads, if any image is still missing from the store
        "verifying:40"           # image hashes checked; nodes opened
        "flashing:600"           # the first blocks
        "flashing:1200"          # mid-transfer
        "flashing:2000"          # anywhere in the transfers
        "flashing:2000"
        "success1:150"           # node-1 done and journalled, the others still flashing
        "success2:150"           # two nodes done
        "success3:30"            # all done: the final journal write and report
)
kills=0
for t in "${triggers[@]}"; do
        round=$((round + 1))
        what=${t%%:*}
        bound=${t##*:}
        delay=$((RANDOM % bound))
        sub0=$(wc -l <"$work/sub.log")
        start_gw
        # A phase may be skipped (no download when the store has every image, no verifying
        # state then either): a later phase fires the trigger too.
        case $what in
        start) fired=0 ;;
        accepted) until_event 10 log_has 'Deployment pl accepted'; fired=$? ;;
        downloading) until_event 10 seen_any downloading verifying flashing; fired=$? ;;
        verifying) until_event 10 seen_any verifying flashing; fired=$? ;;
        flashing) until_event 10 seen flashing 1; fired=$? ;;
        success1) until_event 10 seen success 1; fired=$? ;;
        success2) until_event 10 seen success 2; fired=$? ;;
        success3) until_event 10 seen success 3; fired=$? ;;
        esac
        msleep "$delay"
        if ! kill -0 "$gwpid" 2>/dev/null; then
                wait "$gwpid"
                fail "round $round: gatewayd died by itself before the power cut (status $?)"
                tail -n 5 "$work/gatewayd.$round.log"
                break
        fi
        kill -KILL "$gwpid"
        wait "$gwpid" 2>/dev/null
        kills=$((kills + 1))
        [ $fired -eq 0 ] && note="" || note=" (trigger not seen)"
        echo "round $round: killed at $what+${delay}ms$note: $(where)"
        if log_has '[Cc]annot (read|parse|open|persist|create|set up)|refus|rejected'; then
                fail "round $round: gatewayd complained about its state after restart:"
                grep -E '[Cc]annot (read|parse|open|persist|create|set up)|refus|rejected' \
                        "$work/gatewayd.$round.log" | head -n 5
        fi
        out=$(check_state)
        rc=$?
        grep -v '^TEMP\|^OTHER' <<<"$out"
        check "round $round: every file in the state directory is well-formed" test $rc -eq 0
        check "round $round: each node holds the image its journal record names" records_true
        if grep -q '"incomplete_version"' "$work"/state/nodes/*.json 2>/dev/null; then
                echo yes >"$work/incomplete-seen"
        fi
        if q final "$work/sub.log" "$prefix/deployments/pl" >/dev/null; then
                final=$(q final "$work/sub.log" "$prefix/deployments/pl")
                [ "$(q get "$final" state)" = success ] ||
                        fail "round $round: the deployment ended $(q get "$final" state): $(q get "$final" error.message)"
        fi
done

# ---- 3. Power stays on: the deployment finishes -------------------------------------------------
round=$((round + 1))
sub0=$(wc -l <"$work/sub.log")
start_gw
# Done when pl succeeded, or when gatewayd said it ran to the end already.
done_pl() {
        [ "$(q get "$(q final "$work/sub.log" "$prefix/deployments/pl" 2>/dev/null)" state)" = success ] ||
                log_has 'pl .*already done'
}
gw_wait_for 30 done_pl
check "after $kills power cuts gatewayd is still running" kill -0 "$gwpid"
r=$(retained "$prefix/deployments/pl")
check "the retained report on $prefix/deployments/pl says success (got: ${r#* })" \
        test "${r%% *}" = 1 -a "$(q get "${r#* }" state 2>/dev/null)" = success
for n in 1 2 3; do
        check "node-$n is success in the final report" \
                test "$(q get "${r#* }" "nodes.node-$n.state" 2>/dev/null)" = success
        check "node-$n holds app-node-$n 2.0.0 byte for byte" holds "node-$n" 2.0.0
        rec=$(cat "$work/state/nodes/node-$n.json" 2>/dev/null)
        check "journal: node-$n runs 2.0.0 with its hash ($rec)" \
                test "$(q get "$rec" version)/$(q get "$rec" sha256)" = \
                "2.0.0/$(sha256sum "$work/www/app-node-$n-2.0.0.bin" | cut -d' ' -f1)"
        # What a rollback of pl would restore: the image the node ran before pl, not pl's own
        # image recorded twice because it was flashed again after a power cut.
        check "journal: node-$n still remembers 1.0.0 as its previous image (got $(q get "$rec" previous_version))" \
                test "$(q get "$rec" previous_version)/$(q get "$rec" previous_sha256)" = \
                "1.0.0/$(sha256sum "$work/www/app-node-$n-1.0.0.bin" | cut -d' ' -f1)"
        check "journal: node-$n has nothing half-written any more" \
                test -z "$(q get "$rec" incomplete_version 2>/dev/null)"
done
# A node that took its image before a cut is not written again when the deployment runs again.
check "a node that took its image before a cut was not flashed again after the restart" \
        grep -q "before the deployment was interrupted; not flashed again" "$work"/gatewayd.*.log
# A cut mid-flash left a record saying so, before the deployment ran again and cleared it.
check "journal: a power cut mid-flash left a record naming the image as half-written" \
        test "$(cat "$work/incomplete-seen" 2>/dev/null)" = yes
check "journal: deployments/pl.json says success" \
        test "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["state"])' \
                "$work/state/deployments/pl.json" 2>/dev/null)" = success

# ---- 4. Undoing the work after a power cut ------------------------------------------------------
# An atomic deployment of 3.0.0: the power goes right after node-1 took it, and after the restart
# node-3 fails: every node must go back to the image it ran before this deployment (2.0.0),
# node-1 included, although its record already said 3.0.0 when the power came back.
dep=pa
# Leftovers of writes a cut interrupted, as each writer names them, for the next start to sweep
# (cuts mid-write leave such files too, but not in every seed), and a file that is not one.
planted=("$work/state/nodes/node-1.json.tmp.4242"
        "$work/state/images/.$(printf 'ab%.0s' $(seq 32)).Xy12Zq"
        "$work/state/.manifest-state.tmp")
for f in "${planted[@]}"; do echo partial >"$f"; done
: >"$work/state/nodes/.keep-me"
sub0=$(wc -l <"$work/sub.log")
ATOMIC=true manifest pa 3.0.0 "" 32768 65536 163840
if until_event 20 seen success 1; then
        kill -KILL "$gwpid"
        wait "$gwpid" 2>/dev/null
        kills=$((kills + 1))
        echo "atomic: killed when node-1 took 3.0.0: $(where)"
        timeout 5 sh -c "printf 'cancel-after 2\\n' >'$work/node-3.ctl'" || fail "cannot arm node-3"
        round=$((round + 1))
        start_gw
        gw_wait_for 40 q final "$work/sub.log" "$prefix/deployments/pa" >/dev/null
        final=$(q final "$work/sub.log" "$prefix/deployments/pa")
        check "atomic: after the power cut pa fails with node-3's flash-failed (got $(q get "$final" state) $(q get "$final" error.code))" \
                test "$(q get "$final" state)/$(q get "$final" error.code)" = failed/flash-failed
        for n in 1 2 3; do
                check "atomic: node-$n is reverted to 2.0.0 in the final report (got $(q get "$final" "nodes.node-$n.state") $(q get "$final" "nodes.node-$n.version"))" \
                        test "$(q get "$final" "nodes.node-$n.state")/$(q get "$final" "nodes.node-$n.version")" = reverted/2.0.0
                check "atomic: node-$n holds 2.0.0 byte for byte again" holds "node-$n" 2.0.0
                rec=$(cat "$work/state/nodes/node-$n.json" 2>/dev/null)
                check "atomic: the journal says node-$n runs 2.0.0 again (got $(q get "$rec" version))" \
                        test "$(q get "$rec" version)" = 2.0.0
        done
else
        fail "atomic: node-1 never took 3.0.0"
fi
kill -TERM "$gwpid"
gw_wait_pid "$gwpid" 10
rc=$?
check "gatewayd stops on SIGTERM with status 0 at the end (got $rc)" test $rc -eq 0
out=$(check_state)
rc=$?
echo "$out" | sed 's/^/  state dir: /'
check "at the end every file in the state directory is well-formed" test $rc -eq 0
# Each start sweeps what the cut writes left; after a clean stop none may remain.
check "no temporary file left behind after the restarts ($(grep -c '^TEMP' <<<"$out"))" \
        test "$(grep -c '^TEMP' <<<"$out")" -eq 0
for f in "${planted[@]}"; do
        check "a restart removed the planted leftover ${f#"$work"/}" test ! -e "$f"
done
check "... and kept what is not a leftover" test -e "$work/state/nodes/.keep-me"
check "... and said so" grep -q "temporary file(s) that interrupted writes left" \
        "$work"/gatewayd.*.log

# ---- 5. No sanitizer spoke (ASan/UBSan builds) -------------------------------------------------
san() { ! grep -l -E 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$work"/gatewayd.*.log \
        "$work"/node-*.log 2>/dev/null; }
check "no sanitizer report in the gatewayd or simulator logs" san

echo "power-loss: seed $seed, $kills power cuts, $((SECONDS - t_start)) s"
if [ "$failures" -ne 0 ]; then
        echo "--- gatewayd log of the last run (last 30 lines) ---"
        tail -n 30 "$work/gatewayd.$round.log"
        exit 1
fi
exit 0
