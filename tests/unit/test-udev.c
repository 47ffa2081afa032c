/* Unit tests for gatewayd/udev.c (gatewayd --udev-rules): a table of nodes against the exact
 * rules they must give, over a fake sysfs tree made at test time (a USB-serial adapter with a
 * serial number, one without, an on-board UART), and values no rule may carry. */
#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"
#include "udev.h"

#define ASSIGN "GROUP=\"gatewayd\", MODE=\"0660\", TAG+=\"gatewayd\""

static char root[PATH_MAX]; /* the fake tree: root/sys, root/dev */

static void put(const char *rel, const char *text)
{
        char path[PATH_MAX * 2];
        FILE *f;

        snprintf(path, sizeof(path), "%s/%s", root, rel);
        for (char *p = strchr(path + strlen(root) + 1, '/'); p; p = strchr(p + 1, '/')) {
                *p = '\0';
                mkdir(path, 0755);
                *p = '/';
        }
        f = fopen(path, "w");
        assert_non_null(f);
        fputs(text, f);
        fclose(f);
}

static void link_to(const char *rel, const char *target)
{
        char path[PATH_MAX * 2], dir[PATH_MAX * 2];

        snprintf(path, sizeof(path), "%s/%s", root, rel);
        snprintf(dir, sizeof(dir), "%s", path);
        *strrchr(dir, '/') = '\0';
        for (char *p = strchr(dir + strlen(root) + 1, '/'); p; p = strchr(p + 1, '/')) {
                *p = '\0';
                mkdir(dir, 0755);
                *p = '/';
        }
        mkdir(dir, 0755);
        assert_int_equal(symlink(target, path), 0);
}

static int setup(void **state)
{
        snprintf(root, sizeof(root), "%s/gw-test-udev.XXXXXX", P_tmpdir);
        assert_non_null(mkdtemp(root));
        /* An FTDI adapter with a serial number on port 1-1.2 ... */
        put("sys/devices/pci0/usb1/1-1/1-1.2/idVendor", "0403\n");
        put("sys/devices/pci0/usb1/1-1/1-1.2/idProduct", "6001\n");
        put("sys/devices/pci0/usb1/1-1/1-1.2/serial", "A10K5XYZ\n");
        put("sys/devices/pci0/usb1/1-1/1-1.2/1-1.2:1.0/ttyUSB7/uevent", "");
        link_to("sys/class/tty/ttyUSB7/device", "../../../devices/pci0/usb1/1-1/1-1.2/1-1.2:1.0");
        /* ... a CDC-ACM board without one, and a serial number no rule may carry ... */
        put("sys/devices/pci0/usb1/1-1/1-1.3/idVendor", "2fe3\n");
        put("sys/devices/pci0/usb1/1-1/1-1.3/idProduct", "0100\n");
        put("sys/devices/pci0/usb1/1-1/1-1.3/1-1.3:1.0/uevent", "");
        link_to("sys/class/tty/ttyACM2/device", "../../../devices/pci0/usb1/1-1/1-1.3/1-1.3:1.0");
        put("sys/devices/pci0/usb1/1-1/1-1.4/idVendor", "1a86\n");
        put("sys/devices/pci0/usb1/1-1/1-1.4/idProduct", "7523\n");
        put("sys/devices/pci0/usb1/1-1/1-1.4/serial", "bad\"one\n");
        put("sys/devices/pci0/usb1/1-1/1-1.4/1-1.4:1.0/uevent", "");
        link_to("sys/class/tty/ttyUSB9/device", "../../../devices/pci0/usb1/1-1/1-1.4/1-1.4:1.0");
        /* ... and an on-board UART. */
        put("sys/devices/platform/30860000.serial/uevent", "");
        link_to("sys/class/tty/ttymxc1/device", "../../../devices/platform/30860000.serial");
        /* The device nodes (plain files: only their names and link targets matter). */
        put("dev/ttyUSB7", "");
        put("dev/ttyACM2", "");
        put("dev/ttyUSB9", "");
        put("dev/ttymxc1", "");
        link_to("dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A10K5XYZ-if00-port0", "../../ttyUSB7");
        return 0;
}

static int teardown(void **state)
{
        char cmd[PATH_MAX + 16];

        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
        return system(cmd) == 0 ? 0 : -1;
}

/* The rules for one node whose transport mapping is transport (YAML flow mapping), without the
 * header comments, the ACTION and LABEL lines: "<comment>\n<rule>\n" or just a comment. */
static char *rules_for(const char *transport, int *ret_rules)
{
        char yaml[2048], *buf = NULL, *error = NULL, *p, *out;
        struct gw_config *c = NULL;
        size_t size = 0;
        FILE *f;
        int r;

        snprintf(yaml, sizeof(yaml),
                 "gateway: { id: gw-1 }\nmqtt: { host: broker }\ntrust: { public-keys: [k.pub] }\n"
                 "nodes:\n  - name: n1\n    transport: %s\n    protocol: { type: ymodem }\n",
                 transport);
        r = gw_config_parse(yaml, strlen(yaml), "gw.yaml", "/", &c, &error);
        if (r < 0)
                fail_msg("config refused: %s", error ? error : strerror(-r));
        f = open_memstream(&buf, &size);
        assert_non_null(f);
        {
                char sysfs[PATH_MAX + 8];

                snprintf(sysfs, sizeof(sysfs), "%s/sys", root);
                *ret_rules = gw_udev_rules_write(c, sysfs, f);
        }
        fclose(f);
        gw_config_free(c);
        /* Past the header, up to the label. */
        p = strstr(buf, "GOTO=\"gatewayd_nodes_end\"\n");
        assert_non_null(p);
        p += strlen("GOTO=\"gatewayd_nodes_end\"\n");
        out = strndup(p, (size_t) (strstr(p, "LABEL=") - p));
        free(buf);
        return out;
}

struct vector {
        const char *name;
        const char *transport; /* @ROOT@: the fake tree's root */
        int rules;
        const char *expected; /* @ROOT@: the fake tree's root */
};

static const struct vector vectors[] = {
    {"usb ids", "{ type: usb, usb: \"0483:df11\" }", 1,
     "# node n1: USB 0483:df11\n"
     "SUBSYSTEM==\"usb\", ENV{DEVTYPE}==\"usb_device\", ATTR{idVendor}==\"0483\", "
     "ATTR{idProduct}==\"df11\", " ASSIGN "\n"},
    {"usb serial in the spec", "{ type: usb, usb: \"483:DF11,serial=3267358B3133\" }", 1,
     "# node n1: USB 0483:df11 serial 3267358B3133\n"
     "SUBSYSTEM==\"usb\", ENV{DEVTYPE}==\"usb_device\", ATTR{idVendor}==\"0483\", "
     "ATTR{idProduct}==\"df11\", ATTR{serial}==\"3267358B3133\", " ASSIGN "\n"},
    {"usb serial, path and DFU-mode ids",
     "{ type: usb, usb: \"1209:0001\", serial: S1, path: \"1-2.3\", dfu-usb: \"1209:0002\" }", 2,
     "# node n1: USB 1209:0001 serial S1 at port 1-2.3\n"
     "SUBSYSTEM==\"usb\", ENV{DEVTYPE}==\"usb_device\", ATTR{idVendor}==\"1209\", "
     "ATTR{idProduct}==\"0001\", ATTR{serial}==\"S1\", KERNEL==\"1-2.3\", " ASSIGN "\n"
     "# node n1 in DFU mode: USB 1209:0002 at port 1-2.3\n"
     "SUBSYSTEM==\"usb\", ENV{DEVTYPE}==\"usb_device\", ATTR{idVendor}==\"1209\", "
     "ATTR{idProduct}==\"0002\", KERNEL==\"1-2.3\", " ASSIGN "\n"},
    {"usb serial with a glob character", "{ type: usb, usb: \"0483:df11\", serial: \"A*\" }", 1,
     "# node n1: its serial or path has characters a rule cannot match literally; matching the "
     "ids alone\n"
     "# node n1: USB 0483:df11\n"
     "SUBSYSTEM==\"usb\", ENV{DEVTYPE}==\"usb_device\", ATTR{idVendor}==\"0483\", "
     "ATTR{idProduct}==\"df11\", " ASSIGN "\n"},
    {"USB-serial adapter with a serial", "{ type: uart, port: @ROOT@/dev/ttyUSB7 }", 1,
     "# node n1: @ROOT@/dev/ttyUSB7 (ttyUSB7), USB adapter 0403:6001 serial A10K5XYZ\n"
     "SUBSYSTEM==\"tty\", ATTRS{idVendor}==\"0403\", ATTRS{idProduct}==\"6001\", "
     "ATTRS{serial}==\"A10K5XYZ\", " ASSIGN "\n"},
    {"the same through its by-id link",
     "{ type: uart, port: @ROOT@/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A10K5XYZ-if00-port0 }",
     1,
     "# node n1: @ROOT@/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A10K5XYZ-if00-port0 (ttyUSB7), "
     "USB "
     "adapter 0403:6001 serial A10K5XYZ\n"
     "SUBSYSTEM==\"tty\", ATTRS{idVendor}==\"0403\", ATTRS{idProduct}==\"6001\", "
     "ATTRS{serial}==\"A10K5XYZ\", " ASSIGN "\n"},
    {"CDC-ACM without a serial", "{ type: uart, port: @ROOT@/dev/ttyACM2 }", 1,
     "# node n1: @ROOT@/dev/ttyACM2 (ttyACM2), USB adapter 2fe3:0100\n"
     "SUBSYSTEM==\"tty\", ATTRS{idVendor}==\"2fe3\", ATTRS{idProduct}==\"0100\", " ASSIGN "\n"},
    {"an adapter whose serial no rule may carry: by its kernel name",
     "{ type: uart, port: @ROOT@/dev/ttyUSB9 }", 1,
     "# node n1: @ROOT@/dev/ttyUSB9 (ttyUSB9), USB adapter 1a86:7523\n"
     "SUBSYSTEM==\"tty\", ATTRS{idVendor}==\"1a86\", ATTRS{idProduct}==\"7523\", " ASSIGN "\n"},
    {"on-board UART", "{ type: uart, port: @ROOT@/dev/ttymxc1 }", 1,
     "# node n1: @ROOT@/dev/ttymxc1 (ttymxc1)\n"
     "SUBSYSTEM==\"tty\", KERNEL==\"ttymxc1\", " ASSIGN "\n"},
    {"by-id name of an adapter not attached now",
     "{ type: uart, port: /dev/serial/by-id/usb-Silicon_Labs_CP2102_0001-if00-port0 }", 1,
     "# node n1: /dev/serial/by-id/usb-Silicon_Labs_CP2102_0001-if00-port0 (not attached now)\n"
     "SUBSYSTEM==\"tty\", ENV{ID_SERIAL}==\"Silicon_Labs_CP2102_0001\", " ASSIGN "\n"},
    {"a port that says nothing", "{ type: uart, port: /nonexistent/motor }", 0,
     "# node n1: /nonexistent/motor is not attached and its name does not say what it is: "
     "attach it and run gatewayd --udev-rules again, or write a rule by hand (README.udev)\n"},
};

/* in with every @ROOT@ replaced by the fake tree's root. */
static void subst(const char *in, char *out, size_t n)
{
        size_t used = 0;

        while (*in && used + 1 < n) {
                if (strncmp(in, "@ROOT@", 6) == 0) {
                        used += (size_t) snprintf(out + used, n - used, "%s", root);
                        in += 6;
                } else {
                        out[used++] = *in++;
                }
        }
        out[used < n ? used : n - 1] = '\0';
}

static void test_vectors(void **state)
{
        for (size_t i = 0; i < sizeof(vectors) / sizeof(vectors[0]); i++) {
                const struct vector *v = &vectors[i];
                char transport[1024], expected[4096], *got;
                int rules = -1;

                subst(v->transport, transport, sizeof(transport));
                subst(v->expected, expected, sizeof(expected));
                got = rules_for(transport, &rules);
                if (strcmp(got, expected) != 0 || rules != v->rules)
                        fail_msg("%s:\n got (%d rules)\n%s expected (%d rules)\n%s", v->name, rules,
                                 got, v->rules, expected);
                free(got);
        }
}

/* A kernel name glob characters would turn into a pattern: no rule. */
static void test_unsafe_name(void **state)
{
        char transport[PATH_MAX + 64], *got;
        int rules = -1;

        put("dev/tty*x", "");
        subst("{ type: uart, port: \"@ROOT@/dev/tty*x\" }", transport, sizeof(transport));
        got = rules_for(transport, &rules);
        assert_int_equal(rules, 0);
        assert_non_null(strstr(got, "a name no rule can match"));
        free(got);
}

/* A value from the configuration with a line break in it stays inside its comment: the text
 * after the break must not become a rule of its own. */
static void test_value_with_newline(void **state)
{
        char *got;
        int rules = -1;

        got = rules_for("{ type: usb, usb: \"zz\\nSUBSYSTEM==\\\"usb\\\", RUN+=\\\"/bin/x\\\"\" }",
                        &rules);
        assert_int_equal(rules, 0);
        assert_null(strstr(got, "RUN+="));
        assert_non_null(strstr(got, "cannot read usb: (a value with control characters)"));
        free(got);
        got = rules_for("{ type: uart, port: \"/dev/nothere\\nRUN+=\\\"/bin/x\\\"\" }", &rules);
        assert_int_equal(rules, 0);
        assert_null(strstr(got, "RUN+="));
        free(got);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_vectors),
            cmocka_unit_test(test_unsafe_name),
            cmocka_unit_test(test_value_with_newline),
        };

        return cmocka_run_group_tests_name("udev", tests, setup, teardown);
}
