/* Fuzz target for the MQTT request parsers (gatewayd/request.c): the bytes are a deploy payload
 * and a cancel payload. Besides not crashing or leaking, every result must keep the contract
 * of request.h: a valid id, exactly one manifest source, bounded sizes, the documented codes. */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "fuzz.h"
#include "request.h"

/* The daemon's default is 256 KiB; smaller caps reach the size checks with small inputs. */
#define MAX_PAYLOAD  (64 * 1024)
#define MAX_MANIFEST 1024

static void check_error(int r, const struct gw_request_error *err)
{
        fuzz_check(r == -EINVAL || r == -EMSGSIZE || r == -ENOMEM);
        if (r == -EINVAL)
                fuzz_check(err->code == GW_ERR_PAYLOAD_INVALID);
        if (r == -EMSGSIZE)
                fuzz_check(err->code == GW_ERR_PAYLOAD_TOO_LARGE ||
                           err->code == GW_ERR_MANIFEST_TOO_LARGE);
        if (r != -ENOMEM)
                fuzz_check(err->message != NULL);
        fuzz_check(!err->id || gw_request_id_valid(err->id));
}

static void fuzz_deploy(const uint8_t *data, size_t size)
{
        struct gw_request_error err = {0};
        struct gw_deploy_request d;
        int r;

        r = gw_deploy_request_parse(data, size, MAX_PAYLOAD, MAX_MANIFEST, &d, &err);
        if (size == 0) {
                fuzz_check(r == GW_REQUEST_CLEARED);
                fuzz_check(!d.id && !d.manifest_url && !d.manifest);
                return;
        }
        if (r < 0) {
                check_error(r, &err);
                gw_request_error_done(&err);
                return;
        }
        fuzz_check(r == 0);
        fuzz_check(err.code == GW_ERR_NONE && !err.message && !err.id);
        fuzz_check(d.id && gw_request_id_valid(d.id));
        fuzz_check(!d.manifest_url != !d.manifest);
        if (d.manifest_url)
                fuzz_check(strlen(d.manifest_url) <= GW_REQUEST_URL_MAX);
        else
                fuzz_check(d.manifest_size <= MAX_MANIFEST);
        gw_deploy_request_done(&d);
}

static void fuzz_cancel(const uint8_t *data, size_t size)
{
        struct gw_request_error err = {0};
        struct gw_cancel_request c;
        int r;

        r = gw_cancel_request_parse(data, size, MAX_PAYLOAD, &c, &err);
        if (size == 0) {
                fuzz_check(r == GW_REQUEST_CLEARED);
                fuzz_check(!c.id);
                return;
        }
        if (r < 0) {
                check_error(r, &err);
                fuzz_check(err.code == GW_ERR_PAYLOAD_INVALID ||
                           err.code == GW_ERR_PAYLOAD_TOO_LARGE);
                gw_request_error_done(&err);
                return;
        }
        fuzz_check(r == 0);
        fuzz_check(c.id && gw_request_id_valid(c.id));
        gw_cancel_request_done(&c);
}

/* The cap comes before any parsing: one byte over it is refused whatever the bytes are. */
static void fuzz_cap(const uint8_t *data, size_t size)
{
        struct gw_request_error err = {0};
        struct gw_deploy_request d;
        int r;

        if (size == 0)
                return;
        r = gw_deploy_request_parse(data, size, size - 1, MAX_MANIFEST, &d, &err);
        fuzz_check(r == -EMSGSIZE && err.code == GW_ERR_PAYLOAD_TOO_LARGE && !err.id);
        gw_request_error_done(&err);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        fuzz_deploy(data, size);
        fuzz_cancel(data, size);
        fuzz_cap(data, size);
        return 0;
}
