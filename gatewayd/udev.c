/* gatewayd --udev-rules: from the configuration's nodes to udev rules giving group gatewayd their
 * device nodes. A USB node is matched by its ids (and serial and port when the configuration
 * pins them); a serial port by the USB adapter behind it as sysfs shows it now, else by the
 * kernel name or the ID_SERIAL of its /dev/serial/by-id/ name. */
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "udev.h"

#define ASSIGN "GROUP=\"gatewayd\", MODE=\"0660\", TAG+=\"gatewayd\""
/* sysfs attribute values we read: ids and serial numbers. */
#define ATTR_MAX 128

/* A value that can stand in a rule as it is: printable, no quote, backslash or glob character. */
static bool rule_safe(const char *s)
{
        if (!s || !*s || strlen(s) > 255)
                return false;
        for (; *s; s++)
                if (*s < 0x20 || *s > 0x7e || strchr("\"\\*?[]|", *s))
                        return false;
        return true;
}

/* s as it may stand in a comment line: printable, or a placeholder (a newline in a value from
 * the configuration must not end the comment and start a rule). */
static const char *shown(const char *s)
{
        for (const char *p = s; p && *p; p++)
                if ((unsigned char) *p < 0x20 || *p == 0x7f)
                        return "(a value with control characters)";
        return s ? s : "";
}

static int parse_ids(const char *s, size_t len, unsigned *vid, unsigned *pid)
{
        char buf[16], *colon, *end;
        unsigned long v, p;

        if (len == 0 || len >= sizeof(buf))
                return -EINVAL;
        memcpy(buf, s, len);
        buf[len] = '\0';
        colon = strchr(buf, ':');
        if (!colon || colon == buf || colon - buf > 4 || strlen(colon + 1) < 1 ||
            strlen(colon + 1) > 4)
                return -EINVAL;
        *colon = '\0';
        v = strtoul(buf, &end, 16);
        if (*end)
                return -EINVAL;
        p = strtoul(colon + 1, &end, 16);
        if (*end)
                return -EINVAL;
        *vid = (unsigned) v;
        *pid = (unsigned) p;
        return 0;
}

/* The value of key= among the ,key=value parts after the ids in a "usb" option, into buf. */
static bool usb_part(const char *usb, const char *key, char *buf, size_t n)
{
        size_t klen = strlen(key);

        for (const char *p = strchr(usb, ','); p; p = strchr(p + 1, ',')) {
                const char *v = p + 1, *e = strchr(v, ',');
                size_t len = e ? (size_t) (e - v) : strlen(v);

                if (len > klen && strncmp(v, key, klen) == 0 && v[klen] == '=') {
                        snprintf(buf, n, "%.*s", (int) (len - klen - 1), v + klen + 1);
                        return true;
                }
        }
        return false;
}

static int usb_rules(const struct gw_node_config *n, FILE *out)
{
        const char *usb = gw_options_get(n->transport_opts, "usb");
        const char *dfu = gw_options_get(n->transport_opts, "dfu-usb");
        char serial[256] = "", path[256] = "";
        unsigned vid, pid;
        int rules = 0;

        if (parse_ids(usb, strcspn(usb, ","), &vid, &pid) < 0) {
                fprintf(out, "# node %s: cannot read usb: %s; see README.udev\n", n->name,
                        shown(usb));
                return 0;
        }
        usb_part(usb, "serial", serial, sizeof(serial));
        usb_part(usb, "path", path, sizeof(path));
        if (gw_options_get(n->transport_opts, "serial"))
                snprintf(serial, sizeof(serial), "%s", gw_options_get(n->transport_opts, "serial"));
        if (gw_options_get(n->transport_opts, "path"))
                snprintf(path, sizeof(path), "%s", gw_options_get(n->transport_opts, "path"));
        if ((serial[0] && !rule_safe(serial)) || (path[0] && !rule_safe(path))) {
                fprintf(out,
                        "# node %s: its serial or path has characters a rule cannot match "
                        "literally; matching the ids alone\n",
                        n->name);
                serial[0] = path[0] = '\0';
        }
        fprintf(out, "# node %s: USB %04x:%04x%s%s%s%s\n", n->name, vid, pid,
                serial[0] ? " serial " : "", serial, path[0] ? " at port " : "", path);
        fprintf(out,
                "SUBSYSTEM==\"usb\", ENV{DEVTYPE}==\"usb_device\", ATTR{idVendor}==\"%04x\", "
                "ATTR{idProduct}==\"%04x\"",
                vid, pid);
        if (serial[0])
                fprintf(out, ", ATTR{serial}==\"%s\"", serial);
        if (path[0])
                fprintf(out, ", KERNEL==\"%s\"", path);
        fprintf(out, ", " ASSIGN "\n");
        rules++;
        if (dfu) {
                unsigned dvid, dpid;

                if (parse_ids(dfu, strlen(dfu), &dvid, &dpid) < 0) {
                        fprintf(out, "# node %s: cannot read dfu-usb: %s\n", n->name, shown(dfu));
                        return rules;
                }
                /* In DFU mode a board may report another serial: not compared. */
                fprintf(out, "# node %s in DFU mode: USB %04x:%04x%s%s\n", n->name, dvid, dpid,
                        path[0] ? " at port " : "", path);
                fprintf(out,
                        "SUBSYSTEM==\"usb\", ENV{DEVTYPE}==\"usb_device\", "
                        "ATTR{idVendor}==\"%04x\", ATTR{idProduct}==\"%04x\"",
                        dvid, dpid);
                if (path[0])
                        fprintf(out, ", KERNEL==\"%s\"", path);
                fprintf(out, ", " ASSIGN "\n");
                rules++;
        }
        return rules;
}

/* One sysfs attribute, trimmed; false when absent or unusable in a rule. */
static bool read_attr(const char *dir, const char *name, char *buf, size_t n)
{
        char path[PATH_MAX];
        FILE *f;
        size_t len;

        if (snprintf(path, sizeof(path), "%s/%s", dir, name) >= (int) sizeof(path))
                return false;
        f = fopen(path, "re");
        if (!f)
                return false;
        len = fread(buf, 1, n - 1, f);
        fclose(f);
        buf[len] = '\0';
        buf[strcspn(buf, "\n")] = '\0';
        return rule_safe(buf);
}

/* The USB device a tty hangs off, from <sysfs>/class/tty/<name>/device upwards: its directory
 * into buf. false when the tty is not on USB (or sysfs does not know it). */
static bool tty_usb_parent(const char *sysfs, const char *name, char *buf, size_t n)
{
        char path[PATH_MAX], *dev, *slash, root[PATH_MAX];
        struct stat st;

        if (snprintf(path, sizeof(path), "%s/class/tty/%s/device", sysfs, name) >=
                (int) sizeof(path) ||
            !realpath(sysfs, root))
                return false;
        dev = realpath(path, NULL);
        if (!dev)
                return false;
        for (;;) {
                if (snprintf(path, sizeof(path), "%s/idVendor", dev) < (int) sizeof(path) &&
                    stat(path, &st) == 0) {
                        snprintf(buf, n, "%s", dev);
                        free(dev);
                        return true;
                }
                slash = strrchr(dev, '/');
                if (!slash || (size_t) (slash - dev) <= strlen(root))
                        break;
                *slash = '\0';
        }
        free(dev);
        return false;
}

static int port_rules(const struct gw_node_config *n, const char *port, const char *sysfs,
                      FILE *out)
{
        static const char by_id[] = "/dev/serial/by-id/usb-";
        char *real = realpath(port, NULL), name[NAME_MAX + 1], usb[PATH_MAX];
        char vid[ATTR_MAX], pid[ATTR_MAX], serial[ATTR_MAX];

        if (real) {
                const char *base = strrchr(real, '/') ? strrchr(real, '/') + 1 : real;

                if (strncmp(real, "/dev/pts/", 9) == 0) {
                        fprintf(out,
                                "# node %s: %s is a pseudo-terminal (%s): udev does not manage "
                                "it; give it to group gatewayd where it is made\n",
                                n->name, shown(port), real);
                        free(real);
                        return 0;
                }
                snprintf(name, sizeof(name), "%s", base);
                free(real);
                if (!rule_safe(name)) {
                        fprintf(out, "# node %s: %s: a name no rule can match\n", n->name,
                                shown(port));
                        return 0;
                }
                if (tty_usb_parent(sysfs, name, usb, sizeof(usb)) &&
                    read_attr(usb, "idVendor", vid, sizeof(vid)) &&
                    read_attr(usb, "idProduct", pid, sizeof(pid))) {
                        bool has_serial = read_attr(usb, "serial", serial, sizeof(serial));

                        fprintf(out, "# node %s: %s (%s), USB adapter %s:%s%s%s\n", n->name,
                                shown(port), name, vid, pid, has_serial ? " serial " : "",
                                has_serial ? serial : "");
                        fprintf(out,
                                "SUBSYSTEM==\"tty\", ATTRS{idVendor}==\"%s\", "
                                "ATTRS{idProduct}==\"%s\"",
                                vid, pid);
                        if (has_serial)
                                fprintf(out, ", ATTRS{serial}==\"%s\"", serial);
                        fprintf(out, ", " ASSIGN "\n");
                        return 1;
                }
                fprintf(out, "# node %s: %s (%s)\n", n->name, shown(port), name);
                fprintf(out, "SUBSYSTEM==\"tty\", KERNEL==\"%s\", " ASSIGN "\n", name);
                return 1;
        }
        /* Not there now: what its name says. */
        if (strncmp(port, by_id, sizeof(by_id) - 1) == 0) {
                const char *id = port + sizeof(by_id) - 1, *end = strstr(id, "-if");
                char serial_id[256];

                for (const char *p = end; p; p = strstr(p + 1, "-if"))
                        end = p;
                if (end && (size_t) (end - id) < sizeof(serial_id)) {
                        snprintf(serial_id, sizeof(serial_id), "%.*s", (int) (end - id), id);
                        if (rule_safe(serial_id)) {
                                fprintf(out, "# node %s: %s (not attached now)\n", n->name,
                                        shown(port));
                                fprintf(out,
                                        "SUBSYSTEM==\"tty\", ENV{ID_SERIAL}==\"%s\", " ASSIGN "\n",
                                        serial_id);
                                return 1;
                        }
                }
        } else if (strncmp(port, "/dev/tty", 8) == 0 && !strchr(port + 5, '/') &&
                   rule_safe(port + 5)) {
                fprintf(out, "# node %s: %s (not attached now)\n", n->name, shown(port));
                fprintf(out, "SUBSYSTEM==\"tty\", KERNEL==\"%s\", " ASSIGN "\n", port + 5);
                return 1;
        }
        fprintf(out,
                "# node %s: %s is not attached and its name does not say what it is: attach it "
                "and run gatewayd --udev-rules again, or write a rule by hand (README.udev)\n",
                n->name, shown(port));
        return 0;
}

int gw_udev_rules_write(const struct gw_config *cfg, const char *sysfs, FILE *out)
{
        int rules = 0;

        fprintf(out,
                "# Made by gatewayd --udev-rules from %s: the device nodes of its nodes belong to\n"
                "# group gatewayd. Install as %s, then run:\n"
                "#   udevadm control --reload && udevadm trigger\n",
                cfg->path, GW_UDEV_LOCAL_RULES);
        fprintf(out, "ACTION==\"remove\", GOTO=\"gatewayd_nodes_end\"\n");
        for (size_t i = 0; i < cfg->n_nodes; i++) {
                const struct gw_node_config *n = &cfg->nodes[i];
                const char *port = gw_options_get(n->transport_opts, "port");

                if (gw_options_get(n->transport_opts, "usb"))
                        rules += usb_rules(n, out);
                else if (port && port[0] == '/')
                        rules += port_rules(n, port, sysfs, out);
                else
                        fprintf(out, "# node %s: transport %s opens no device node\n", n->name,
                                n->transport);
        }
        fprintf(out, "LABEL=\"gatewayd_nodes_end\"\n");
        if (fflush(out) != 0 || ferror(out))
                return -EIO;
        return rules;
}
