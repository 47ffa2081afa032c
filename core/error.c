/* The stable strings behind enum gw_error (core/gw/error.h): what the daemon reports
 * upstream and what the tools print as "error: <code>: <message>". */
#include <errno.h>
#include <string.h>

#include "gw/error.h"

static const char *const error_table[_GW_ERR_MAX] = {
    [GW_ERR_NONE] = "none",
    [GW_ERR_MANIFEST_TOO_LARGE] = "manifest-too-large",
    [GW_ERR_ENVELOPE_MALFORMED] = "envelope-malformed",
    [GW_ERR_THRESHOLD_NOT_MET] = "threshold-not-met",
    [GW_ERR_BODY_MALFORMED] = "body-malformed",
    [GW_ERR_SCHEMA_INVALID] = "schema-invalid",
    [GW_ERR_EXPIRED] = "expired",
    [GW_ERR_SEQUENCE_ROLLBACK] = "sequence-rollback",
    [GW_ERR_GATEWAY_INCOMPATIBLE] = "gateway-incompatible",
    [GW_ERR_NODE_INCOMPATIBLE] = "node-incompatible",
    [GW_ERR_DOWNGRADE] = "downgrade",
    [GW_ERR_IMAGE_SIZE_MISMATCH] = "image-size-mismatch",
    [GW_ERR_IMAGE_HASH_MISMATCH] = "image-hash-mismatch",
    [GW_ERR_DOWNLOAD_TOO_SLOW] = "download-too-slow",
    [GW_ERR_DOWNLOAD_FAILED] = "download-failed",
    [GW_ERR_KEYS_ROTATION_INVALID] = "keys-rotation-invalid",
    [GW_ERR_NODE_UNREACHABLE] = "node-unreachable",
    [GW_ERR_FLASH_FAILED] = "flash-failed",
    [GW_ERR_VERIFY_FAILED] = "verify-failed",
    [GW_ERR_PAYLOAD_INVALID] = "payload-invalid",
    [GW_ERR_PAYLOAD_TOO_LARGE] = "payload-too-large",
    [GW_ERR_NODE_UNKNOWN] = "node-unknown",
    [GW_ERR_CANCELLED] = "cancelled",
    [GW_ERR_INTERNAL] = "internal",
    [GW_ERR_DECRYPT_FAILED] = "decrypt-failed",
    [GW_ERR_DECODE_FAILED] = "decode-failed",
};

const char *gw_error_to_string(enum gw_error e)
{
        if ((unsigned) e >= _GW_ERR_MAX)
                return NULL;
        return error_table[e];
}

int gw_error_from_string(const char *s)
{
        if (!s)
                return -EINVAL;
        for (unsigned i = 0; i < _GW_ERR_MAX; i++)
                if (error_table[i] && strcmp(error_table[i], s) == 0)
                        return (int) i;
        return -EINVAL;
}
