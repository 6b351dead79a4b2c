/*
 * select.c — row sets and id sets (select.h).
 */
#include <stdlib.h>
#include <string.h>

#include "search/collection_int.h"
#include "search/select.h"

int
cdx_rowset_alloc(cdx_rowset **out, const cdx_collection *c)
{
	*out = NULL;
	cdx_rowset *r = calloc(1, sizeof(*r));
	if (r == NULL || (r->bits = calloc(c->d->nshards, sizeof(uint64_t *))) == NULL) {
		free(r);
		return cdx_error(CDX_ENOMEM, "row set");
	}
	atomic_init(&r->refs, 1);
	r->nshards = c->d->nshards;
	for (uint32_t s = 0; s < r->nshards; s++) {
		if ((r->bits[s] = calloc(c->d->shards[s].rows / 64 + 1, sizeof(uint64_t))) == NULL) {
			cdx_rowset_unref(r);
			return cdx_error(CDX_ENOMEM, "row set");
		}
	}
	*out = r;
	return CDX_OK;
}

void
cdx_rowset_add(cdx_rowset *r, uint32_t shard, uint32_t row)
{
	uint64_t bit = (uint64_t) 1 << (row % 64);
	if ((r->bits[shard][row / 64] & bit) == 0) {
		r->bits[shard][row / 64] |= bit;
		r->count++;
	}
}

void
cdx_rowset_ref(cdx_rowset *r)
{
	atomic_fetch_add_explicit(&r->refs, 1, memory_order_relaxed);
}

void
cdx_rowset_unref(cdx_rowset *r)
{
	if (r == NULL || atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) != 1)
		return;
	for (uint32_t s = 0; s < r->nshards; s++)
		free(r->bits[s]);
	free(r->bits);
	free(r);
}

int
cdx_idset_init(struct cdx_idset *s, size_t n, int64_t lo, int64_t hi)
{
	memset(s, 0, sizeof(*s));
	uint64_t span = (uint64_t) hi - (uint64_t) lo + 1;
	if (hi >= lo && span != 0 && span / 64 <= 2 * (uint64_t) n) {
		if ((s->bits = calloc(span / 64 + 1, sizeof(uint64_t))) == NULL)
			return cdx_error(CDX_ENOMEM, "exclusion set of %zu ids", n);
		s->lo = lo;
		s->span = span;
		return CDX_OK;
	}
	uint64_t cap = 16;
	while (cap < (uint64_t) n * 2)
		cap *= 2;
	if ((s->slots = malloc(cap * sizeof(int64_t))) == NULL)
		return cdx_error(CDX_ENOMEM, "exclusion set of %zu ids", n);
	for (uint64_t i = 0; i < cap; i++)
		s->slots[i] = CDX_IDSET_EMPTY;
	s->mask = cap - 1;
	return CDX_OK;
}

void
cdx_idset_add(struct cdx_idset *s, int64_t id)
{
	if (s->bits != NULL) {
		uint64_t o = (uint64_t) id - (uint64_t) s->lo;
		if (o < s->span && ((s->bits[o / 64] >> (o % 64)) & 1) == 0) {
			s->bits[o / 64] |= (uint64_t) 1 << (o % 64);
			s->n++;
		}
		return;
	}
	if (id == CDX_IDSET_EMPTY) {
		s->has_empty = 1;
		return;
	}
	uint64_t i = cdx_mix64((uint64_t) id) & s->mask;
	for (; s->slots[i] != CDX_IDSET_EMPTY; i = (i + 1) & s->mask)
		if (s->slots[i] == id)
			return;
	s->slots[i] = id;
	s->n++;
}

void
cdx_idset_fini(struct cdx_idset *s)
{
	free(s->slots);
	free(s->bits);
	memset(s, 0, sizeof(*s));
}
