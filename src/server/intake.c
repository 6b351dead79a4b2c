/*
 * intake.c — what happens to request bytes before a request exists: the
 * receive-memory budget, the look at the wire bytes that enforces the
 * count limits before anything is decoded, and decoding through a
 * protobuf-c allocator that draws on the budget.
 *
 * DESIGN
 * The budget (what --max-receive-memory leaves after the share of the
 * frames nng is still receiving, which is at most half; see
 * cdx__srv_limits_init) covers every byte a received request holds: the message nng handed over, from receipt
 * until it is decoded, and every allocation of its decoded form, until the
 * response is sent. A request that does not fit is answered OVERLOADED at
 * once, so a flood of large requests cannot grow the heap past the budget
 * however the requests are shaped.
 *
 * Counting before decoding: protobuf-c allocates one pointer and one block
 * per string, so a 15 MiB message of empty strings decodes into hundreds of
 * megabytes. prescan walks the wire bytes without allocating and counts
 * query vectors, query keys, exclusions and unknown fields, so a request
 * over --max-batch or --max-excludes is refused before decoding; the
 * allocator's budget then bounds whatever the counts allow.
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "server/server.h"

/* Unknown fields a request may carry (protobuf-c keeps each one). */
#define SRV_MAX_UNKNOWN_FIELDS 1024

int
cdx__srv_budget_take(cdx_server *s, size_t bytes)
{
	size_t used = atomic_fetch_add(&s->rx_used, bytes) + bytes;
	if (used > s->rx_budget) {
		atomic_fetch_sub(&s->rx_used, bytes);
		return -1;
	}
	return 0;
}

void
cdx__srv_budget_give(cdx_server *s, size_t bytes)
{
	atomic_fetch_sub(&s->rx_used, bytes);
}

/* The decoded request's blocks carry their accounted size in front. */
#define HDR 16

static void *
budget_alloc(void *data, size_t size)
{
	struct srv_ctx *x = data;
	if (size > SIZE_MAX - HDR)
		return NULL;
	/* account what malloc really uses, not what was asked: a million
	 * one-byte strings cost a million 32-byte chunks */
	size_t charge = CDX_MAX(size + HDR, (size_t) 32);
	if (cdx__srv_budget_take(x->s, charge) != 0) {
		x->over_budget = 1;
		return NULL;
	}
	uint8_t *p = malloc(size + HDR);
	if (p == NULL) {
		cdx__srv_budget_give(x->s, charge);
		return NULL;
	}
	memcpy(p, &charge, sizeof(charge));
	x->reserved += charge;
	return p + HDR;
}

static void
budget_free(void *data, void *ptr)
{
	struct srv_ctx *x = data;
	if (ptr == NULL)
		return;
	uint8_t *p = (uint8_t *) ptr - HDR;
	size_t charge;
	memcpy(&charge, p, sizeof(charge));
	free(p);
	cdx__srv_budget_give(x->s, charge);
	x->reserved -= charge;
}

void
cdx__srv_allocator_init(struct srv_ctx *x)
{
	x->alloc = (ProtobufCAllocator) { .alloc = budget_alloc, .free = budget_free, .allocator_data = x };
}

/* ---- the wire walk ---------------------------------------------------- */

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

/* field walks one field: *num and *wt are its number and wire type, and
 * [*val, *val + *len) its payload (a varint's bytes, or the bytes of a
 * length-delimited field). Returns -1 on bytes that cannot be a field. */
static int
field(const uint8_t **p, const uint8_t *end, uint64_t *num, int *wt, const uint8_t **val, size_t *len)
{
	uint64_t tag, v;
	if (get_varint(p, end, &tag) != 0)
		return -1;
	*num = tag >> 3;
	*wt = (int) (tag & 7);
	*val = *p;
	switch (*wt) {
	case 0:
		if (get_varint(p, end, &v) != 0)
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
		if (get_varint(p, end, &v) != 0 || v > (uint64_t) (end - *p))
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
				get_varint(&q, val + n, &v);
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
		case 1:
		case 5:
		case 6:
		case 7:
		case 10:
		case 11:
			break;
		default:
			c->unknown++;
		}
	}
	return 0;
}

int
cdx__srv_prescan(const uint8_t *p, size_t len, struct srv_counts *c)
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
		} else if (num > 13 || num == 0 || (num > 3 && num < 10)) {
			c->unknown++;
		}
	}
	return 0;
}

int
cdx__srv_counts_check(const struct cdx_server_config *cfg, const struct srv_counts *c, char *msg, size_t size)
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
			return;
		}
	}
}
