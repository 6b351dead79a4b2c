/*
 * metrics_http.c — latency histograms in the Prometheus text format and
 * HTTP replies, for the listeners of `candex serve` and `candex route`.
 */
#define _GNU_SOURCE
#include "common/metrics_http.h"

#include <nng/supplemental/http/http.h>

const double cdx_hist_bounds[CDX_HIST_NBUCKETS - 1]
    = { 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5 };

void
cdx_hist_add(struct cdx_hist *h, uint64_t us)
{
	double sec = (double) us / 1e6;
	int b = 0;
	while (b < CDX_HIST_NBUCKETS - 1 && sec > cdx_hist_bounds[b])
		b++;
	atomic_fetch_add(&h->bucket[b], 1);
	atomic_fetch_add(&h->sum_us, us);
}

void
cdx_hist_render(cdx_buf *b, const char *name, const char *labels, const struct cdx_hist *h)
{
	uint64_t cum = 0;
	const char *sep = labels[0] ? "," : "";
	for (int i = 0; i < CDX_HIST_NBUCKETS; i++) {
		cum += atomic_load(&h->bucket[i]);
		if (i < CDX_HIST_NBUCKETS - 1)
			cdx_buf_printf(b, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels, sep,
			    cdx_hist_bounds[i], (unsigned long long) cum);
		else
			cdx_buf_printf(b, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep,
			    (unsigned long long) cum);
	}
	/* no braces for no labels: `name_sum 1.5`, as Prometheus writes it */
	const char *open = labels[0] ? "{" : "", *close = labels[0] ? "}" : "";
	cdx_buf_printf(
	    b, "%s_sum%s%s%s %.6f\n", name, open, labels, close, (double) atomic_load(&h->sum_us) / 1e6);
	cdx_buf_printf(b, "%s_count%s%s%s %llu\n", name, open, labels, close, (unsigned long long) cum);
}

void
cdx_http_reply(nng_aio *aio, uint16_t code, const char *ctype, const void *body, size_t len)
{
	cdx_http_reply_id(aio, code, ctype, NULL, body, len);
}

void
cdx_http_reply_id(
    nng_aio *aio, uint16_t code, const char *ctype, const char *request_id, const void *body, size_t len)
{
	nng_http_res *res;
	int rv;
	if ((rv = nng_http_res_alloc(&res)) != 0) {
		nng_aio_finish(aio, rv);
		return;
	}
	nng_http_res_set_status(res, code);
	nng_http_res_set_header(res, "Content-Type", ctype);
	nng_http_res_set_header(res, "Cache-Control", "no-store");
	if (request_id != NULL && *request_id != '\0')
		nng_http_res_set_header(res, "X-Request-Id", request_id);
	if ((rv = nng_http_res_copy_data(res, body, len)) != 0) {
		nng_http_res_free(res);
		nng_aio_finish(aio, rv);
		return;
	}
	nng_aio_set_output(aio, 0, res);
	nng_aio_finish(aio, 0);
}
