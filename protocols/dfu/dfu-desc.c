/* Decoders for the DFU functional descriptor, GETSTATUS replies and the DfuSe memory layout
 * string. Every input comes from the device: each read is checked against its length, every
 * number against its range, and nothing is written to an out-parameter before it all parsed. */
#include <errno.h>
#include <stdbool.h>
#include <string.h>

#include "dfu-desc.h"

#define DESC_DFU_FUNCTIONAL 0x21
/* DFU 1.0 descriptors stop before bcdDFUVersion. */
#define FUNCTIONAL_LEN_MIN 7u
#define FUNCTIONAL_LEN     9u

int gw_dfu_parse_functional(const uint8_t *p, size_t n, struct gw_dfu_functional *ret)
{
        size_t off = 0;

        if (!p && n > 0)
                return -EINVAL;
        while (off < n) {
                size_t len;

                if (n - off < 2)
                        return -EBADMSG;
                len = p[off];
                if (len < 2 || len > n - off)
                        return -EBADMSG;
                if (p[off + 1] == DESC_DFU_FUNCTIONAL) {
                        const uint8_t *d = p + off;
                        struct gw_dfu_functional f;

                        if (len < FUNCTIONAL_LEN_MIN)
                                return -EBADMSG;
                        f.attributes = d[2];
                        f.detach_timeout_ms = (uint16_t) (d[3] | d[4] << 8);
                        f.transfer_size = (uint16_t) (d[5] | d[6] << 8);
                        f.bcd_dfu = len >= FUNCTIONAL_LEN ? (uint16_t) (d[7] | d[8] << 8) : 0x0100;
                        if (f.transfer_size == 0)
                                return -EBADMSG;
                        *ret = f;
                        return 0;
                }
                off += len;
        }
        return -ENOENT;
}

int gw_dfu_parse_status(const uint8_t *p, size_t n, struct gw_dfu_status *ret)
{
        struct gw_dfu_status s;

        if (!p || n < GW_DFU_STATUS_LEN)
                return -EBADMSG;
        s.status = p[0];
        s.poll_timeout_ms = (uint32_t) p[1] | (uint32_t) p[2] << 8 | (uint32_t) p[3] << 16;
        s.state = p[4];
        s.istring = p[5];
        if (s.status > GW_DFU_STATUS_MAX || s.state >= _GW_DFU_DEV_STATE_MAX)
                return -EBADMSG;
        *ret = s;
        return 0;
}

static const char *const dev_state_names[_GW_DFU_DEV_STATE_MAX] = {
    [GW_DFU_APP_IDLE] = "appIDLE",
    [GW_DFU_APP_DETACH] = "appDETACH",
    [GW_DFU_IDLE] = "dfuIDLE",
    [GW_DFU_DNLOAD_SYNC] = "dfuDNLOAD_SYNC",
    [GW_DFU_DNBUSY] = "dfuDNBUSY",
    [GW_DFU_DNLOAD_IDLE] = "dfuDNLOAD_IDLE",
    [GW_DFU_MANIFEST_SYNC] = "dfuMANIFEST_SYNC",
    [GW_DFU_MANIFEST] = "dfuMANIFEST",
    [GW_DFU_MANIFEST_WAIT_RESET] = "dfuMANIFEST_WAIT_RESET",
    [GW_DFU_UPLOAD_IDLE] = "dfuUPLOAD_IDLE",
    [GW_DFU_ERROR] = "dfuERROR",
};

const char *gw_dfu_dev_state_to_string(unsigned s)
{
        if (s >= _GW_DFU_DEV_STATE_MAX)
                return NULL;
        return dev_state_names[s];
}

/* Every status: its name in the specification, what it means, and the errno it maps to. */
static const struct {
        const char *name;
        const char *message;
        int err;
} statuses[GW_DFU_STATUS_MAX + 1] = {
    {"OK", "no error", 0},
    {"errTARGET", "the image is not meant for this device", -ENOEXEC},
    {"errFILE", "the image failed the device's own verification", -EBADMSG},
    {"errWRITE", "the device cannot write to its memory", -EIO},
    {"errERASE", "erasing memory failed", -EIO},
    {"errCHECK_ERASED", "memory was not blank after erasing", -EIO},
    {"errPROG", "programming memory failed", -EIO},
    {"errVERIFY", "programmed memory failed verification", -EIO},
    {"errADDRESS", "an address is outside the device's memory", -EFAULT},
    {"errNOTDONE", "the device does not think it has all of the image yet", -ENODATA},
    {"errFIRMWARE", "the device's firmware is corrupt and cannot run", -ENOEXEC},
    {"errVENDOR", "vendor-specific error", -EREMOTEIO},
    {"errUSBR", "the device saw an unexpected USB reset", -ECONNRESET},
    {"errPOR", "the device saw an unexpected power-on reset", -ECONNRESET},
    {"errUNKNOWN", "the device failed and does not know why", -EREMOTEIO},
    {"errSTALLEDPKT", "the device stalled an unexpected request", -EPROTO},
};

const char *gw_dfu_status_to_string(unsigned s)
{
        return s <= GW_DFU_STATUS_MAX ? statuses[s].name : NULL;
}

const char *gw_dfu_status_to_message(unsigned s)
{
        return s <= GW_DFU_STATUS_MAX ? statuses[s].message : NULL;
}

int gw_dfu_status_to_errno(unsigned s)
{
        if (s == GW_DFU_STATUS_OK || s > GW_DFU_STATUS_MAX)
                return -EPROTO;
        return statuses[s].err;
}

/* Reads a decimal number of at most 9 digits at *p. */
static bool parse_dec(const char **p, uint32_t *ret)
{
        uint32_t v = 0;
        int digits = 0;

        while (**p >= '0' && **p <= '9') {
                if (++digits > 9)
                        return false;
                v = v * 10 + (uint32_t) (**p - '0');
                (*p)++;
        }
        if (digits == 0)
                return false;
        *ret = v;
        return true;
}

/* Reads "0x" and 1 to 8 hex digits at *p. */
static bool parse_hex32(const char **p, uint32_t *ret)
{
        uint32_t v = 0;
        int digits = 0;

        if ((*p)[0] != '0' || ((*p)[1] != 'x' && (*p)[1] != 'X'))
                return false;
        *p += 2;
        for (;;) {
                char c = **p;
                uint32_t d;

                if (c >= '0' && c <= '9')
                        d = (uint32_t) (c - '0');
                else if (c >= 'a' && c <= 'f')
                        d = (uint32_t) (c - 'a' + 10);
                else if (c >= 'A' && c <= 'F')
                        d = (uint32_t) (c - 'A' + 10);
                else
                        break;
                if (++digits > 8)
                        return false;
                v = v << 4 | d;
                (*p)++;
        }
        if (digits == 0)
                return false;
        *ret = v;
        return true;
}

int gw_dfuse_parse_layout(const char *s, struct gw_dfuse_layout *ret)
{
        struct gw_dfuse_layout l;
        const char *p, *slash;
        size_t name_len;

        if (!s || s[0] != '@')
                return -EBADMSG;
        memset(&l, 0, sizeof(l));
        slash = strchr(s, '/');
        if (!slash)
                return -EBADMSG;
        name_len = (size_t) (slash - (s + 1));
        while (name_len > 0 && (s[name_len] == ' ' || s[name_len] == '\t'))
                name_len--;
        if (name_len > GW_DFUSE_NAME_MAX)
                name_len = GW_DFUSE_NAME_MAX;
        memcpy(l.name, s + 1, name_len);

        p = slash;
        /* Each region: "/0xADDR/" then groups separated by ',', ended by '/' or the end. */
        while (*p == '/') {
                uint64_t addr;
                uint32_t a;

                p++;
                if (*p == '\0')
                        break; /* a trailing '/' */
                if (!parse_hex32(&p, &a) || *p != '/')
                        return -EBADMSG;
                p++;
                addr = a;
                for (;;) {
                        uint32_t count, size, mult;
                        uint64_t bytes;
                        char unit, type;

                        if (!parse_dec(&p, &count) || *p != '*')
                                return -EBADMSG;
                        p++;
                        if (!parse_dec(&p, &size))
                                return -EBADMSG;
                        unit = *p;
                        if (unit == '\0')
                                return -EBADMSG;
                        p++;
                        type = *p;
                        if (type == '\0')
                                return -EBADMSG;
                        p++;
                        if (unit == ' ' || unit == 'B')
                                mult = 1;
                        else if (unit == 'K')
                                mult = 1024;
                        else if (unit == 'M')
                                mult = 1024 * 1024;
                        else
                                return -EBADMSG;
                        if (type < 'a' || type > 'g')
                                return -EBADMSG;
                        if (count == 0 || size == 0)
                                return -EBADMSG;
                        bytes = (uint64_t) size * mult;
                        if (bytes > UINT32_MAX || addr + (uint64_t) count * bytes > 1ull << 32)
                                return -EBADMSG;
                        if (l.n >= GW_DFUSE_SEGMENTS_MAX)
                                return -EBADMSG;
                        l.seg[l.n++] = (struct gw_dfuse_segment){
                            .start = (uint32_t) addr,
                            .page_size = (uint32_t) bytes,
                            .pages = count,
                            .type = (uint8_t) (type - 0x60),
                        };
                        addr += (uint64_t) count * bytes;
                        if (*p != ',')
                                break;
                        p++;
                }
        }
        if (*p != '\0' || l.n == 0)
                return -EBADMSG;
        *ret = l;
        return 0;
}

const struct gw_dfuse_segment *gw_dfuse_find_page(const struct gw_dfuse_layout *l, uint32_t addr,
                                                  uint64_t *ret_page_start, uint64_t *ret_page_end)
{
        for (size_t i = 0; i < l->n && i < GW_DFUSE_SEGMENTS_MAX; i++) {
                const struct gw_dfuse_segment *g = &l->seg[i];
                uint64_t end = (uint64_t) g->start + (uint64_t) g->pages * g->page_size;
                uint64_t start;

                if (addr < g->start || addr >= end)
                        continue;
                start = g->start + (addr - g->start) / g->page_size * (uint64_t) g->page_size;
                if (ret_page_start)
                        *ret_page_start = start;
                if (ret_page_end)
                        *ret_page_end = start + g->page_size;
                return g;
        }
        return NULL;
}

/* Checks that [addr, addr + size) lies in segments with all of the type bits. */
static int check_type(const struct gw_dfuse_layout *l, uint32_t addr, uint64_t size, uint8_t type,
                      uint64_t *ret_bad)
{
        uint64_t a = addr, end = size > UINT64_MAX - addr ? UINT64_MAX : (uint64_t) addr + size;

        /* Walk page by page would be slow for big images; jump to each segment's end. */
        while (a < end) {
                const struct gw_dfuse_segment *g = NULL;
                uint64_t g_end = 0;

                if (a > UINT32_MAX)
                        break;
                for (size_t i = 0; i < l->n && i < GW_DFUSE_SEGMENTS_MAX; i++) {
                        uint64_t e = (uint64_t) l->seg[i].start +
                                     (uint64_t) l->seg[i].pages * l->seg[i].page_size;

                        if (a >= l->seg[i].start && a < e && (l->seg[i].type & type) == type) {
                                g = &l->seg[i];
                                g_end = e;
                                break;
                        }
                }
                if (!g)
                        break;
                a = g_end;
        }
        if (a < end) {
                if (ret_bad)
                        *ret_bad = a;
                return -ENOSPC;
        }
        return 0;
}

static int first_type(const struct gw_dfuse_layout *l, uint8_t type, uint32_t *ret)
{
        for (size_t i = 0; i < l->n && i < GW_DFUSE_SEGMENTS_MAX; i++)
                if ((l->seg[i].type & type) == type) {
                        *ret = l->seg[i].start;
                        return 0;
                }
        return -ENOENT;
}

int gw_dfuse_check_writable(const struct gw_dfuse_layout *l, uint32_t addr, uint64_t size,
                            uint64_t *ret_bad)
{
        return check_type(l, addr, size, GW_DFUSE_WRITABLE, ret_bad);
}

int gw_dfuse_check_readable(const struct gw_dfuse_layout *l, uint32_t addr, uint64_t size,
                            uint64_t *ret_bad)
{
        return check_type(l, addr, size, GW_DFUSE_READABLE, ret_bad);
}

int gw_dfuse_first_writable(const struct gw_dfuse_layout *l, uint32_t *ret)
{
        return first_type(l, GW_DFUSE_WRITABLE, ret);
}

int gw_dfuse_first_readable(const struct gw_dfuse_layout *l, uint32_t *ret)
{
        return first_type(l, GW_DFUSE_READABLE, ret);
}
