/* The MCUboot image parser of the smp plugin (see mcuboot-image.h). An image is untrusted input
 * until check_image() passed it: every size is checked against the reader's size before it is
 * used, and the TLVs walked are counted. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <openssl/evp.h>

#include "mcuboot-image.h"
#include "read.h"

static uint16_t le16(const uint8_t *p)
{
        return (uint16_t) (p[0] | p[1] << 8);
}

static uint32_t le32(const uint8_t *p)
{
        return (uint32_t) p[0] | (uint32_t) p[1] << 8 | (uint32_t) p[2] << 16 |
               (uint32_t) p[3] << 24;
}

static int bad(char *why, size_t why_size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int bad(char *why, size_t why_size, const char *fmt, ...)
{
        va_list ap;

        if (why && why_size) {
                va_start(ap, fmt);
                vsnprintf(why, why_size, fmt, ap);
                va_end(ap);
        }
        return -EBADMSG;
}

/* Walks the TLV area at off whose info header must carry magic; with hash, looks for the one
 * SHA-256 TLV. Returns the area's end or a negative error. */
static int64_t walk_area(const struct gw_reader *r, uint64_t off, uint16_t magic,
                         struct gw_mcuboot_image *img, bool hash, char *why, size_t why_size)
{
        uint8_t h[4];
        uint64_t end, p;
        bool found = false;
        int k;

        if (off + 4 > r->size)
                return bad(why, why_size, "the image ends before its TLV area (at %" PRIu64 ")",
                           off);
        k = gw_reader_read_exact(r, h, 4, off, NULL, 0);
        if (k < 0)
                return k;
        if (le16(h) != magic)
                return bad(why, why_size, "no %s at %" PRIu64 " (magic 0x%04x, expected 0x%04x)",
                           magic == GW_MCUBOOT_TLV_PROT ? "protected TLV area" : "TLV area", off,
                           le16(h), magic);
        end = off + le16(h + 2);
        if (le16(h + 2) < 4 || end > r->size)
                return bad(why, why_size,
                           "TLV area at %" PRIu64 " of %u bytes does not fit the image", off,
                           le16(h + 2));
        for (p = off + 4; p < end;) {
                uint16_t type, len;

                if (++img->n_tlvs > GW_MCUBOOT_TLVS_MAX)
                        return bad(why, why_size, "more than %d TLVs", GW_MCUBOOT_TLVS_MAX);
                if (p + 4 > end)
                        return bad(why, why_size, "a TLV header crosses the end of its area");
                k = gw_reader_read_exact(r, h, 4, p, NULL, 0);
                if (k < 0)
                        return k;
                /* Older MCUboot has an 8-bit type and a pad byte (0): the same value. */
                type = le16(h);
                len = le16(h + 2);
                if (p + 4 + len > end)
                        return bad(why, why_size,
                                   "TLV 0x%02x of %u bytes crosses the end of its area", type, len);
                if (hash && type == GW_MCUBOOT_TLV_SHA256) {
                        if (found)
                                return bad(why, why_size, "more than one SHA-256 TLV");
                        if (len != GW_MCUBOOT_HASH_LEN)
                                return bad(why, why_size, "a SHA-256 TLV of %u bytes", len);
                        k = gw_reader_read_exact(r, img->hash, GW_MCUBOOT_HASH_LEN, p + 4, NULL, 0);
                        if (k < 0)
                                return k;
                        found = true;
                }
                p += 4 + (uint64_t) len;
        }
        if (hash && !found)
                return bad(why, why_size, "no SHA-256 TLV (type 0x10)");
        return (int64_t) end;
}

int gw_mcuboot_parse(const struct gw_reader *reader, struct gw_mcuboot_image *ret, char *why,
                     size_t why_size)
{
        struct gw_mcuboot_image img = {0};
        uint8_t h[GW_MCUBOOT_HEADER_SIZE];
        uint64_t tlv;
        int64_t end;
        int k;

        if (!reader || !reader->pread || !ret)
                return -EINVAL;
        if (reader->size < GW_MCUBOOT_HEADER_SIZE)
                return bad(why, why_size, "%" PRIu64 " bytes, shorter than an MCUboot header",
                           reader->size);
        k = gw_reader_read_exact(reader, h, sizeof(h), 0, NULL, 0);
        if (k < 0)
                return k;
        if (le32(h) != GW_MCUBOOT_MAGIC)
                return bad(why, why_size, "magic 0x%08" PRIx32 ", expected 0x%08x", le32(h),
                           GW_MCUBOOT_MAGIC);
        img.load_addr = le32(h + 4);
        img.hdr_size = le16(h + 8);
        img.protect_tlv_size = le16(h + 10);
        img.img_size = le32(h + 12);
        img.flags = le32(h + 16);
        img.major = h[20];
        img.minor = h[21];
        img.revision = le16(h + 22);
        img.build = le32(h + 24);
        if (img.hdr_size < GW_MCUBOOT_HEADER_SIZE)
                return bad(why, why_size, "header size %u is smaller than the header",
                           img.hdr_size);
        tlv = (uint64_t) img.hdr_size + img.img_size;
        if (tlv > reader->size)
                return bad(why, why_size,
                           "header %u + body %" PRIu32 " bytes is more than the file's %" PRIu64,
                           img.hdr_size, img.img_size, reader->size);
        if (img.protect_tlv_size > 0) {
                end = walk_area(reader, tlv, GW_MCUBOOT_TLV_PROT, &img, false, why, why_size);
                if (end < 0)
                        return (int) end;
                if ((uint64_t) end != tlv + img.protect_tlv_size)
                        return bad(why, why_size,
                                   "protected TLV area of %" PRIu64 " bytes, the header says %u",
                                   (uint64_t) end - tlv, img.protect_tlv_size);
        }
        img.hashed = tlv + img.protect_tlv_size;
        end = walk_area(reader, img.hashed, GW_MCUBOOT_TLV_INFO, &img, true, why, why_size);
        if (end < 0)
                return (int) end;
        img.tlv_end = (uint64_t) end;
        *ret = img;
        return 0;
}

int gw_mcuboot_digest(const struct gw_reader *reader, const struct gw_mcuboot_image *img,
                      uint8_t ret_hash[GW_MCUBOOT_HASH_LEN],
                      uint8_t ret_file_sha[GW_MCUBOOT_HASH_LEN])
{
        EVP_MD_CTX *hc = EVP_MD_CTX_new(), *fc = EVP_MD_CTX_new();
        uint8_t buf[16384];
        unsigned mdlen;
        uint64_t off = 0;
        int r = 0;

        if (!hc || !fc || EVP_DigestInit_ex(hc, EVP_sha256(), NULL) != 1 ||
            EVP_DigestInit_ex(fc, EVP_sha256(), NULL) != 1) {
                r = -ENOMEM;
                goto out;
        }
        while (off < reader->size) {
                size_t n =
                    reader->size - off < sizeof(buf) ? (size_t) (reader->size - off) : sizeof(buf);

                r = gw_reader_read_exact(reader, buf, n, off, NULL, 0);
                if (r < 0)
                        goto out;
                if (off < img->hashed) {
                        size_t h = img->hashed - off < n ? (size_t) (img->hashed - off) : n;

                        EVP_DigestUpdate(hc, buf, h);
                }
                EVP_DigestUpdate(fc, buf, n);
                off += n;
        }
        if (ret_hash && EVP_DigestFinal_ex(hc, ret_hash, &mdlen) != 1)
                r = -EIO;
        if (r == 0 && ret_file_sha && EVP_DigestFinal_ex(fc, ret_file_sha, &mdlen) != 1)
                r = -EIO;
out:
        EVP_MD_CTX_free(hc);
        EVP_MD_CTX_free(fc);
        return r;
}

void gw_mcuboot_version_string(const struct gw_mcuboot_image *img, char *buf, size_t n)
{
        if (img->build != 0)
                snprintf(buf, n, "%u.%u.%u.%" PRIu32, img->major, img->minor, img->revision,
                         img->build);
        else
                snprintf(buf, n, "%u.%u.%u", img->major, img->minor, img->revision);
}
