#!/usr/bin/env bash
# `meson install` into a scratch DESTDIR, and the tree it leaves: binaries in bindir and sbindir,
# the empty plugin folder of this plugin ABI, the starting configuration, the systemd unit (its
# ExecStart naming the installed gatewayd and the configuration, Type=notify, the watchdog, the
# hardening: systemd-analyze security --offline at most 2.0, and systemd-analyze verify), the
# sysusers.d snippet, the udev rules (and that udevadm accepts them where udevadm is installed),
# the man pages (rendered without warnings), the bash completions (loaded by bash and
# completing), the documentation; every installed tool answers --version with the project's
# version, and the installed gatewayd finds its configuration where the unit says.
set -u

: "${GW_SRC:?GW_SRC must name the source directory}"
: "${GW_BUILD:?GW_BUILD must name the build directory}"
CASES_NAME=install-layout
# shellcheck source=cases.sh
. "$GW_SRC/tests/integration/cases.sh"

dest=$work/root
DESTDIR=$dest meson install -C "$GW_BUILD" --no-rebuild --quiet >"$work/install.log" 2>&1 || {
        echo "FAIL: meson install"
        tail -n 20 "$work/install.log"
        exit 1
}

# The build's own idea of where things go.
opt() {
        meson introspect "$GW_BUILD" --buildoptions |
                python3 -c 'import json,sys; print(next(o["value"] for o in json.load(sys.stdin) if o["name"]==sys.argv[1]))' "$1"
}
abs() { case $2 in /*) echo "$2" ;; *) echo "$1/$2" ;; esac; }
prefix=$(opt prefix)
bindir=$(abs "$prefix" "$(opt bindir)")
sbindir=$(abs "$prefix" "$(opt sbindir)")
libdir=$(abs "$prefix" "$(opt libdir)")
sysconfdir=$(abs "$prefix" "$(opt sysconfdir)")
datadir=$(abs "$prefix" "$(opt datadir)")
mandir=$(abs "$prefix" "$(opt mandir)")
unitdir=$(opt systemdsystemunitdir)
[ -n "$unitdir" ] || unitdir=$prefix/lib/systemd/system
udevdir=$(opt udevrulesdir)
[ -n "$udevdir" ] || udevdir=$prefix/lib/udev/rules.d
sysusersdir=$(opt sysusersdir)
[ -n "$sysusersdir" ] || sysusersdir=$prefix/lib/sysusers.d
compdir=$(opt bashcompletiondir)
[ -n "$compdir" ] || compdir=$datadir/bash-completion/completions
docdir=$datadir/doc/gatewayd
version=$(meson introspect "$GW_BUILD" --projectinfo |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])')
abi=$(sed -n 's/^#define GW_PLUGIN_ABI_VERSION \([0-9]*\).*/\1/p' "$GW_SRC/include/gw/plugin.h")
echo "  prefix $prefix, version $version, plugin ABI $abi"

is_exe() { [ -f "$dest$1" ] && [ -x "$dest$1" ]; }
is_file() { [ -f "$dest$1" ] && [ -s "$dest$1" ]; }
check "gatewayd in sbindir ($sbindir)" is_exe "$sbindir/gatewayd"
for t in gwflash gwmanifest gwctl; do
        check "$t in bindir ($bindir)" is_exe "$bindir/$t"
done
check "the plugin folder of ABI $abi: $libdir/gatewayd/plugins-$abi" \
        test -d "$dest$libdir/gatewayd/plugins-$abi"
check "gatewayd looks there by default" \
        grep -qF "$libdir/gatewayd/plugins-$abi" "$dest$sbindir/gatewayd"
check "the plugin ABI headers" is_file "$prefix/include/gw/plugin.h"
check "gatewayd-plugin.pc names the plugin folder" \
        env PKG_CONFIG_PATH="$dest$libdir/pkgconfig" PKG_CONFIG_SYSROOT_DIR= \
        sh -c "pkg-config --variable=plugindir gatewayd-plugin | grep -qx '$libdir/gatewayd/plugins-$abi'"
check "the configuration: $sysconfdir/gatewayd/gatewayd.yaml" \
        is_file "$sysconfdir/gatewayd/gatewayd.yaml"
check "... is what the installed gatewayd reads by default" \
        sh -c "'$dest$sbindir/gatewayd' --help | grep -qF 'default $sysconfdir/gatewayd/gatewayd.yaml'"
check "... parses, and is refused only for the release key still to be put in place" \
        sh -c "'$dest$sbindir/gatewayd' --check-config '$dest$sysconfdir/gatewayd/gatewayd.yaml' 2>&1 | grep -q 'release.pub'"

# The unit.
unit=$dest$unitdir/gatewayd.service
check "the unit: $unitdir/gatewayd.service" is_file "$unitdir/gatewayd.service"
check "ExecStart runs the installed gatewayd on the installed configuration" \
        grep -qx "ExecStart=$sbindir/gatewayd -c $sysconfdir/gatewayd/gatewayd.yaml" "$unit"
if grep -q '^#define GW_HAVE_SYSTEMD 1' "$GW_BUILD/core/gw-config.h"; then
        notify_lines=(Type=notify WatchdogSec=30s)
else
        echo "  (built without libsystemd: the unit must say Type=exec and set no watchdog)"
        notify_lines=(Type=exec)
        check "no WatchdogSec= without libsystemd" sh -c "! grep -q '^WatchdogSec=' '$unit'"
fi
for line in "${notify_lines[@]}" Restart=on-failure User=gatewayd StateDirectory=gatewayd \
        NoNewPrivileges=yes ProtectSystem=strict PrivateTmp=yes DevicePolicy=closed \
        'RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK AF_CAN'; do
        check "the unit says $line" grep -qx "$line" "$unit"
done
if command -v systemd-analyze >/dev/null; then
        systemd-analyze security --offline=true "$unit" >"$work/security.txt" 2>&1
        exposure=$(sed -n 's/.*Overall exposure level for gatewayd.service: \([0-9.]*\).*/\1/p' \
                "$work/security.txt")
        check "systemd-analyze security --offline=true: exposure ${exposure:-?}, at most 2.0" \
                sh -c "systemd-analyze security --offline=true --threshold=20 '$unit' >/dev/null 2>&1"
        # verify checks that ExecStart can run: point it at the installed binary.
        sed "s|^ExecStart=$sbindir/|ExecStart=$dest$sbindir/|" "$unit" >"$work/gatewayd.service"
        check "systemd-analyze verify accepts the unit" \
                systemd-analyze verify --man=no "$work/gatewayd.service"
else
        echo "SKIP: systemd-analyze is not installed: the unit's exposure is not measured"
fi
check "the sysusers.d snippet makes user gatewayd" \
        grep -qE '^u gatewayd - ".*" /var/lib/gatewayd' "$dest$sysusersdir/gatewayd.conf"

# udev.
rules=$dest$udevdir/60-gatewayd.rules
check "the udev rules: $udevdir/60-gatewayd.rules" is_file "$udevdir/60-gatewayd.rules"
check "... give group gatewayd the USB DFU devices" \
        grep -qF 'ENV{ID_USB_INTERFACES}=="*:fe01??:*", GROUP="gatewayd", MODE="0660"' "$rules"
check "... and what a local rule tagged" grep -qF 'TAG=="gatewayd", GROUP="gatewayd"' "$rules"
if command -v udevadm >/dev/null && udevadm verify --help >/dev/null 2>&1; then
        check "udevadm verify accepts them" udevadm verify "$rules"
else
        echo "  (udevadm verify is not available here, systemd 252 has none: rules checked by grep only)"
fi
check "README.udev in the documentation" is_file "$docdir/README.udev"

# Man pages.
man_pages=(gatewayd.8 gatewayd.yaml.5 gwflash.1 gwmanifest.1 gwctl.1)
if [ "$(opt man)" = disabled ] || ! grep -q "man/gatewayd.8:" <(ninja -C "$GW_BUILD" -t targets all 2>/dev/null); then
        echo "SKIP (man pages): this build makes none (-Dman=disabled, or scdoc missing)"
        man_pages=()
fi
for page in "${man_pages[@]}"; do
        f=$dest$mandir/man${page##*.}/$page
        if [ ! -s "$f" ]; then
                fail "man page $page in $mandir/man${page##*.}"
                continue
        fi
        if command -v groff >/dev/null; then
                warn=$(LC_ALL=C.UTF-8 groff -man -Tutf8 -ww -z "$f" 2>&1)
                check "man page $page renders without warnings${warn:+: $warn}" test -z "$warn"
        else
                pass "man page $page installed (groff missing: not rendered)"
        fi
done
[ ${#man_pages[@]} -eq 0 ] || check "gatewayd(8) documents --udev-rules, READY=1, WATCHDOG=1 and GW_DEPLOYMENT" \
        sh -c "grep -q 'udev-rules' '$dest$mandir/man8/gatewayd.8' && grep -q 'READY=1' '$dest$mandir/man8/gatewayd.8' && grep -q 'WATCHDOG=1' '$dest$mandir/man8/gatewayd.8' && grep -q 'GW_DEPLOYMENT' '$dest$mandir/man8/gatewayd.8'"

# Completions: each file loads and completes.
# complete TOOL WORDS...: what bash completion offers for the last word.
complete_words() {
        bash -c '
                f=$1; shift
                . "$f" || exit 1
                COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1))
                fn=$(complete -p "$1" | sed "s/.*-F \([^ ]*\) .*/\1/")
                "$fn"
                printf "%s\n" "${COMPREPLY[@]}"' _ "$dest$compdir/$1" "$@"
}
for t in gatewayd gwflash gwmanifest gwctl; do
        check "bash completion for $t: $compdir/$t" is_file "$compdir/$t"
done
check "gwflash completes 'list'" sh -c "$(declare -f complete_words); dest='$dest' compdir='$compdir'; complete_words gwflash li | grep -qx list"
check "gwflash --protocol completes ymodem" sh -c "$(declare -f complete_words); dest='$dest' compdir='$compdir'; complete_words gwflash --protocol ym | grep -qx ymodem"
check "gwmanifest completes its commands" sh -c "$(declare -f complete_words); dest='$dest' compdir='$compdir'; complete_words gwmanifest ke | sort | tr '\n' ' ' | grep -qx 'keygen keys-init '"
check "gwctl completes deploy's options" sh -c "$(declare -f complete_words); dest='$dest' compdir='$compdir'; complete_words gwctl deploy --manifest- | grep -qx -- --manifest-url"
check "gatewayd --log completes journal" sh -c "$(declare -f complete_words); dest='$dest' compdir='$compdir'; complete_words gatewayd --log jo | grep -qx journal"

# Documentation.
for d in README.md configuration.md manifest.md mqtt.md transports.md protocols.md \
        examples/gatewayd.example.yaml; do
        check "documentation: $docdir/$d" is_file "$docdir/$d"
done

# --version everywhere, one string.
for t in "$sbindir/gatewayd" "$bindir/gwflash" "$bindir/gwmanifest" "$bindir/gwctl"; do
        got=$("$dest$t" --version 2>&1)
        check "$(basename "$t") --version prints '$(basename "$t") $version' (got '$got')" \
                test "$got" = "$(basename "$t") $version"
done
check "gatewayd -V too" test "$("$dest$sbindir/gatewayd" -V)" = "gatewayd $version"
check "gwflash -V too" test "$("$dest$bindir/gwflash" -V)" = "gwflash $version"

# Nothing test-only is installed.
check "no simulator or test program is installed" \
        sh -c "! find '$dest' -name '*sim*' -o -name 'test-*' -o -name 'fuzz-*' | grep -q ."

[ "$failures" -eq 0 ] || exit 1
exit 0
