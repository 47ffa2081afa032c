/* Stable error codes reported upstream (MQTT status and deployment results) and printed by
 * the tools as "error: <code>: <message>". The strings never change once released;
 * new codes are only appended. */
#pragma once

enum gw_error {
        GW_ERR_NONE = 0,
        GW_ERR_MANIFEST_TOO_LARGE,
        GW_ERR_ENVELOPE_MALFORMED,
        GW_ERR_THRESHOLD_NOT_MET,
        GW_ERR_BODY_MALFORMED,
        GW_ERR_SCHEMA_INVALID,
        GW_ERR_EXPIRED,
        GW_ERR_SEQUENCE_ROLLBACK,
        GW_ERR_GATEWAY_INCOMPATIBLE,
        GW_ERR_NODE_INCOMPATIBLE,
        GW_ERR_DOWNGRADE,
        GW_ERR_IMAGE_SIZE_MISMATCH,
        GW_ERR_IMAGE_HASH_MISMATCH,
        GW_ERR_DOWNLOAD_TOO_SLOW,
        GW_ERR_DOWNLOAD_FAILED,
        GW_ERR_KEYS_ROTATION_INVALID,
        GW_ERR_NODE_UNREACHABLE,
        GW_ERR_FLASH_FAILED,
        GW_ERR_VERIFY_FAILED,
        /* Not in DESIGN's first list; appended. */
        GW_ERR_PAYLOAD_INVALID,   /* "payload-invalid": an MQTT message we cannot parse */
        GW_ERR_PAYLOAD_TOO_LARGE, /* "payload-too-large": over the configured cap */
        GW_ERR_NODE_UNKNOWN,      /* "node-unknown": a target names no configured node */
        GW_ERR_CANCELLED,         /* "cancelled" */
        GW_ERR_INTERNAL,          /* "internal" */
        GW_ERR_DECRYPT_FAILED,    /* "decrypt-failed": no key for this gateway, a wrong key, or
                                   * ciphertext that does not authenticate */
        GW_ERR_DECODE_FAILED,     /* "decode-failed": a compressed stream or delta that does not
                                   * decode (truncated, corrupt, over its window) */
        _GW_ERR_MAX,
};

/* "manifest-too-large", ...; NULL for values out of range. */
const char *gw_error_to_string(enum gw_error e);
/* The inverse; -EINVAL when unknown. */
int gw_error_from_string(const char *s);
