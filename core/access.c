/* Turns a transport's -EACCES into the device node it was about and what to do about it: the
 * node's owner, group and mode beside who we run as, and the udev rules that fix it. */
#include <errno.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gw-config.h"
#include "gw/access.h"
#include "gw/options.h"

struct denied {
        const struct gw_transport_ops *t;
        const struct gw_options *opts;
        char *buf;
        size_t n;
        bool found;
};

static int denied_one(const struct gw_link_info *info, void *userdata)
{
        struct denied *d = userdata;

        if (d->found || info->error != -EACCES || !info->node || d->t->claims(d->opts, info) < 1)
                return 0;
        snprintf(d->buf, d->n, "%s", info->node);
        d->found = true;
        return 0;
}

int gw_access_denied_node(const struct gw_transport_ops *t, const struct gw_options *opts,
                          char *buf, size_t n)
{
        const char *port = gw_options_get(opts, "port");
        char *real;

        if (n == 0)
                return -EINVAL;
        if (t && t->version >= 3 && t->enumerate && t->claims) {
                struct denied d = {.t = t, .opts = opts, .buf = buf, .n = n};

                (void) t->enumerate(NULL, denied_one, &d);
                if (d.found)
                        return 0;
        }
        if (!port || port[0] != '/')
                return -ENOENT;
        /* /dev/serial/by-id/... names the board; the rule and the mode are on the node. */
        real = realpath(port, NULL);
        snprintf(buf, n, "%s", real ? real : port);
        free(real);
        return 0;
}

static void user_name(uid_t uid, char *buf, size_t n)
{
        const struct passwd *pw = getpwuid(uid);

        if (pw)
                snprintf(buf, n, "%s", pw->pw_name);
        else
                snprintf(buf, n, "uid %u", (unsigned) uid);
}

static void group_name(gid_t gid, char *buf, size_t n)
{
        const struct group *gr = getgrgid(gid);

        if (gr)
                snprintf(buf, n, "%s", gr->gr_name);
        else
                snprintf(buf, n, "gid %u", (unsigned) gid);
}

void gw_access_explain(const struct gw_transport_ops *t, const struct gw_options *opts, char *buf,
                       size_t n)
{
        static const char fix[] = "add the device to the gatewayd group: see " GW_DOC_DIR
                                  "/README.udev, or run: sudo udevadm trigger after installing "
                                  "" GW_UDEV_RULES_FILE;
        char node[PATH_MAX], owner[64], group[64], me[64];
        struct stat st;

        if (n == 0)
                return;
        if (gw_access_denied_node(t, opts, node, sizeof(node)) < 0) {
                snprintf(buf, n, "permission denied on the device node: %s", fix);
                return;
        }
        user_name(geteuid(), me, sizeof(me));
        if (stat(node, &st) < 0) {
                snprintf(buf, n, "permission denied on %s (this process runs as %s): %s", node, me,
                         fix);
                return;
        }
        user_name(st.st_uid, owner, sizeof(owner));
        group_name(st.st_gid, group, sizeof(group));
        snprintf(buf, n,
                 "permission denied on %s (owner %s, group %s, mode %04o; this process runs as "
                 "%s): %s",
                 node, owner, group, (unsigned) (st.st_mode & 07777), me, fix);
}
