/* Per-node checks the daemon runs once a protocol's identify() has said what a node is and
 * runs: version ordering for anti-downgrade, and an image's hardware map against what the
 * node reports. Pure functions over strings; no I/O. */
#include <errno.h>
#include <stdbool.h>
#include <string.h>

#include "gw/options.h"
#include "manifest-internal.h"

static bool is_digit(char c)
{
        return c >= '0' && c <= '9';
}

/* A leading "v" or "V" before a digit is decoration ("v1.4.2" is 1.4.2). */
static const char *skip_v(const char *s)
{
        if ((s[0] == 'v' || s[0] == 'V') && is_digit(s[1]))
                return s + 1;
        return s;
}

/* Length of the release part, the pre-release part after it ('-' ... up to '+' or the end),
 * and where it starts. Build metadata after '+' is ignored, as in semver. */
static void split_version(const char *s, size_t *ret_main, const char **ret_pre,
                          size_t *ret_pre_len)
{
        size_t n = strcspn(s, "-+");

        *ret_main = n;
        if (s[n] == '-') {
                *ret_pre = s + n + 1;
                *ret_pre_len = strcspn(s + n + 1, "+");
        } else {
                *ret_pre = NULL;
                *ret_pre_len = 0;
        }
}

/* Digit runs compare by value without overflow: leading zeros dropped, then the longer run
 * is larger, then bytewise. */
static int cmp_number(const char *a, size_t an, const char *b, size_t bn)
{
        int c;

        while (an > 1 && *a == '0') {
                a++;
                an--;
        }
        while (bn > 1 && *b == '0') {
                b++;
                bn--;
        }
        if (an != bn)
                return an < bn ? -1 : 1;
        c = memcmp(a, b, an);
        return c < 0 ? -1 : c > 0;
}

/* One component ("4", "rc10", "beta"): runs of digits compare numerically, other runs
 * bytewise, a digit run sorts before a non-digit run, and a component that is a prefix of the
 * other sorts first ("rc" < "rc1" < "rc2" < "rc10"). */
static int cmp_component(const char *a, size_t an, const char *b, size_t bn)
{
        size_t i = 0, j = 0;

        while (i < an && j < bn) {
                bool da = is_digit(a[i]), db = is_digit(b[j]);
                size_t ri = i, rj = j;
                int c;

                if (da != db)
                        return da ? -1 : 1;
                while (ri < an && is_digit(a[ri]) == da)
                        ri++;
                while (rj < bn && is_digit(b[rj]) == db)
                        rj++;
                if (da)
                        c = cmp_number(a + i, ri - i, b + j, rj - j);
                else {
                        size_t n = ri - i < rj - j ? ri - i : rj - j;

                        c = memcmp(a + i, b + j, n);
                        c = c < 0 ? -1 : c > 0;
                        if (c == 0 && ri - i != rj - j)
                                c = ri - i < rj - j ? -1 : 1;
                }
                if (c != 0)
                        return c;
                i = ri;
                j = rj;
        }
        if (i < an || j < bn)
                return i < an ? 1 : -1;
        return 0;
}

/* Dot-separated lists. With pad, a missing component counts as "0" (release part: 1.4 equals
 * 1.4.0); without, the shorter list sorts first (pre-release part: rc < rc.1). */
static int cmp_dotted(const char *a, size_t an, const char *b, size_t bn, bool pad)
{
        size_t i = 0, j = 0;

        while (i < an || j < bn) {
                const char *ca, *cb;
                size_t la, lb;
                int c;

                if (!pad && (i >= an || j >= bn))
                        return i >= an ? (j >= bn ? 0 : -1) : 1;
                ca = i < an ? a + i : "0";
                la = i < an ? strcspn(a + i, ".") : 1;
                if (i < an && la > an - i)
                        la = an - i;
                cb = j < bn ? b + j : "0";
                lb = j < bn ? strcspn(b + j, ".") : 1;
                if (j < bn && lb > bn - j)
                        lb = bn - j;
                c = cmp_component(ca, la, cb, lb);
                if (c != 0)
                        return c;
                i = i < an ? i + la + 1 : an;
                j = j < bn ? j + lb + 1 : bn;
        }
        return 0;
}

int gw_version_compare(const char *a, const char *b)
{
        const char *pa, *pb;
        size_t ma, mb, pla, plb;
        int c;

        if (!a || !b)
                return a == b ? 0 : a ? 1 : -1;
        a = skip_v(a);
        b = skip_v(b);
        split_version(a, &ma, &pa, &pla);
        split_version(b, &mb, &pb, &plb);
        c = cmp_dotted(a, ma, b, mb, true);
        if (c != 0)
                return c;
        /* Same release: a pre-release sorts before the release itself. */
        if (!pa || !pb)
                return pa == pb ? 0 : pa ? -1 : 1;
        return cmp_dotted(pa, pla, pb, plb, false);
}

int gw_manifest_check_downgrade(const struct gw_manifest *m, const struct gw_manifest_image *img,
                                const char *installed_version, struct gw_manifest_error *err)
{
        if (!m || !img)
                return -EINVAL;
        /* A node that cannot say what it runs cannot be downgraded knowingly. */
        if (!installed_version || !installed_version[0])
                return 0;
        if (m->policy.allow_downgrade)
                return 0;
        if (gw_version_compare(img->version, installed_version) < 0)
                return gw_manifest_fail(err, GW_ERR_DOWNGRADE,
                                        "image %s version %s is older than the installed %s "
                                        "and policy.allow-downgrade is false",
                                        img->name, img->version, installed_version);
        return 0;
}

/* Equal as numbers when both parse as unsigned integers (decimal or 0x hex), else as bytes. */
static bool hw_value_equal(const char *want, const char *have)
{
        uint64_t x, y;

        if (gw_parse_u64(want, &x) == 0 && gw_parse_u64(have, &y) == 0)
                return x == y;
        return strcmp(want, have) == 0;
}

int gw_manifest_check_hardware(const struct gw_manifest_image *img,
                               const struct gw_options *reported, struct gw_manifest_error *err)
{
        if (!img)
                return -EINVAL;
        for (size_t i = 0; i < img->n_hardware; i++) {
                const struct gw_manifest_hw *hw = &img->hardware[i];
                const char *have = gw_options_get(reported, hw->key);

                if (!have)
                        return gw_manifest_fail(err, GW_ERR_NODE_INCOMPATIBLE,
                                                "image %s needs hardware %s %s, the node does "
                                                "not report %s",
                                                img->name, hw->key, hw->value, hw->key);
                if (!hw_value_equal(hw->value, have))
                        return gw_manifest_fail(err, GW_ERR_NODE_INCOMPATIBLE,
                                                "image %s needs hardware %s %s, the node "
                                                "reports %s",
                                                img->name, hw->key, hw->value, have);
        }
        return 0;
}
