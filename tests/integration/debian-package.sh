#!/usr/bin/env bash
# The Debian packages, built and installed for real: tools/build-deb runs
# `dpkg-buildpackage -us -uc -b` on a copy of the tree and lintian (no errors allowed); the
# packages are then installed with dpkg, their maintainer scripts running, into a scratch root:
# an overlay over this machine's own root in a mount namespace of the test's own, so that the
# machine itself is left untouched. There the test checks that installing created the system
# user and group gatewayd, enabled the unit, put every file in place; then it runs the unit as
# systemd would (no systemd runs on these machines): its ExecStart, as its User=, with
# NOTIFY_SOCKET and WATCHDOG_USEC from WatchdogSec=, in the state directory StateDirectory=
# makes, against a real broker and a simulated node whose device node belongs to group gatewayd
# as the udev rules would make it. A signed deployment must flash the node, SIGTERM must stop it
# cleanly; removing and purging the package must work and take the state with it.
#
# The scratch root is a fresh minimal Debian 12 (debootstrap --variant=minbase from the
# configured mirror, made once and kept in the build directory, GW_DEB_ROOT to use another),
# overlaid for each run, and the packages are installed with apt, which must find every
# dependency they declare; without debootstrap or the mirror it overlays this machine's own
# root instead and installs with dpkg -i (the test says which).
set -u

: "${GW_SRC:?GW_SRC must name the source directory}"
E2E_NAME=debian-package
# shellcheck source=lib.sh
. "$GW_SRC/tests/integration/lib.sh"

for p in dpkg-buildpackage dh lintian; do
        if ! command -v "$p" >/dev/null; then
                echo "SKIP: $p is not installed (apt-get install dpkg-dev debhelper lintian): the packages are not built"
                exit 77
        fi
done

# ---- 1. Build and lintian ------------------------------------------------------------------
debs=$GW_BUILD/deb
t0=$SECONDS
"$GW_SRC/tools/build-deb" "$debs" >"$work/build-deb.log" 2>&1
rc=$?
sed -n '/^== lintian/,$p' "$work/build-deb.log" | sed 's/^/  /'
check "tools/build-deb: dpkg-buildpackage -us -uc -b and lintian without errors ($((SECONDS - t0)) s)" \
        test $rc -eq 0
if [ $rc -ne 0 ]; then
        tail -n 30 "$work/build-deb.log"
        exit 1
fi
pkg() { ls "$debs"/"$1"_*.deb 2>/dev/null | head -n 1; }
for p in gatewayd gatewayd-tools gatewayd-plugin-dev; do
        check "package $p built" test -n "$(pkg "$p")"
done
contents() { dpkg-deb -c "$(pkg "$1")" | awk '{print $6}' | sed 's|^\./|/|'; }
for f in /usr/sbin/gatewayd /lib/systemd/system/gatewayd.service /lib/udev/rules.d/60-gatewayd.rules \
        /usr/lib/sysusers.d/gatewayd.conf /etc/gatewayd/gatewayd.yaml \
        /usr/share/doc/gatewayd/README.udev /usr/share/man/man8/gatewayd.8.gz; do
        check "gatewayd ships $f" sh -c "$(declare -f contents pkg); debs='$debs'; contents gatewayd | grep -qx '$f'"
done
check "gatewayd ships the plugin folder" \
        sh -c "$(declare -f contents pkg); debs='$debs'; contents gatewayd | grep -qE '^/usr/lib/[^/]+/gatewayd/plugins-[0-9]+/$'"
for f in /usr/bin/gwflash /usr/bin/gwmanifest /usr/bin/gwctl /usr/share/man/man1/gwflash.1.gz; do
        check "gatewayd-tools ships $f" sh -c "$(declare -f contents pkg); debs='$debs'; contents gatewayd-tools | grep -qx '$f'"
done
check "gatewayd-plugin-dev ships gw/plugin.h and gatewayd-plugin.pc" \
        sh -c "$(declare -f contents pkg); debs='$debs'; contents gatewayd-plugin-dev | grep -qx /usr/include/gw/plugin.h && contents gatewayd-plugin-dev | grep -q 'pkgconfig/gatewayd-plugin.pc$'"
check "/etc/gatewayd/gatewayd.yaml is a conffile" \
        sh -c "dpkg-deb -I '$(pkg gatewayd)' conffiles | grep -qx /etc/gatewayd/gatewayd.yaml"
unit_in_deb=$work/deb-unit
dpkg-deb -x "$(pkg gatewayd)" "$unit_in_deb"
if command -v systemd-analyze >/dev/null; then
        exposure=$(systemd-analyze security --offline=true \
                "$unit_in_deb/lib/systemd/system/gatewayd.service" 2>/dev/null |
                sed -n 's/.*Overall exposure level for gatewayd.service: \([0-9.]*\).*/\1/p')
        check "the packaged unit: systemd-analyze security --offline=true exposure ${exposure:-?} (at most 2.0)" \
                sh -c "systemd-analyze security --offline=true --threshold=20 '$unit_in_deb/lib/systemd/system/gatewayd.service' >/dev/null 2>&1"
fi

# ---- 2. Installed into a scratch root ------------------------------------------------------
if [ "$(id -u)" -ne 0 ] || ! unshare -m true 2>/dev/null; then
        echo "SKIP (installation): needs root and a mount namespace (unshare -m) for the scratch root"
        [ "$failures" -eq 0 ] || exit 1
        exit 77
fi
if [ -d /run/systemd/system ]; then
        echo "NOTE: systemd runs here, but the test does not install packages into this machine:" \
                "the unit is run by hand in the scratch root as below"
else
        echo "NOTE: no systemd runs here (no /run/systemd/system): systemctl and systemd-run cannot" \
                "start the unit; the test runs its ExecStart by hand in the scratch root, as its" \
                "User=, with NOTIFY_SOCKET and WATCHDOG_USEC set as systemd sets them"
fi

# The base of the scratch root.
base=${GW_DEB_ROOT:-$GW_BUILD/debootstrap-bookworm}
if [ -x "$base/usr/bin/apt-get" ] && [ -f "$base/.gatewayd-ready" ]; then
        mode=clean
elif command -v debootstrap >/dev/null; then
        rm -rf "$base"
        mkdir -p "$base"
        echo "  debootstrap --variant=minbase bookworm $base (once; kept for later runs)"
        mirror=$(sed -n 's/^deb \(http[^ ]*\) bookworm main.*/\1/p' /etc/apt/sources.list 2>/dev/null | head -n 1)
        [ -n "$mirror" ] || mirror=$(sed -n 's/^URIs: *\(http[^ ]*\/debian\)$/\1/p' \
                /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
        if timeout 600 debootstrap --variant=minbase bookworm "$base" "${mirror:-http://deb.debian.org/debian}" \
                >"$work/debootstrap.log" 2>&1; then
                touch "$base/.gatewayd-ready"
                mode=clean
        else
                echo "NOTE: debootstrap cannot reach the mirror ($(tail -n 1 "$work/debootstrap.log")):" \
                        "the scratch root overlays this machine's root instead"
                rm -rf "$base"
                mode=host
        fi
else
        echo "NOTE: debootstrap is not installed: the scratch root overlays this machine's root"
        mode=host
fi
if [ "$mode" = clean ]; then
        echo "NOTE: scratch root: a fresh Debian 12 minbase ($base) under an overlay; packages installed with apt-get, dependencies from the mirror"
        lower=$base
else
        echo "NOTE: scratch root: this machine's root under an overlay; packages installed with dpkg -i"
        lower=/
fi

gw="gw-e2e-deb"
prefix=gatewayd/$gw
baud=921600
mkdir -p "$work/www"
# The service user reaches the node's device link and the notification socket in here.
chmod 755 "$work"
gw_start_broker "$work"
gw_start_http "$work/www"
gw_start_sim node-1 "$work" "$baud"
"$GWM" keygen --type ed25519 --out "$work/release" >/dev/null || { echo "FAIL: keygen"; exit 1; }
watch_prefix
notify_sock=$work/notify.sock
coproc LISTEN { exec python3 "$GW_SRC/tests/integration/sd-listen.py" notify "$notify_sock" "$work/notify.log"; }
GW_PIDS+=("$LISTEN_PID")
read -r -t 10 ready <&"${LISTEN[0]}"
[ "${ready:-}" = ready ] || { echo "FAIL: the notification listener did not start"; exit 1; }

head -c 5000 /dev/urandom >"$work/www/fw.bin"
{
        printf 'kind: gatewayd/manifest\nformat: 1\nid: deb1\nsequence: %s\n' "$(date +%s)"
        printf 'expires: %s\nimages:\n' "$(date -u -d '+1 day' +%Y-%m-%dT%H:%M:%SZ)"
        printf '  - name: fw\n    version: 1.0.0\n    targets: { node: node-1 }\n'
        printf '    protocol: ymodem\n    size: 5000\n    sha256: %s\n    url: fw.bin\n' \
                "$(sha256sum "$work/www/fw.bin" | cut -d' ' -f1)"
} >"$work/www/deb1.yaml"
"$GWM" sign --key "$work/release" "$work/www/deb1.yaml" >/dev/null || { echo "FAIL: sign"; exit 1; }

# The scratch root, assembled and used in one namespace: an overlay over / (writes go to
# $work/upper), the kernel file systems bound in, $work at the same path.
root=$work/root
mkdir -p "$root" "$work/upper" "$work/ovl-work"
cat >"$work/in-root.sh" <<'IN'
set -u
work=$1 root=$2 debs=$3 port=$4 pty=$5 lower=$6 mode=$7
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$work/upper,workdir=$work/ovl-work" "$root" || exit 90
mkdir -p "$root$work" "$root/tmp/debs"
mount --rbind /dev "$root/dev" && mount -t proc proc "$root/proc" && mount --rbind /sys "$root/sys" &&
        mount -t tmpfs tmpfs "$root/run" && mount --bind "$work" "$root$work" &&
        mount --bind "$debs" "$root/tmp/debs" || exit 91
in_root() { chroot "$root" "$@"; }
say() { echo "STEP $*"; }

say install
debs_in_root=$(cd "$debs" && ls gatewayd_*.deb gatewayd-tools_*.deb gatewayd-plugin-dev_*.deb | sed 's|^|/tmp/debs/|')
if [ "$mode" = clean ]; then
        cp /etc/resolv.conf "$root/etc/resolv.conf"
        # shellcheck disable=SC2086
        { in_root env DEBIAN_FRONTEND=noninteractive apt-get update -q &&
                in_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
                        --no-install-recommends $debs_in_root; } >"$work/dpkg-install.log" 2>&1
else
        # shellcheck disable=SC2086
        in_root dpkg -i $debs_in_root >"$work/dpkg-install.log" 2>&1
fi
echo "RESULT install $?"
echo "RESULT passwd $(in_root getent passwd gatewayd)"
echo "RESULT group $(in_root getent group gatewayd)"
echo "RESULT enabled $(readlink "$root/etc/systemd/system/multi-user.target.wants/gatewayd.service")"
echo "RESULT status $(in_root dpkg-query -W -f='${Status}' gatewayd gatewayd-tools gatewayd-plugin-dev)"
echo "RESULT version $(in_root /usr/sbin/gatewayd --version) / $(in_root /usr/bin/gwflash --version)"
# The .pc file as a plugin's build reads it (pkg-config of this machine: minbase has none).
pcdir=$(dirname "$(ls "$root"/usr/lib/*/pkgconfig/gatewayd-plugin.pc 2>/dev/null | head -n 1)")
echo "RESULT plugindir $(PKG_CONFIG_LIBDIR=$pcdir pkg-config --variable=plugindir gatewayd-plugin 2>/dev/null)"

# The integrator's part: the configuration, the release key, the node's device node.
unit=$root/lib/systemd/system/gatewayd.service
cat >"$root/etc/gatewayd/gatewayd.yaml" <<CONF
gateway:
  id: gw-e2e-deb
mqtt:
  host: 127.0.0.1
  port: $port
  reconnect-max: 2
trust:
  public-keys: [/etc/gatewayd/release.pub]
nodes:
  - name: node-1
    transport: { type: uart, port: $work/node-1.tty, baud: 921600 }
    protocol: { type: ymodem }
CONF
install -m 0640 -g "$(in_root getent group gatewayd | cut -d: -f3)" "$work/release.pub" \
        "$root/etc/gatewayd/release.pub"
chgrp "$(in_root getent group gatewayd | cut -d: -f3)" "$pty" && chmod 0660 "$pty"
echo "RESULT check $(in_root /usr/sbin/gatewayd --check-config /etc/gatewayd/gatewayd.yaml 2>&1)"

# What systemd does for this unit: StateDirectory= and User=, Group=, ExecStart=, the watchdog.
user=$(sed -n 's/^User=//p' "$unit")
group=$(sed -n 's/^Group=//p' "$unit")
state=/var/lib/$(sed -n 's/^StateDirectory=//p' "$unit")
mode=$(sed -n 's/^StateDirectoryMode=//p' "$unit")
exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
wd=$(sed -n 's/^WatchdogSec=\([0-9]*\)s$/\1/p' "$unit")
mkdir -p "$root$state"
in_root chown "$user:$group" "$state"
chmod "${mode:-0755}" "$root$state"
echo "RESULT unit user=$user group=$group state=$state mode=$mode watchdog=${wd}s exec=$exec_start"
say run
# shellcheck disable=SC2086
chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin NOTIFY_SOCKET="$work/notify.sock" \
        WATCHDOG_USEC=$((wd * 1000000)) \
        setpriv --reuid="$user" --regid="$group" --init-groups --inh-caps=-all \
        $exec_start 2>"$work/gatewayd.log" &
gwpid=$!
echo "$gwpid" >"$work/gatewayd.pid"
wait "$gwpid"
echo "RESULT exit $?"
echo "RESULT stateowner $(in_root stat -c '%U:%G %a' "$state")"
echo "RESULT journal $(ls "$root$state/deployments" 2>/dev/null | tr '\n' ' ')"

say remove
in_root dpkg -r gatewayd >"$work/dpkg-remove.log" 2>&1
echo "RESULT remove $? $(test -e "$root/usr/sbin/gatewayd" && echo binary-left || echo binary-gone) $(test -e "$root/etc/gatewayd/gatewayd.yaml" && echo conffile-kept)"
in_root dpkg -P gatewayd >"$work/dpkg-purge.log" 2>&1
echo "RESULT purge $? $(test -e "$root$state" && echo state-left || echo state-gone) $(test -e "$root/etc/gatewayd/gatewayd.yaml" && echo conffile-left || echo conffile-gone) $(readlink "$root/etc/systemd/system/multi-user.target.wants/gatewayd.service" || echo unit-disabled)"
IN
pty=$(readlink -f "$work/node-1.tty")
unshare -m --propagation private bash "$work/in-root.sh" "$work" "$root" "$debs" \
        "$GW_BROKER_PORT" "$pty" "$lower" "$mode" >"$work/in-root.out" 2>&1 &
nspid=$!
GW_PIDS+=("$nspid")
result() { sed -n "s/^RESULT $1 //p" "$work/in-root.out" | tail -n 1; }

gw_wait_for 300 grep -q '^STEP run' "$work/in-root.out"
check "installing the three packages ($([ "$mode" = clean ] && echo "apt-get install" || echo "dpkg -i")) succeeds, maintainer scripts run" \
        test "$(result install)" = 0 ||
        tail -n 20 "$work/dpkg-install.log"
check "all three are installed ($(result status))" \
        test "$(result status)" = "install ok installedinstall ok installedinstall ok installed"
pw=$(result passwd)
check "installing made the system user gatewayd ($pw)" \
        python3 -c 'import sys; f=sys.argv[1].split(":"); sys.exit(not (len(f)==7 and f[0]=="gatewayd" and int(f[2])<1000 and f[5]=="/var/lib/gatewayd" and f[6].endswith("nologin")))' "$pw"
check "... and the group gatewayd ($(result group))" grep -q '^gatewayd:x:' <<<"$(result group)"
check "the unit is enabled (multi-user.target.wants -> $(result enabled))" \
        test "$(result enabled)" = /lib/systemd/system/gatewayd.service
check "the installed tools answer --version ($(result version))" \
        test "$(result version)" = "gatewayd 0.1.0 / gwflash 0.1.0"
check "gatewayd-plugin.pc names the plugin folder ($(result plugindir))" \
        grep -qE '^/usr/lib/[^/]+/gatewayd/plugins-[0-9]+$' <<<"$(result plugindir)"
check "the integrator's configuration passes --check-config ($(result check))" \
        grep -q '^/etc/gatewayd/gatewayd.yaml: OK' <<<"$(result check)"
echo "  the unit as run: $(result unit)"

has_ready() { grep -q 'READY=1' "$work/notify.log" 2>/dev/null; }
check "gatewayd, run as the unit says, tells systemd it is ready" gw_wait_for 20 has_ready
mosquitto_pub -h 127.0.0.1 -p "$GW_BROKER_PORT" -q 1 -r -t "$prefix/deploy" \
        -m "{\"id\":\"deb1\",\"manifest_url\":\"http://127.0.0.1:$GW_HTTP_PORT/deb1.yaml\"}"
gw_wait_for 30 q final "$work/sub.log" "$prefix/deployments/deb1" >/dev/null
final=$(q final "$work/sub.log" "$prefix/deployments/deb1")
check "a deployment to the installed gatewayd ends success (got $(q get "$final" state))" \
        test "$(q get "$final" state)" = success
check "the node holds the image byte for byte" cmp -s "$work/www/fw.bin" "$work/node-1.out/fw-1.0.0.bin"
check "READY=1 came once" \
        test "$(grep -c 'READY=1' "$work/notify.log")" -eq 1
kill -TERM "$(cat "$work/gatewayd.pid")" 2>/dev/null
gw_wait_for 60 grep -q '^RESULT purge' "$work/in-root.out"
check "SIGTERM: STOPPING=1, then exit 0 (got $(result exit))" \
        sh -c "grep -q STOPPING=1 '$work/notify.log' && test '$(result exit)' = 0"
check "the state directory belongs to gatewayd, mode 750 ($(result stateowner))" \
        test "$(result stateowner)" = "gatewayd:gatewayd 750"
check "gatewayd journalled the deployment there ($(result journal))" \
        grep -q 'deb1.json' <<<"$(result journal)"
check "dpkg -r gatewayd: removed, the configuration kept ($(result remove))" \
        test "$(result remove)" = "0 binary-gone conffile-kept"
check "dpkg -P gatewayd: the state, the configuration and the unit's enablement gone ($(result purge))" \
        test "$(result purge)" = "0 state-gone conffile-gone unit-disabled"
gw_wait_pid "$nspid" 20

if [ "$failures" -ne 0 ]; then
        echo "--- in the scratch root ---"
        cat "$work/in-root.out"
        echo "--- gatewayd ---"
        tail -n 20 "$work/gatewayd.log"
        exit 1
fi
exit 0
