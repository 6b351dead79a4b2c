/*
 * metrics_http.h — what `candex serve` and `candex route` share on their
 * HTTP listeners (/metrics, /healthz, /readyz): latency histograms in the
 * Prometheus text format, and sending a reply.
 */
#ifndef CANDEX_METRICS_HTTP_H
#define CANDEX_METRICS_HTTP_H

#include <stdatomic.h>
#include <stdint.h>

#include <nng/nng.h>

#include "common/common.h"

#define CDX_HIST_NBUCKETS 16

/* upper bounds of the buckets in seconds; the last bucket is +Inf */
extern const double cdx_hist_bounds[CDX_HIST_NBUCKETS - 1];

/* A latency histogram: non-cumulative bucket counts and the sum (atomics:
 * any thread adds, a renderer reads). Zero-initialised is empty. */
struct cdx_hist {
	atomic_uint_fast64_t bucket[CDX_HIST_NBUCKETS];
	atomic_uint_fast64_t sum_us;
};

void cdx_hist_add(struct cdx_hist *h, uint64_t us);

/* cdx_hist_render appends the _bucket, _sum and _count samples of the
 * series name with labels ("" or `a="b",c="d"`) to b. */
void cdx_hist_render(cdx_buf *b, const char *name, const char *labels, const struct cdx_hist *h);

/* cdx_http_reply finishes an nng HTTP handler's aio with a response of
 * status code, Content-Type ctype and a copy of body (not cached). */
void cdx_http_reply(nng_aio *aio, uint16_t code, const char *ctype, const void *body, size_t len);
/* cdx_http_reply_id does the same with an X-Request-Id header (request_id
 * NULL or "": none). */
void cdx_http_reply_id(
    nng_aio *aio, uint16_t code, const char *ctype, const char *request_id, const void *body, size_t len);

#endif
