/* decode-bench: time and memory of gatewayd's image decoder (gatewayd/decode.c) on the first
 * image of a manifest body made by gwmanifest add-image: its transfer blob (compressed and/or
 * encrypted, the data key unwrapped with the gateway key -k) or, with -b BASE, its delta.
 * Prints one JSON line: seconds, MB/s of image, the peak anonymous and file-backed resident
 * memory (/proc/self/status RssAnon, RssFile) and whether the SHA-256 matched. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gw/manifest.h"

#include "decode.h"
#include "gw/codec.h"
#include "gw/loop.h"

struct run {
        bool done;
        int r;
        char msg[256];
        uint8_t sha[32];
};

static long peak_anon_kb, peak_file_kb;

static void sample_memory(void)
{
        char line[256];
        FILE *f = fopen("/proc/self/status", "r");
        long v;

        if (!f)
                return;
        while (fgets(line, sizeof(line), f)) {
                if (sscanf(line, "RssAnon: %ld kB", &v) == 1 && v > peak_anon_kb)
                        peak_anon_kb = v;
                if (sscanf(line, "RssFile: %ld kB", &v) == 1 && v > peak_file_kb)
                        peak_file_kb = v;
        }
        fclose(f);
}

static void on_finished(void *userdata, int result, enum gw_error code, const char *message,
                        const uint8_t sha256[32], uint64_t bytes)
{
        struct run *run = userdata;

        run->done = true;
        run->r = result;
        snprintf(run->msg, sizeof(run->msg), "%s", message ? message : "");
        if (sha256)
                memcpy(run->sha, sha256, 32);
}

/* Reads a whole small file (a manifest). */
static char *slurp(const char *path, size_t *ret_len)
{
        FILE *f = fopen(path, "rb");
        char *buf = NULL;
        long n;

        if (!f || fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0 ||
            !(buf = malloc((size_t) n + 1)) || fread(buf, 1, (size_t) n, f) != (size_t) n) {
                if (f)
                        fclose(f);
                free(buf);
                return NULL;
        }
        fclose(f);
        buf[n] = '\0';
        *ret_len = (size_t) n;
        return buf;
}

int main(int argc, char **argv)
{
        struct gw_decode_params p = {.finished = on_finished};
        struct gw_manifest_error err = {0};
        struct gw_gateway_key *key = NULL;
        struct gw_manifest *m = NULL;
        const struct gw_manifest_image *img;
        const struct gw_manifest_blob *blob;
        struct gw_decode *d = NULL;
        struct gw_loop *loop = NULL;
        struct run run = {0};
        char in_path[4096], out_path[4200], hex[65], *body;
        const char *base = NULL, *keyfile = NULL;
        size_t len = 0;
        uint64_t t0;
        int c;

        while ((c = getopt(argc, argv, "b:k:")) != -1) {
                if (c == 'b')
                        base = optarg;
                else if (c == 'k')
                        keyfile = optarg;
                else
                        return 2;
        }
        if (optind + 2 != argc) {
                fprintf(stderr, "usage: decode-bench [-k GATEWAY.key] [-b BASE] MANIFEST DIR\n");
                return 2;
        }
        body = slurp(argv[optind], &len);
        if (!body || gw_manifest_parse_body(body, len, &m, &err) < 0) {
                fprintf(stderr, "decode-bench: %s: %s\n", argv[optind], err.message);
                return 1;
        }
        img = &m->images[0];
        blob = base ? &img->delta_blob : &img->transfer_blob;
        if ((base && !img->has_delta) || (!base && !img->has_transfer)) {
                fprintf(stderr, "decode-bench: the image has no %s\n", base ? "delta" : "transfer");
                return 1;
        }
        snprintf(in_path, sizeof(in_path), "%s/%s", argv[optind + 1],
                 base ? img->delta_url : img->url);
        p.in_path = in_path;
        p.in_size = blob->size;
        p.zstd = base || img->compression == GW_COMPRESSION_ZSTD;
        p.encrypted = img->n_recipients > 0;
        p.out_size = img->size;
        if (p.encrypted) {
                if (!keyfile || gw_gateway_key_load(keyfile, &key) < 0 ||
                    gw_image_key_unwrap(key, img, p.key, &err) < 0) {
                        fprintf(stderr, "decode-bench: no key for the image: %s\n", err.message);
                        return 1;
                }
                memcpy(p.nonce, blob->nonce, sizeof(p.nonce));
                memcpy(p.aad, img->sha256, sizeof(p.aad));
        }
        if (base) {
                FILE *f = fopen(base, "rb");

                if (!f || fseek(f, 0, SEEK_END) != 0)
                        return 1;
                p.base_path = base;
                p.base_size = (uint64_t) ftell(f);
                fclose(f);
        }
        snprintf(out_path, sizeof(out_path), "%s.out", in_path);
        p.out_fd = open(out_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        p.userdata = &run;
        if (p.out_fd < 0 || gw_loop_new(&loop) < 0)
                return 1;
        sample_memory();
        t0 = gw_now_us();
        if (gw_decode_start(loop, &p, &d) < 0) {
                fprintf(stderr, "decode-bench: cannot start\n");
                return 1;
        }
        while (!run.done) {
                gw_loop_iterate(loop, 1000);
                sample_memory();
        }
        t0 = gw_now_us() - t0;
        gw_decode_free(d);
        gw_loop_free(loop);
        close(p.out_fd);
        if (run.r < 0) {
                fprintf(stderr, "decode-bench: %s\n", run.msg);
                return 1;
        }
        gw_hex(run.sha, 32, hex);
        printf("{\"image_bytes\":%llu,\"blob_bytes\":%llu,\"seconds\":%.3f,\"mb_per_s\":%.1f,"
               "\"peak_rss_anon_kb\":%ld,\"peak_rss_file_kb\":%ld,\"sha256_ok\":%s}\n",
               (unsigned long long) p.out_size, (unsigned long long) p.in_size, (double) t0 / 1e6,
               (double) p.out_size / ((double) t0 / 1e6) / 1e6, peak_anon_kb, peak_file_kb,
               memcmp(run.sha, img->sha256, 32) == 0 ? "true" : "false");
        gw_gateway_key_free(key);
        gw_manifest_free(m);
        free(body);
        return memcmp(run.sha, img->sha256, 32) == 0 ? 0 : 1;
}
