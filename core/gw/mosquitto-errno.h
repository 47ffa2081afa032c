/* libmosquitto's MOSQ_ERR_* codes as negative errno values: the one place they are converted. */
#pragma once

/* MOSQ_ERR_SUCCESS: 0; MOSQ_ERR_ERRNO: -errno as the library left it; unknown codes: -EIO. */
int gw_mosq_to_errno(int rc);
