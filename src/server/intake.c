/*
 * intake.c — the receive-memory budget, and the protobuf-c allocator that
 * decodes requests within it (the checks before decoding are in
 * request.c).
 *
 * DESIGN
 * The budget (what --max-receive-memory leaves after the share of the
 * frames nng is still receiving, which is at most half; see
 * cdx__srv_limits_init) covers every byte a received request holds: the
 * message nng handed over, from receipt until it is decoded, and every
 * allocation of its decoded form, until the response is sent. A request
 * that does not fit is answered OVERLOADED at once, so a flood of large
 * requests cannot grow the heap past the budget however the requests are
 * shaped.
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "server/server.h"

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
