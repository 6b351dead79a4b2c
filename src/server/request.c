/*
 * request.c — what the server can check of a request without a socket or a
 * served set: the request_id of a message that will not be decoded, and a
 * decoded search request against the server's limits and the collection it
 * names. dispatch.c calls these on every request; fuzz/fuzz_request.c feeds
 * them arbitrary bytes.
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "server/server.h"

#define SRV_MAX_REFINE 64.0f

static int CDX_PRINTF(4, 5) verr(char *msg, size_t size, int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, size, fmt, ap);
	va_end(ap);
	return code;
}

int
cdx__srv_validate_search(const Candex__V1__SearchRequest *sr, const struct cdx_manifest *m,
    const struct cdx_server_config *cfg, char *msg, size_t size)
{
	msg[0] = '\0';
	if (sr->k == 0)
		return verr(msg, size, CDX_EINVAL, "k must be at least 1");
	if (sr->k > cfg->max_k)
		return verr(msg, size, CDX_ELIMIT, "k = %u exceeds the server's max-k %u", sr->k, cfg->max_k);
	if (sr->n_vectors > 0 && sr->n_query_keys > 0)
		return verr(msg, size, CDX_EINVAL, "give query vectors or query_keys, not both");
	if (sr->n_vectors == 0 && sr->n_query_keys == 0)
		return verr(
		    msg, size, CDX_EEMPTY, "empty batch: the request has no query vector and no query key");
	size_t nq = sr->n_query_keys;
	if (sr->n_vectors > 0) {
		if (sr->dim != m->dim)
			return verr(msg, size, CDX_EDIM,
			    "query dimension %u, but collection '%s' has dimension %u%s", sr->dim,
			    m->collection, m->dim, sr->dim == 0 ? " (set SearchRequest.dim)" : "");
		if (sr->n_vectors % sr->dim != 0)
			return verr(msg, size, CDX_EDIM,
			    "%zu floats is not a whole number of %u-dimensional vectors", sr->n_vectors,
			    sr->dim);
		nq = sr->n_vectors / sr->dim;
	}
	if (nq > cfg->max_batch)
		return verr(msg, size, CDX_ELIMIT, "batch of %zu queries exceeds the server's max-batch %u",
		    nq, cfg->max_batch);
	if (sr->n_exclude_ids + sr->n_exclude_keys > cfg->max_excludes)
		return verr(msg, size, CDX_ELIMIT, "%zu excluded items exceed the server's max-excludes %u",
		    sr->n_exclude_ids + sr->n_exclude_keys, cfg->max_excludes);
	long bad = cdx_find_nonfinite(sr->vectors, sr->n_vectors);
	if (bad >= 0)
		return verr(msg, size, CDX_ENONFINITE, "query %ld, component %ld is %s", bad / (long) sr->dim,
		    bad % (long) sr->dim, isnan(sr->vectors[bad]) ? "NaN" : "infinite");
	if (sr->model_version != NULL && sr->model_version[0] != '\0'
	    && strcmp(sr->model_version, m->model_version) != 0)
		return verr(msg, size, CDX_EMODEL,
		    "query vectors come from model '%.*s' but collection '%s' version %s was built from "
		    "model '%s'",
		    (int) cdx_utf8_cut(sr->model_version, 128), sr->model_version, m->collection, m->version,
		    m->model_version[0] ? m->model_version : "(unset)");
	if (!isfinite(sr->refine_factor) || sr->refine_factor < 0 || sr->refine_factor > SRV_MAX_REFINE)
		return verr(msg, size, CDX_EINVAL, "refine_factor must be in [0, %g], not %g",
		    (double) SRV_MAX_REFINE, (double) sr->refine_factor);
	if (!isfinite(sr->recall_target) || sr->recall_target < 0 || sr->recall_target > 1)
		return verr(msg, size, CDX_EINVAL, "recall_target must be in [0, 1], not %g",
		    (double) sr->recall_target);
	for (size_t i = 0; i < sr->n_query_keys; i++) {
		if (sr->query_keys[i] == NULL || sr->query_keys[i][0] == '\0')
			return verr(msg, size, CDX_EINVAL, "query key %zu is empty", i);
	}
	return CDX_OK;
}

static int
get_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
	*v = 0;
	for (int shift = 0; shift < 64 && *p < end; shift += 7) {
		uint8_t b = *(*p)++;
		*v |= (uint64_t) (b & 0x7f) << shift;
		if ((b & 0x80) == 0)
			return 0;
	}
	return -1;
}

/* peek_request_id walks the top-level fields of a Request that will not be
 * decoded (too large, or malformed further in) for its request_id (field
 * 2), so that even those error responses echo it. */
void
cdx__srv_peek_request_id(const uint8_t *p, size_t len, char *out, size_t size)
{
	const uint8_t *end = p + len;
	uint64_t tag, v;
	out[0] = '\0';
	while (p < end && get_varint(&p, end, &tag) == 0) {
		switch (tag & 7) {
		case 0:
			if (get_varint(&p, end, &v) != 0)
				return;
			break;
		case 1:
			p += 8;
			break;
		case 5:
			p += 4;
			break;
		case 2:
			if (get_varint(&p, end, &v) != 0 || v > (uint64_t) (end - p))
				return;
			if ((tag >> 3) == 2) {
				size_t n = CDX_MIN((size_t) v, size - 1);
				memcpy(out, p, n);
				out[n] = '\0';
				if (memchr(out, '\0', n) != NULL || strlen(out) != n)
					out[0] = '\0';
				/* a character cut by the limit goes, not half of it */
				cdx_utf8_sanitize(out);
				return;
			}
			p += v;
			break;
		default:
			return;
		}
	}
}
