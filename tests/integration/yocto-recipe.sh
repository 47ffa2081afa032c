#!/usr/bin/env bash
# contrib/yocto/gatewayd_git.bb, checked as far as this machine allows: BitBake is not packaged
# for Debian 12 (and parsing a recipe needs openembedded-core's classes besides), so
# tests/integration/bb-check.py checks its syntax statement by statement and checks it against
# the tree: every meson option it passes exists, its unit exists, the classes meson, pkgconfig,
# systemd and useradd are inherited. The checker itself must refuse broken copies of it.
set -u

: "${GW_SRC:?GW_SRC must name the source directory}"
CASES_NAME=yocto-recipe
# shellcheck source=cases.sh
. "$GW_SRC/tests/integration/cases.sh"

recipe=$GW_SRC/contrib/yocto/gatewayd_git.bb
checker=$GW_SRC/tests/integration/bb-check.py
if command -v bitbake >/dev/null; then
        echo "NOTE: bitbake is installed, but without an openembedded-core layer it cannot parse the recipe: checked by bb-check.py"
else
        echo "NOTE: BitBake is not packaged for Debian 12: the recipe is checked by bb-check.py (syntax, and against the tree), not parsed or built by BitBake"
fi

out=$(python3 "$checker" "$recipe" "$GW_SRC" 2>&1)
rc=$?
echo "$out" | sed 's/^/  /'
check "the recipe passes the syntax and tree checks" test $rc -eq 0
check "it inherits meson pkgconfig systemd useradd" \
        grep -qx 'inherit meson pkgconfig systemd useradd' "$recipe"
check "it enables gatewayd.service and makes the user gatewayd" \
        sh -c "grep -q 'SYSTEMD_SERVICE:\${PN} = \"gatewayd.service\"' '$recipe' && grep -q -- '--user-group gatewayd' '$recipe'"

# broken NAME SED-EXPRESSION EXPECTED: a copy with one change must be refused, saying EXPECTED.
broken() {
        local name=$1 expr=$2 expected=$3 got
        sed "$expr" "$recipe" >"$work/broken.bb"
        if cmp -s "$recipe" "$work/broken.bb"; then
                fail "broken copy '$name': the change did not apply"
                return
        fi
        got=$(python3 "$checker" "$work/broken.bb" "$GW_SRC" 2>&1)
        if [ $? -ne 0 ] && grep -q "$expected" <<<"$got"; then
                pass "the checker refuses $name ($(grep -m1 "$expected" <<<"$got" | sed 's/.*broken.bb://'))"
        else
                fail "the checker accepts $name: $got"
        fi
}
broken "a value without its closing quote" 's/^SECTION = "admin"$/SECTION = "admin/' "not one quoted string"
broken "an unknown meson option" 's/-Dtests=false/-Dtestz=false/' "meson option -Dtestz"
broken "a unit that does not exist" 's/SYSTEMD_SERVICE:${PN} = "gatewayd.service"/SYSTEMD_SERVICE:${PN} = "gatewayd2.service"/' "gatewayd2.service"
broken "a shell function bash refuses" 's/^    fi$/    fii/' "shell function do_install:append"
broken "inline Python that does not parse" "s/bb.utils.filter('DISTRO_FEATURES', 'systemd', d)/bb.utils.filter('DISTRO_FEATURES' 'systemd' d))/" "inline Python"
broken "a function without its closing brace" '/^}$/d' "without its closing"
broken "a line that is no statement" 's/^inherit meson/inhert meson/' "not a BitBake statement"
broken "no useradd" 's/^inherit meson pkgconfig systemd useradd$/inherit meson pkgconfig systemd/' "class useradd"

[ "$failures" -eq 0 ] || exit 1
exit 0
