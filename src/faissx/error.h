/*
 * error.h — what every user of the Faiss C API in candex shares: turning
 * a failed Faiss call into a candex error. Kept out of src/common so that the
 * client library, which links no Faiss, can use src/common.
 */
#ifndef CANDEX_FAISSX_ERROR_H
#define CANDEX_FAISSX_ERROR_H

#include "common/common.h"

/* cdx_error_faiss records "what: <faiss_get_last_error()>" with cdx_error()
 * and returns CDX_EFAISS. Call it on the thread of the failed Faiss call, at
 * once: Faiss keeps its last error per thread and the next call replaces it. */
int cdx_error_faiss(const char *what);

#endif
