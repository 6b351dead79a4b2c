/*
 * recommend.c — parts, merge and exploration (see recommend.h DESIGN).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "recommend/recommend.h"

uint32_t
cdx_rec_pool(const struct cdx_rec_request *r)
{
	if (r->explore_slots == 0)
		return 0;
	return r->explore_pool > 0 ? r->explore_pool : CDX_REC_POOL_FACTOR * r->k;
}

double
cdx_rec_explore(size_t n, uint32_t x, uint32_t e, uint32_t pool, uint64_t seed, int64_t *slot_of)
{
	size_t avail = n > x ? CDX_MIN(n - x, (size_t) pool) : 0;
	for (uint32_t j = 0; j < e; j++)
		slot_of[j] = -1;
	if (avail == 0 || e == 0)
		return 0;
	/* a partial Fisher-Yates shuffle of the pool positions: the first
	 * min(e, avail) of a uniformly random permutation */
	size_t *perm = malloc(avail * sizeof(size_t));
	if (perm == NULL)
		return -1;
	for (size_t j = 0; j < avail; j++)
		perm[j] = j;
	cdx_rng rng;
	cdx_rng_seed(&rng, seed);
	for (uint32_t j = 0; j < e && j < avail; j++) {
		size_t pick = j + (size_t) (cdx_rng_uniform(&rng) * (double) (avail - j));
		size_t t = perm[j];
		perm[j] = perm[pick];
		perm[pick] = t;
		slot_of[j] = (int64_t) (x + perm[j]);
	}
	free(perm);
	return 1.0 / (double) avail;
}

/* One item of a part's list while merging. */
struct entry {
	double key; /* ascending = merged order */
	int head;   /* within its part's quota (sorts before the tail) */
	uint32_t part, rank;
	const struct cdx_hit *hit;
};

static int
cmp_entry(const void *a, const void *b)
{
	const struct entry *x = a, *y = b;
	if (x->head != y->head)
		return x->head ? -1 : 1;
	if (x->key != y->key)
		return x->key < y->key ? -1 : 1;
	if (x->part != y->part)
		return x->part < y->part ? -1 : 1;
	return x->rank < y->rank ? -1 : x->rank > y->rank;
}

/* merge_query orders query i's part lists (L each) into entries; returns
 * how many. */
static size_t
merge_query(
    const struct cdx_rec_request *r, size_t i, uint32_t L, struct cdx_hit *const *lists, struct entry *out)
{
	size_t n = 0;
	for (uint32_t p = 0; p < r->nparts; p++) {
		const struct cdx_rec_part *part = &r->parts[p];
		const struct cdx_hit *h = lists[p] + i * L;
		uint32_t quota = part->quota > 0 ? part->quota : r->k;
		for (uint32_t j = 0; j < L && h[j].id >= 0; j++) {
			struct entry *e = &out[n++];
			e->part = p;
			e->rank = j;
			e->hit = &h[j];
			if (r->merge == CDX_REC_MERGE_CALIBRATED) {
				double z = part->calib_scale * (double) h[j].score + part->calib_offset;
				e->key = -1.0 / (1.0 + exp(-z));
				e->head = j < quota;
			} else {
				/* (r + 0.5) / q orders the whole list: the head needs no flag */
				e->key = ((double) j + 0.5) / (double) quota;
				e->head = 1;
			}
		}
	}
	qsort(out, n, sizeof(*out), cmp_entry);
	return n;
}

int
cdx_rec_search(struct cdx_rec_request *r, struct cdx_rec_hit *hits, uint8_t *exhausted)
{
	if (r->nparts == 0 || r->nparts > CDX_REC_MAX_PARTS)
		return cdx_error(
		    CDX_EINVAL, "%zu collections in one search (1 to %d)", r->nparts, CDX_REC_MAX_PARTS);
	if (r->k == 0)
		return cdx_error(CDX_EINVAL, "k must be at least 1");
	uint32_t e = CDX_MIN(r->explore_slots, r->k), x = r->k - e, pool = cdx_rec_pool(r);
	uint64_t depth = e > 0 ? (uint64_t) x + pool : r->k;
	if (depth > (1u << 20))
		return cdx_error(
		    CDX_ELIMIT, "k and exploration pool of %llu candidates", (unsigned long long) depth);
	uint32_t L = (uint32_t) depth;
	struct cdx_hit *lists[CDX_REC_MAX_PARTS] = { NULL };
	struct entry *merged = NULL;
	int64_t *slot_of = NULL;
	int rc = CDX_OK;
	for (size_t p = 0; p < r->nparts && rc == CDX_OK; p++) {
		struct cdx_rec_part *part = &r->parts[p];
		if ((lists[p] = malloc(r->nq * L * sizeof(struct cdx_hit))) == NULL) {
			rc = cdx_error(CDX_ENOMEM, "%zu x %u candidates", r->nq, L);
			break;
		}
		struct cdx_search_params sp = {
			.k = L,
			.nprobe = r->nprobe,
			.refine_factor = r->refine_factor,
			.recall_target = r->recall_target,
			.escalate = r->escalate,
			.exclude_ids = part->exclude_ids,
			.n_exclude_ids = part->n_exclude_ids,
			.exclude_keys = part->exclude_keys,
			.n_exclude_keys = part->n_exclude_keys,
			.parallel = r->parallel,
			.used = &part->used,
			.deadline_us = r->deadline_us,
			.filter = part->filter,
			.blocked = part->blocked,
			.max_per_group = r->max_per_group,
			.group_by = r->group_by,
		};
		rc = cdx_collection_search(part->coll, &sp, part->queries, r->nq, lists[p]);
		if (rc != CDX_OK && r->nparts > 1)
			rc = cdx_error(rc, "collection %s: %s",
			    cdx_collection_manifest(part->coll)->collection, cdx_last_error());
	}
	size_t cap = (size_t) L * r->nparts;
	if (rc == CDX_OK
	    && ((merged = malloc(cap * sizeof(*merged))) == NULL
	        || (slot_of = malloc((e ? e : 1) * sizeof(int64_t))) == NULL))
		rc = cdx_error(CDX_ENOMEM, "merging %zu candidates", cap);
	for (size_t i = 0; rc == CDX_OK && i < r->nq; i++) {
		struct cdx_rec_hit *out = hits + i * r->k;
		size_t n = merge_query(r, i, L, lists, merged), filled = 0;
		for (uint32_t j = 0; j < x && j < n; j++, filled++) {
			const struct entry *en = &merged[j];
			out[filled] = (struct cdx_rec_hit) { en->hit->id, en->hit->score, en->part,
				en->hit->shard, en->hit->row, j + 1, 0, 1.0 };
		}
		double prop = cdx_rec_explore(n, x, e, pool, cdx_rec_query_seed(r->seed, i), slot_of);
		if (prop < 0) {
			rc = cdx_error(CDX_ENOMEM, "exploration pool");
			break;
		}
		for (uint32_t j = 0; j < e && slot_of[j] >= 0; j++, filled++) {
			const struct entry *en = &merged[slot_of[j]];
			out[filled] = (struct cdx_rec_hit) { en->hit->id, en->hit->score, en->part,
				en->hit->shard, en->hit->row, (uint32_t) slot_of[j] + 1, 1, prop };
		}
		for (size_t j = filled; j < r->k; j++)
			out[j] = (struct cdx_rec_hit) { .id = -1 };
		if (exhausted != NULL)
			exhausted[i] = filled < r->k;
	}
	for (size_t p = 0; p < r->nparts; p++)
		free(lists[p]);
	free(merged);
	free(slot_of);
	return rc;
}
