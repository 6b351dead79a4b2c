/*
 * select.h — which rows a search may return, beyond what it is nearest to:
 * a row set of a loaded version (the server's takedowns) and an id set (a
 * request's exclusions). search.c tests both, with the request's filter,
 * on every code the scan visits (cdx_search_params).
 */
#ifndef CANDEX_SELECT_H
#define CANDEX_SELECT_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "search/search.h"

/* A set of rows of one loaded version: a bitmap per shard. Built once (by
 * the server, when a version loads or its takedowns change), then
 * read-only and shared by every request; reference-counted. */
typedef struct cdx_rowset {
	atomic_long refs;
	uint32_t nshards;
	uint64_t count;  /* rows set */
	uint64_t **bits; /* [shard][row / 64] */
} cdx_rowset;

/* cdx_rowset_alloc makes an empty set for c's rows; *out has one reference. */
int cdx_rowset_alloc(cdx_rowset **out, const cdx_collection *c);
void cdx_rowset_add(cdx_rowset *r, uint32_t shard, uint32_t row); /* before sharing only */
void cdx_rowset_ref(cdx_rowset *r);
void cdx_rowset_unref(cdx_rowset *r); /* NULL is a no-op */

static inline int
cdx_rowset_has(const cdx_rowset *r, uint32_t shard, uint32_t row)
{
	return (r->bits[shard][row / 64] >> (row % 64)) & 1;
}

/* A set of int64 ids, for one request's exclusions: a bitmap over
 * [lo, lo + span) when the ids are dense enough for it to take no more
 * memory than a hash table (a listening history of ids from one catalogue
 * usually is: building it costs no random writes into a large table), else
 * open addressing. */
struct cdx_idset {
	int64_t *slots; /* hash mode; CDX_IDSET_EMPTY marks a free slot */
	uint64_t mask;
	size_t n;
	int has_empty;  /* the id equal to the marker is in the set */
	uint64_t *bits; /* bitmap mode (slots NULL) */
	int64_t lo;
	uint64_t span;
};
#define CDX_IDSET_EMPTY INT64_MIN

/* cdx_idset_init sizes s for up to n ids between lo and hi (inclusive;
 * never grows); _fini frees it. */
int cdx_idset_init(struct cdx_idset *s, size_t n, int64_t lo, int64_t hi);
void cdx_idset_add(struct cdx_idset *s, int64_t id);
void cdx_idset_fini(struct cdx_idset *s);

static inline int
cdx_idset_has(const struct cdx_idset *s, int64_t id)
{
	if (s->bits != NULL) {
		uint64_t o = (uint64_t) id - (uint64_t) s->lo;
		return o < s->span && (s->bits[o / 64] >> (o % 64)) & 1;
	}
	if (id == CDX_IDSET_EMPTY)
		return s->has_empty;
	for (uint64_t i = cdx_mix64((uint64_t) id) & s->mask;; i = (i + 1) & s->mask) {
		if (s->slots[i] == id)
			return 1;
		if (s->slots[i] == CDX_IDSET_EMPTY)
			return 0;
	}
}

#endif
