/* Fuzz target for the MCUboot image parser of the smp plugin (protocols/smp/mcuboot-image.c):
 * the input is the image file. A parsed image must describe only bytes inside the file, and the
 * protocol's check_image() and installed() must agree with the parser: an image the parser
 * refuses is refused, one whose hash TLV does not match its contents too, and installed() says
 * yes only for a confirmed running image with the TLV's hash. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gw/options.h"
#include "gw/plugin.h"
#include "gw/registry.h"

#include "../../protocols/smp/mcuboot-image.h"
#include "fuzz.h"

struct mem {
        const uint8_t *data;
        size_t size;
};

static ssize_t mem_pread(void *ctx, void *buf, size_t n, uint64_t off)
{
        struct mem *m = ctx;

        fuzz_check(off <= m->size);
        if (n > m->size - off)
                n = m->size - (size_t) off;
        memcpy(buf, m->data + off, n);
        return (ssize_t) n;
}

__attribute__((format(printf, 3, 0))) static void logv(void *ctx, int level, const char *fmt,
                                                       va_list ap)
{
        char buf[512];

        vsnprintf(buf, sizeof(buf), fmt, ap);
}

static uint64_t now_ms(void *ctx)
{
        return 1000;
}

static void set_deadline(void *ctx, uint64_t at)
{
        fuzz_check(!"check_image and installed must not touch the timer");
}

static int write_nothing(void *ctx, const void *buf, size_t n)
{
        fuzz_check(!"check_image and installed must not write");
        return 0;
}

__attribute__((format(printf, 2, 3))) static void set_error(void *ctx, const char *fmt, ...)
{
        char buf[512];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(buf, sizeof(buf), fmt, ap);
        va_end(ap);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        static const struct gw_protocol_ops *ops;
        struct mem m = {.data = data, .size = size};
        struct gw_reader reader = {.size = size, .ctx = &m, .pread = mem_pread};
        struct gw_proto_host host = {.version = GW_PROTO_HOST_VERSION,
                                     .logv = logv,
                                     .now_ms = now_ms,
                                     .set_deadline = set_deadline,
                                     .write = write_nothing,
                                     .set_error = set_error};
        struct gw_mcuboot_image img;
        uint8_t hash[GW_MCUBOOT_HASH_LEN], sha[GW_MCUBOOT_HASH_LEN];
        char why[256], ver[GW_MCUBOOT_VERSION_MAX], hex[65];
        struct gw_options *opts, *facts;
        void *priv;
        int parsed, r;
        bool valid = false;

        if (!ops)
                ops = gw_protocol_find("smp");
        fuzz_check(ops != NULL);
        parsed = gw_mcuboot_parse(&reader, &img, why, sizeof(why));
        fuzz_check(parsed == 0 || parsed == -EBADMSG);
        if (parsed == 0) {
                fuzz_check(img.hdr_size >= GW_MCUBOOT_HEADER_SIZE);
                fuzz_check(img.hashed <= img.tlv_end && img.tlv_end <= size);
                fuzz_check(img.n_tlvs >= 1 && img.n_tlvs <= GW_MCUBOOT_TLVS_MAX);
                gw_mcuboot_version_string(&img, ver, sizeof(ver));
                fuzz_check(strlen(ver) >= 5 && strlen(ver) < sizeof(ver));
                fuzz_check(gw_mcuboot_digest(&reader, &img, hash, sha) == 0);
                valid = memcmp(hash, img.hash, sizeof(hash)) == 0;
        } else {
                fuzz_check(why[0] != '\0');
        }

        opts = gw_options_new();
        facts = gw_options_new();
        fuzz_check(opts && facts);
        priv = calloc(1, ops->priv_size);
        fuzz_check(priv != NULL);
        fuzz_check(ops->init(priv, opts, &host) == 0);
        r = ops->check_image(priv, &reader, NULL);
        fuzz_check(valid ? r == 0 : r == -EBADMSG);
        ops->done(priv);
        memset(priv, 0, ops->priv_size);
        fuzz_check(ops->init(priv, opts, &host) == 0);
        if (parsed == 0) {
                for (int i = 0; i < 32; i++)
                        snprintf(hex + 2 * i, 3, "%02x", img.hash[i]);
                gw_options_set(facts, "hash", hex);
                gw_options_set(facts, "confirmed", "true");
                fuzz_check(ops->installed(priv, &reader, facts) == 1);
                gw_options_set(facts, "confirmed", "false");
                fuzz_check(ops->installed(priv, &reader, facts) == 0);
        } else {
                fuzz_check(ops->installed(priv, &reader, facts) == 0);
        }
        ops->done(priv);
        free(priv);
        gw_options_free(opts);
        gw_options_free(facts);
        return 0;
}
