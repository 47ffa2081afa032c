/* libcurl multi interface on our loop: curl tells us which sockets to watch and when to call it
 * back; we turn those into loop sources. libcurl's codes become -errno and a gw_error in
 * curl_to_result(), nowhere else. */
#include <curl/curl.h>
#include <errno.h>
#include <openssl/evp.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "fetch.h"
#include "gw/log.h"

#define MAX_REDIRECTS 5
/* A download whose connection drops goes on where it stopped (an HTTP range request), at most
 * this many times; a server that cannot serve ranges starts it over once. */
#define MAX_RESUMES 8

struct gw_fetcher {
        struct gw_loop *loop;
        CURLM *multi;
        struct gw_source *timer;
        struct gw_fetch *fetches; /* running */
};

struct gw_fetch {
        struct gw_fetcher *fetcher;
        struct gw_fetch *next;
        CURL *easy;
        struct gw_fetch_params p;
        char *url;
        EVP_MD_CTX *md;
        uint64_t bytes;
        uint8_t *mem;
        size_t mem_allocated;
        bool over_cap;
        int write_error;
        unsigned resumes; /* range requests made after a dropped connection */
        bool restarted;   /* started over: the server could not serve a range */
        char etag[128];   /* of the first response: a resume asks If-Range with it */
        struct curl_slist *headers;
        char errbuf[CURL_ERROR_SIZE];
};

/* Sockets curl asked us to watch carry their loop source through curl_multi_assign(). */
static int on_socket_io(struct gw_source *s, int fd, short revents, void *userdata);

static void check_done(struct gw_fetcher *f);

static int curl_socket_cb(CURL *easy, curl_socket_t sock, int what, void *userp, void *socketp)
{
        struct gw_fetcher *f = userp;
        struct gw_source *src = socketp;
        short ev = 0;

        if (what == CURL_POLL_REMOVE) {
                gw_source_free(src);
                curl_multi_assign(f->multi, sock, NULL);
                return 0;
        }
        if (what & CURL_POLL_IN)
                ev |= POLLIN;
        if (what & CURL_POLL_OUT)
                ev |= POLLOUT;
        if (src)
                return gw_source_set_io_events(src, ev) < 0 ? -1 : 0;
        if (gw_loop_add_io(f->loop, sock, ev, on_socket_io, f, &src) < 0)
                return -1;
        curl_multi_assign(f->multi, sock, src);
        return 0;
}

static int curl_timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
        struct gw_fetcher *f = userp;

        if (timeout_ms < 0)
                gw_source_set_time(f->timer, 0);
        else
                gw_source_set_time(f->timer, gw_now_ms() + (uint64_t) timeout_ms);
        return 0;
}

static int on_socket_io(struct gw_source *s, int fd, short revents, void *userdata)
{
        struct gw_fetcher *f = userdata;
        int running, mask = 0;

        if (revents & POLLIN)
                mask |= CURL_CSELECT_IN;
        if (revents & POLLOUT)
                mask |= CURL_CSELECT_OUT;
        if (revents & (POLLERR | POLLHUP))
                mask |= CURL_CSELECT_ERR;
        curl_multi_socket_action(f->multi, fd, mask, &running);
        check_done(f);
        return 0;
}

static int on_timer(struct gw_source *s, uint64_t now, void *userdata)
{
        struct gw_fetcher *f = userdata;
        int running;

        curl_multi_socket_action(f->multi, CURL_SOCKET_TIMEOUT, 0, &running);
        check_done(f);
        return 0;
}

static size_t on_data(char *ptr, size_t size, size_t nmemb, void *userdata)
{
        struct gw_fetch *x = userdata;
        size_t n = size * nmemb;

        if (x->bytes + n > x->p.max_bytes) {
                x->over_cap = true;
                return 0; /* CURLE_WRITE_ERROR */
        }
        if (EVP_DigestUpdate(x->md, ptr, n) != 1) {
                x->write_error = -EIO;
                return 0;
        }
        if (x->p.fd >= 0) {
                size_t off = 0;

                while (off < n) {
                        ssize_t w = write(x->p.fd, ptr + off, n - off);

                        if (w < 0 && errno == EINTR)
                                continue;
                        if (w <= 0) {
                                x->write_error = w < 0 ? -errno : -EIO;
                                return 0;
                        }
                        off += (size_t) w;
                }
        } else {
                if (x->bytes + n > x->mem_allocated) {
                        size_t na = x->mem_allocated ? x->mem_allocated * 2 : 16384;
                        uint8_t *m;

                        while (na < x->bytes + n)
                                na *= 2;
                        if (na > x->p.max_bytes)
                                na = (size_t) x->p.max_bytes;
                        m = realloc(x->mem, na);
                        if (!m) {
                                x->write_error = -ENOMEM;
                                return 0;
                        }
                        x->mem = m;
                        x->mem_allocated = na;
                }
                memcpy(x->mem + x->bytes, ptr, n);
        }
        x->bytes += n;
        if (x->p.progress)
                x->p.progress(x->p.userdata, x->bytes);
        return n;
}

/* Keeps the first response's ETag (strong ones only: If-Range takes no weak validator). */
static size_t on_header(char *ptr, size_t size, size_t nmemb, void *userdata)
{
        struct gw_fetch *x = userdata;
        size_t n = size * nmemb;

        if (x->resumes == 0 && n > 6 && strncasecmp(ptr, "ETag:", 5) == 0) {
                const char *v = ptr + 5;
                size_t len = n - 5;

                while (len > 0 && (*v == ' ' || *v == '\t')) {
                        v++;
                        len--;
                }
                while (len > 0 && (v[len - 1] == '\r' || v[len - 1] == '\n' || v[len - 1] == ' '))
                        len--;
                if (len > 0 && len < sizeof(x->etag) && v[0] == '"') {
                        memcpy(x->etag, v, len);
                        x->etag[len] = '\0';
                }
        }
        return n;
}

static void fetch_free(struct gw_fetch *x)
{
        struct gw_fetch **p;

        for (p = &x->fetcher->fetches; *p; p = &(*p)->next)
                if (*p == x) {
                        *p = x->next;
                        break;
                }
        if (x->easy) {
                curl_multi_remove_handle(x->fetcher->multi, x->easy);
                curl_easy_cleanup(x->easy);
        }
        curl_slist_free_all(x->headers);
        EVP_MD_CTX_free(x->md);
        free(x->mem);
        free(x->url);
        free(x);
}

/* The one place libcurl's result becomes ours. */
static int curl_to_result(struct gw_fetch *x, CURLcode cc, enum gw_error *ret_code, char *msg,
                          size_t n)
{
        long status = 0;

        if (x->over_cap || cc == CURLE_FILESIZE_EXCEEDED) {
                *ret_code = GW_ERR_IMAGE_SIZE_MISMATCH;
                snprintf(msg, n, "%s: more than the %llu bytes expected", x->url,
                         (unsigned long long) x->p.max_bytes);
                return -EFBIG;
        }
        if (x->write_error) {
                *ret_code = GW_ERR_DOWNLOAD_FAILED;
                snprintf(msg, n, "%s: cannot store: %s", x->url, strerror(-x->write_error));
                return x->write_error;
        }
        switch (cc) {
        case CURLE_OPERATION_TIMEDOUT:
                *ret_code = GW_ERR_DOWNLOAD_TOO_SLOW;
                snprintf(msg, n, "%s: too slow (%llu bytes received): %s", x->url,
                         (unsigned long long) x->bytes, x->errbuf[0] ? x->errbuf : "timed out");
                return -ETIMEDOUT;
        case CURLE_HTTP_RETURNED_ERROR:
                curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
                *ret_code = GW_ERR_DOWNLOAD_FAILED;
                snprintf(msg, n, "%s: HTTP status %ld", x->url, status);
                return -EREMOTEIO;
        case CURLE_COULDNT_CONNECT:
        case CURLE_COULDNT_RESOLVE_HOST:
                *ret_code = GW_ERR_DOWNLOAD_FAILED;
                snprintf(msg, n, "%s: %s", x->url, x->errbuf[0] ? x->errbuf : "cannot connect");
                return -EHOSTUNREACH;
        case CURLE_FILE_COULDNT_READ_FILE:
                *ret_code = GW_ERR_DOWNLOAD_FAILED;
                snprintf(msg, n, "%s: cannot read file", x->url);
                return -ENOENT;
        default:
                *ret_code = GW_ERR_DOWNLOAD_FAILED;
                snprintf(msg, n, "%s: %s", x->url,
                         x->errbuf[0] ? x->errbuf : curl_easy_strerror(cc));
                return -EIO;
        }
}

/* A connection that dropped mid-body: a transfer error after some bytes of an http(s) body. */
static bool dropped(CURLcode cc)
{
        return cc == CURLE_PARTIAL_FILE || cc == CURLE_RECV_ERROR || cc == CURLE_SEND_ERROR ||
               cc == CURLE_GOT_NOTHING || cc == CURLE_HTTP2_STREAM;
}

/* Goes on after a dropped connection with a range request from the bytes kept (the hash
 * carries on over them), or starts over once when the server cannot serve the range. False:
 * the error stands. */
static bool try_resume(struct gw_fetch *x, CURLcode cc)
{
        CURLM *multi = x->fetcher->multi;
        bool http =
            strncasecmp(x->url, "http://", 7) == 0 || strncasecmp(x->url, "https://", 8) == 0;
        struct curl_slist *hdr = NULL;

        if (!http || x->over_cap || x->write_error)
                return false;
        if (cc == CURLE_RANGE_ERROR && !x->restarted) {
                /* It answered the range with the whole body (or another range): start over. */
                if (x->p.fd >= 0 && (ftruncate(x->p.fd, 0) < 0 || lseek(x->p.fd, 0, SEEK_SET) < 0))
                        return false;
                if (EVP_DigestInit_ex(x->md, EVP_sha256(), NULL) != 1)
                        return false;
                gw_log_debug("%s: the server cannot resume at %llu bytes; starting over", x->url,
                             (unsigned long long) x->bytes);
                x->bytes = 0;
                x->restarted = true;
        } else if (!dropped(cc) || x->bytes == 0 || x->bytes >= x->p.max_bytes ||
                   x->resumes >= MAX_RESUMES) {
                return false;
        } else {
                gw_log_debug("%s: connection dropped after %llu bytes (%s); resuming", x->url,
                             (unsigned long long) x->bytes, curl_easy_strerror(cc));
        }
        if (x->p.deadline_ms && gw_now_ms() >= x->p.deadline_ms)
                return false;
        x->resumes++;
        curl_multi_remove_handle(multi, x->easy);
        x->errbuf[0] = '\0';
        curl_easy_setopt(x->easy, CURLOPT_RESUME_FROM_LARGE, (curl_off_t) x->bytes);
        /* The rest of the same file, or the whole of a changed one (which the hash refuses). */
        curl_easy_setopt(x->easy, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t) 0);
        if (x->etag[0]) {
                char line[160];

                snprintf(line, sizeof(line), "If-Range: %s", x->etag);
                hdr = curl_slist_append(NULL, line);
        }
        curl_slist_free_all(x->headers);
        x->headers = hdr;
        curl_easy_setopt(x->easy, CURLOPT_HTTPHEADER, x->headers);
        if (x->p.deadline_ms) {
                uint64_t now = gw_now_ms();

                curl_easy_setopt(x->easy, CURLOPT_TIMEOUT_MS,
                                 (long) (x->p.deadline_ms > now ? x->p.deadline_ms - now : 1));
        }
        return curl_multi_add_handle(multi, x->easy) == CURLM_OK;
}

static void check_done(struct gw_fetcher *f)
{
        CURLMsg *msg;
        int left;

        while ((msg = curl_multi_info_read(f->multi, &left))) {
                struct gw_fetch *x = NULL;
                uint8_t digest[32];
                unsigned dlen = 0;
                char text[512] = "";
                enum gw_error code = GW_ERR_NONE;
                int r = 0;
                uint8_t *mem;

                if (msg->msg != CURLMSG_DONE)
                        continue;
                curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &x);
                if (!x)
                        continue;
                if (msg->data.result != CURLE_OK && try_resume(x, msg->data.result))
                        continue;
                if (msg->data.result != CURLE_OK)
                        r = curl_to_result(x, msg->data.result, &code, text, sizeof(text));
                else if (EVP_DigestFinal_ex(x->md, digest, &dlen) != 1 || dlen != 32)
                        r = -EIO;
                if (r < 0 && code == GW_ERR_NONE) {
                        code = GW_ERR_DOWNLOAD_FAILED;
                        snprintf(text, sizeof(text), "%s: hashing failed", x->url);
                }
                mem = r == 0 && x->p.fd < 0 ? x->mem : NULL;
                if (mem)
                        x->mem = NULL;
                if (x->p.finished)
                        x->p.finished(x->p.userdata, r, code, r < 0 ? text : NULL,
                                      r == 0 ? digest : NULL, x->bytes, mem);
                fetch_free(x);
        }
}

int gw_fetcher_new(struct gw_loop *loop, struct gw_fetcher **ret)
{
        struct gw_fetcher *f;
        int r;

        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
                return -EIO;
        f = calloc(1, sizeof(*f));
        if (!f)
                return -ENOMEM;
        f->loop = loop;
        f->multi = curl_multi_init();
        if (!f->multi) {
                free(f);
                return -ENOMEM;
        }
        r = gw_loop_add_timer(loop, 0, on_timer, f, &f->timer);
        if (r < 0) {
                curl_multi_cleanup(f->multi);
                free(f);
                return r;
        }
        curl_multi_setopt(f->multi, CURLMOPT_SOCKETFUNCTION, curl_socket_cb);
        curl_multi_setopt(f->multi, CURLMOPT_SOCKETDATA, f);
        curl_multi_setopt(f->multi, CURLMOPT_TIMERFUNCTION, curl_timer_cb);
        curl_multi_setopt(f->multi, CURLMOPT_TIMERDATA, f);
        *ret = f;
        return 0;
}

struct gw_fetcher *gw_fetcher_free(struct gw_fetcher *f)
{
        if (!f)
                return NULL;
        while (f->fetches)
                fetch_free(f->fetches);
        curl_multi_cleanup(f->multi);
        gw_source_free(f->timer);
        free(f);
        return NULL;
}

int gw_fetch_start(struct gw_fetcher *f, const struct gw_fetch_params *p, struct gw_fetch **ret)
{
        struct gw_fetch *x;
        CURL *e;

        if (!f || !p || !p->url || p->max_bytes == 0)
                return -EINVAL;
        x = calloc(1, sizeof(*x));
        if (!x)
                return -ENOMEM;
        x->fetcher = f;
        x->p = *p;
        x->url = strdup(p->url);
        x->md = EVP_MD_CTX_new();
        x->easy = e = curl_easy_init();
        if (!x->url || !x->md || !e || EVP_DigestInit_ex(x->md, EVP_sha256(), NULL) != 1) {
                x->next = NULL;
                curl_easy_cleanup(e);
                EVP_MD_CTX_free(x->md);
                free(x->url);
                free(x);
                return -ENOMEM;
        }
        x->p.url = x->url;
        curl_easy_setopt(e, CURLOPT_URL, x->url);
        curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https,file");
        curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 1L);
        curl_easy_setopt(e, CURLOPT_MAXREDIRS, (long) MAX_REDIRECTS);
        curl_easy_setopt(e, CURLOPT_FAILONERROR, 1L);
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_data);
        curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
        curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
        curl_easy_setopt(e, CURLOPT_PRIVATE, x);
        curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf);
        curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t) p->max_bytes);
        curl_easy_setopt(e, CURLOPT_USERAGENT, "gatewayd");
        if (p->connect_timeout_s)
                curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT, (long) p->connect_timeout_s);
        if (p->min_rate) {
                curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, (long) p->min_rate);
                curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME,
                                 (long) (p->rate_window_s ? p->rate_window_s : 30));
        }
        if (p->deadline_ms) {
                uint64_t now = gw_now_ms();

                curl_easy_setopt(e, CURLOPT_TIMEOUT_MS,
                                 (long) (p->deadline_ms > now ? p->deadline_ms - now : 1));
        }
        if (curl_multi_add_handle(f->multi, e) != CURLM_OK) {
                curl_easy_cleanup(e);
                EVP_MD_CTX_free(x->md);
                free(x->url);
                free(x);
                return -EIO;
        }
        x->next = f->fetches;
        f->fetches = x;
        if (ret)
                *ret = x;
        return 0;
}

void gw_fetch_cancel(struct gw_fetch *x)
{
        if (x)
                fetch_free(x);
}

int gw_url_resolve(const char *base, const char *ref, char **ret)
{
        CURLU *u = curl_url();
        char *out = NULL;
        int r = -EINVAL;

        if (!u)
                return -ENOMEM;
        if (base && curl_url_set(u, CURLUPART_URL, base, 0) != CURLUE_OK)
                goto out;
        if (curl_url_set(u, CURLUPART_URL, ref, 0) != CURLUE_OK)
                goto out;
        if (curl_url_get(u, CURLUPART_URL, &out, 0) != CURLUE_OK)
                goto out;
        *ret = strdup(out);
        r = *ret ? 0 : -ENOMEM;
out:
        curl_free(out);
        curl_url_cleanup(u);
        return r;
}
