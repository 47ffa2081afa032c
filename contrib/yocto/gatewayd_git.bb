# gatewayd for Yocto / OpenEmbedded: the daemon as a systemd service running as its own user,
# the tools and the plugin ABI, each in its package.
# Layers: openembedded-core, and meta-oe for mosquitto and libserialport.
# Checked here only for syntax and against meson_options.txt (tests/integration/yocto-recipe.sh):
# BitBake is not packaged for Debian 12.
SUMMARY = "Update gateway: flashes MCUs and FPGAs from signed MQTT deployments"
DESCRIPTION = "gatewayd takes a signed multi-image manifest over MQTT, verifies every image \
before a byte reaches a device, and flashes the microcontrollers and FPGAs behind the gateway \
over serial lines and USB (YMODEM, DFU/DfuSe), reporting each node's state upstream."
SECTION = "admin"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

# Point these at your copy of the repository and the commit to build.
GATEWAYD_GIT_URI ?= "git://git.example.com/gatewayd.git;protocol=https;branch=main"
SRC_URI = "${GATEWAYD_GIT_URI}"
SRCREV ?= "${AUTOREV}"
PV = "0.1.0+git${SRCPV}"
S = "${WORKDIR}/git"

inherit meson pkgconfig systemd useradd

DEPENDS = "libyaml openssl jansson curl mosquitto zstd zlib"

PACKAGECONFIG ??= "uart usb man ${@bb.utils.filter('DISTRO_FEATURES', 'systemd', d)}"
PACKAGECONFIG[uart] = "-Dtransport-uart=enabled,-Dtransport-uart=disabled,libserialport"
PACKAGECONFIG[usb] = "-Dtransport-usb=enabled,-Dtransport-usb=disabled,libusb1"
PACKAGECONFIG[systemd] = "-Dsystemd=enabled,-Dsystemd=disabled,systemd"
PACKAGECONFIG[man] = "-Dman=enabled,-Dman=disabled,scdoc-native"

EXTRA_OEMESON = " \
    -Dtests=false \
    -Dsystemdsystemunitdir=${systemd_system_unitdir} \
    -Dudevrulesdir=${nonarch_base_libdir}/udev/rules.d \
    -Dsysusersdir=${nonarch_libdir}/sysusers.d \
    -Dbashcompletiondir=${datadir}/bash-completion/completions \
"

# The service user; its group owns the device nodes gatewayd flashes (60-gatewayd.rules).
USERADD_PACKAGES = "${PN}"
USERADD_PARAM:${PN} = "--system --home-dir ${localstatedir}/lib/gatewayd --no-create-home \
    --shell ${base_sbindir}/nologin --user-group gatewayd"

SYSTEMD_SERVICE:${PN} = "gatewayd.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"

do_install:append() {
    # Without systemd the unit and the sysusers snippet have no use.
    if ${@bb.utils.contains('DISTRO_FEATURES', 'systemd', 'false', 'true', d)}; then
        rm -rf ${D}${systemd_system_unitdir} ${D}${nonarch_libdir}/sysusers.d
    fi
}

PACKAGES =+ "${PN}-tools ${PN}-plugin-dev"
FILES:${PN}-tools = " \
    ${bindir}/gwflash ${bindir}/gwmanifest ${bindir}/gwctl \
    ${datadir}/bash-completion/completions/gw* \
"
FILES:${PN}-plugin-dev = "${includedir}/gw ${libdir}/pkgconfig/gatewayd-plugin.pc"
FILES:${PN} += " \
    ${systemd_system_unitdir}/gatewayd.service \
    ${nonarch_base_libdir}/udev/rules.d/60-gatewayd.rules \
    ${nonarch_libdir}/sysusers.d/gatewayd.conf \
    ${libdir}/gatewayd \
    ${datadir}/bash-completion/completions/gatewayd \
"
CONFFILES:${PN} = "${sysconfdir}/gatewayd/gatewayd.yaml"
RRECOMMENDS:${PN} = "${PN}-tools"
