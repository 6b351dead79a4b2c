/*
 * request.c — what the server can check of a request without a socket or a
 * served set: the wire bytes before decoding (sizes and the counts that
 * decoding multiplies, walked without allocating), the decoding itself, the
 * request_id of a message that will not be decoded, and a decoded search
 * request against the server's limits and the collection it names.
 * dispatch.c calls these on every request; fuzz/fuzz_request.c feeds them
 * arbitrary bytes.
 *
 * Counting before decoding: protobuf-c allocates one pointer and one block
 * per string, so a 15 MiB message of empty strings decodes into hundreds of
 * megabytes. prescan counts query vectors, query keys, exclusions and
 * unknown fields, so a request over --max-batch or --max-excludes is
 * refused before decoding; the allocator's budget (intake.c) then bounds
 * whatever the counts allow.
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/idlist.h"
#include "recommend/recommend.h"
#include "server/server.h"

#define SRV_MAX_REFINE 64.0f
/* Unknown fields a request may carry (protobuf-c keeps each one). */
#define SRV_MAX_UNKNOWN_FIELDS 1024

/* Counts taken from a request's wire bytes before decoding. */
struct srv_counts {
	uint64_t dim, floats, keys, excludes, unknown, parts;
};

static int CDX_PRINTF(4, 5) verr(char *msg, size_t size, int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, size, fmt, ap);
	va_end(ap);
	return code;
}

int
cdx__srv_validate_settings(const Candex__V1__SearchRequest *sr, char *msg, size_t size)
{
	msg[0] = '\0';
	if (!isfinite(sr->refine_factor) || sr->refine_factor < 0 || sr->refine_factor > SRV_MAX_REFINE)
		return verr(msg, size, CDX_EINVAL, "refine_factor must be in [0, %g], not %g",
		    (double) SRV_MAX_REFINE, (double) sr->refine_factor);
	if (!isfinite(sr->recall_target) || sr->recall_target < 0 || sr->recall_target > 1)
		return verr(msg, size, CDX_EINVAL, "recall_target must be in [0, 1], not %g",
		    (double) sr->recall_target);
	return CDX_OK;
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
	int rc = cdx__srv_validate_settings(sr, msg, size);
	if (rc != CDX_OK)
		return rc;
	for (size_t i = 0; i < sr->n_query_keys; i++) {
		if (sr->query_keys[i] == NULL || sr->query_keys[i][0] == '\0')
			return verr(msg, size, CDX_EINVAL, "query key %zu is empty", i);
	}
	return CDX_OK;
}

/* field walks one field: *num and *wt are its number and wire type, and
 * [*val, *val + *len) its payload (a varint's bytes, or the bytes of a
 * length-delimited field). Returns -1 on bytes that cannot be a field. */
static int
field(const uint8_t **p, const uint8_t *end, uint64_t *num, int *wt, const uint8_t **val, size_t *len)
{
	uint64_t tag, v;
	if (cdx_varint_get(p, end, &tag) != 0)
		return -1;
	*num = tag >> 3;
	*wt = (int) (tag & 7);
	*val = *p;
	switch (*wt) {
	case 0:
		if (cdx_varint_get(p, end, &v) != 0)
			return -1;
		break;
	case 1:
	case 5: {
		size_t n = *wt == 1 ? 8 : 4;
		if ((size_t) (end - *p) < n)
			return -1;
		*p += n;
		break;
	}
	case 2:
		if (cdx_varint_get(p, end, &v) != 0 || v > (uint64_t) (end - *p))
			return -1;
		*val = *p;
		*p += v;
		break;
	default:
		return -1;
	}
	*len = (size_t) (*p - *val);
	return 0;
}

/* varints counts the varints of a packed repeated field. */
static size_t
varints(const uint8_t *p, size_t len)
{
	size_t n = 0;
	for (size_t i = 0; i < len; i++)
		n += (p[i] & 0x80) == 0;
	return n;
}

/* scan_part counts a CollectionPart's exclusions and unknown fields. */
static int
scan_part(const uint8_t *p, size_t len, struct srv_counts *c)
{
	const uint8_t *end = p + len, *val;
	uint64_t num;
	int wt;
	size_t n;
	while (p < end) {
		if (field(&p, end, &num, &wt, &val, &n) != 0)
			return -1;
		if (num == 6) /* exclude_ids: packed varints, or one per field */
			c->excludes += wt == 2 ? varints(val, n) : 1;
		else if (num == 8) /* exclude_keys */
			c->excludes++;
		else if (num == 0 || num > 11)
			c->unknown++;
	}
	return 0;
}

static int
scan_search(const uint8_t *p, size_t len, struct srv_counts *c)
{
	const uint8_t *end = p + len, *val;
	uint64_t num;
	int wt;
	size_t n;
	while (p < end) {
		if (field(&p, end, &num, &wt, &val, &n) != 0)
			return -1;
		switch (num) {
		case 2: /* dim */
			if (wt == 0) {
				const uint8_t *q = val;
				uint64_t v;
				cdx_varint_get(&q, val + n, &v);
				c->dim = v;
			}
			break;
		case 3: /* vectors: packed floats, or one float per field */
			c->floats += wt == 2 ? n / 4 : 1;
			break;
		case 4: /* query_keys */
			c->keys++;
			break;
		case 8: /* exclude_ids: packed varints, or one per field */
			c->excludes += wt == 2 ? varints(val, n) : 1;
			break;
		case 9: /* exclude_keys */
			c->excludes++;
			break;
		case 20: /* parts: each decodes into a message of its own */
			c->parts++;
			if (wt == 2 && scan_part(val, n, c) != 0)
				return -1;
			break;
		default:
			/* singular fields: a repeat replaces the value, it does not
			 * add one; the recommender fields are 12-21, the router's 30 */
			if (num == 0 || (num > 21 && num != 30))
				c->unknown++;
		}
	}
	return 0;
}

/* prescan counts a Request's repeated and unknown fields from its wire
 * bytes; -1 if they are not a protobuf message. */
static int
prescan(const uint8_t *p, size_t len, struct srv_counts *c)
{
	const uint8_t *end = p + len, *val;
	uint64_t num;
	int wt;
	size_t n;
	memset(c, 0, sizeof(*c));
	while (p < end) {
		if (field(&p, end, &num, &wt, &val, &n) != 0)
			return -1;
		if (num == 10 && wt == 2) {
			/* a message field seen twice is merged by the decoder: sum */
			if (scan_search(val, n, c) != 0)
				return -1;
		} else if (num == 0 || (num > 3 && num < 10) || (num > 14 && num < 20) || num > 21) {
			c->unknown++;
		}
	}
	return 0;
}

/* counts_check returns CDX_ELIMIT with msg set if the counts exceed the
 * configured limits, else CDX_OK. */
static int
counts_check(const struct cdx_server_config *cfg, const struct srv_counts *c, char *msg, size_t size)
{
	/* floats decode to their own size; what multiplies is strings,
	 * varints and unknown fields, hence these counts */
	if (c->keys > cfg->max_batch) {
		snprintf(msg, size, "batch of %llu query keys exceeds the server's max-batch %u",
		    (unsigned long long) c->keys, cfg->max_batch);
		return CDX_ELIMIT;
	}
	if (c->dim > 0 && c->floats / c->dim > cfg->max_batch) {
		snprintf(msg, size, "batch of %llu queries exceeds the server's max-batch %u",
		    (unsigned long long) (c->floats / c->dim), cfg->max_batch);
		return CDX_ELIMIT;
	}
	if (c->excludes > cfg->max_excludes) {
		snprintf(msg, size, "%llu excluded items exceed the server's max-excludes %u",
		    (unsigned long long) c->excludes, cfg->max_excludes);
		return CDX_ELIMIT;
	}
	if (c->parts > CDX_REC_MAX_PARTS) {
		snprintf(msg, size, "%llu parts exceed the most a search may have (%d)",
		    (unsigned long long) c->parts, CDX_REC_MAX_PARTS);
		return CDX_ELIMIT;
	}
	if (c->unknown > SRV_MAX_UNKNOWN_FIELDS) {
		snprintf(msg, size, "%llu unknown fields (at most %d)", (unsigned long long) c->unknown,
		    SRV_MAX_UNKNOWN_FIELDS);
		return CDX_ELIMIT;
	}
	return CDX_OK;
}

void
cdx__srv_peek_request_id(const uint8_t *p, size_t len, char *out, size_t size)
{
	const uint8_t *end = p + len, *val;
	uint64_t num;
	int wt;
	size_t n;
	out[0] = '\0';
	while (p < end && field(&p, end, &num, &wt, &val, &n) == 0) {
		if (num == 2 && wt == 2) {
			n = CDX_MIN(n, size - 1);
			memcpy(out, val, n);
			out[n] = '\0';
			if (strlen(out) != n)
				out[0] = '\0';
			/* a character cut by the limit goes, not half of it */
			cdx_utf8_sanitize(out);
			return;
		}
	}
}

int
cdx__srv_decode_request(const struct cdx_server_config *cfg, ProtobufCAllocator *alloc, const uint8_t *p,
    size_t len, Candex__V1__Request **out, char *msg, size_t size)
{
	struct srv_counts counts;
	*out = NULL;
	if (len > cfg->max_message)
		return verr(msg, size, CDX_ELIMIT,
		    "request of %zu bytes exceeds the server's max-message %llu", len,
		    (unsigned long long) cfg->max_message);
	/* bytes that are not protobuf at all are left to the decoder to refuse */
	if (prescan(p, len, &counts) == 0) {
		int rc = counts_check(cfg, &counts, msg, size);
		if (rc != CDX_OK)
			return rc;
	}
	*out = candex__v1__request__unpack(alloc, len, p);
	if (*out == NULL)
		return verr(msg, size, CDX_EPROTO,
		    "malformed request: %zu bytes that do not decode as a candex.v1.Request", len);
	return CDX_OK;
}
