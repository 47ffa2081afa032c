/* The one adapter from libmosquitto's return codes to negative errno values, shared by the
 * daemon's MQTT session and gwctl. */
#include <errno.h>
#include <mosquitto.h>

#include "gw/mosquitto-errno.h"

int gw_mosq_to_errno(int rc)
{
        switch (rc) {
        case MOSQ_ERR_SUCCESS:
                return 0;
        case MOSQ_ERR_NOMEM:
                return -ENOMEM;
        case MOSQ_ERR_INVAL:
        case MOSQ_ERR_MALFORMED_UTF8:
        case MOSQ_ERR_QOS_NOT_SUPPORTED:
                return -EINVAL;
        case MOSQ_ERR_NO_CONN:
                return -ENOTCONN;
        case MOSQ_ERR_CONN_REFUSED:
                return -ECONNREFUSED;
        case MOSQ_ERR_CONN_LOST:
                return -ECONNRESET;
        case MOSQ_ERR_TLS:
                return -EPROTO;
        case MOSQ_ERR_PAYLOAD_SIZE:
        case MOSQ_ERR_OVERSIZE_PACKET:
                return -EMSGSIZE;
        case MOSQ_ERR_NOT_SUPPORTED:
                return -EOPNOTSUPP;
        case MOSQ_ERR_AUTH:
                return -EACCES;
        case MOSQ_ERR_ACL_DENIED:
                return -EPERM;
        case MOSQ_ERR_UNKNOWN:
                return -EIO;
        case MOSQ_ERR_ERRNO:
                return errno > 0 ? -errno : -EIO;
        case MOSQ_ERR_EAI:
                return -EHOSTUNREACH;
        case MOSQ_ERR_KEEPALIVE:
                return -ETIMEDOUT;
        default:
                return -EIO;
        }
}
