/*
 * error.c — Faiss errors as candex errors (see error.h).
 */
#include <faiss/c_api/error_c.h>

#include "faissx/error.h"

int
cdx_error_faiss(const char *what)
{
	const char *msg = faiss_get_last_error();
	return cdx_error(CDX_EFAISS, "%s: %s", what, msg ? msg : "unknown faiss error");
}
