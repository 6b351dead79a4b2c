/*
 * recommend.h — a ranker's request over one or more collections: each
 * collection searched with its filter, exclusions and takedowns (search.h),
 * the lists merged under per-collection quotas, and exploration slots
 * filled by sampling with known propensities.
 *
 * DESIGN
 * Every collection ("part") is searched for L = k results (L = k - E + P
 * with E exploration slots and a pool of P), crowded by its own group
 * attribute. The lists are merged into one ranked list M:
 *
 *   interleave (default): the r-th item (0-based) of a part with quota q
 *     sorts at (r + 0.5) / q, so every prefix of M holds the parts in
 *     proportion to their quotas and the first sum(q) items hold exactly q
 *     of each part that has them; a part with fewer leaves its slots to the
 *     others. Only ranks are compared: scores of different collections
 *     (different models, metrics, score scales) never are.
 *   calibrated: each part's scores become probabilities
 *     p = 1 / (1 + exp(-(scale x score + offset))) (Platt scaling, fitted
 *     offline per collection on observed rewards); the first q items of
 *     each part are ordered by p, then everything else by p.
 *
 * With one part, M is that collection's list. The first k - E items of M
 * are the exploit slots (propensity 1: the policy shows them there for
 * certain, given the query and the served index). The E exploration slots
 * that follow are drawn uniformly without replacement from the pool
 * M[k-E .. k-E+P) (the next P ranks of the same query), in draw order;
 * every pool item has propensity 1 / |pool| in every exploration slot (for
 * uniform sampling without replacement each slot's marginal is uniform). The
 * draw uses a splitmix64 stream seeded from the request's seed and the
 * query's index in the batch, so the same seed reproduces the same slots.
 */
#ifndef CANDEX_RECOMMEND_H
#define CANDEX_RECOMMEND_H

#include <stddef.h>
#include <stdint.h>

#include "search/search.h"

#define CDX_REC_MAX_PARTS 16

enum cdx_rec_merge { CDX_REC_MERGE_INTERLEAVE = 0, CDX_REC_MERGE_CALIBRATED = 1 };

/* One collection of a request. Borrowed pointers, valid for the call. */
struct cdx_rec_part {
	const cdx_collection *coll;
	const struct cdx_rowset *blocked; /* takedowns, or NULL */
	const char *filter;               /* or NULL */
	const float *queries;             /* nq x the collection's dim */
	const int64_t *exclude_ids;
	size_t n_exclude_ids;
	const char *const *exclude_keys;
	size_t n_exclude_keys;
	uint32_t quota;                   /* > 0 with several parts */
	double calib_scale, calib_offset; /* CDX_MERGE_CALIBRATED */
	struct cdx_search_used used;      /* out: what its search used */
};

struct cdx_rec_request {
	struct cdx_rec_part *parts;
	size_t nparts; /* 1 .. CDX_REC_MAX_PARTS */
	size_t nq;
	uint32_t k;
	/* search settings, for every part (search.h) */
	uint32_t nprobe;
	float refine_factor;
	float recall_target;
	uint32_t escalate;
	int parallel;
	const atomic_uint_fast64_t *deadline_us; /* search.h's; NULL = none */
	uint32_t max_per_group;
	const char *group_by;
	/* exploration: explore_slots of the k, from a pool of explore_pool */
	uint32_t explore_slots;
	uint32_t explore_pool; /* 0 = CDX_REC_POOL_FACTOR x k */
	uint64_t seed;
	int merge; /* enum cdx_rec_merge */
};
#define CDX_REC_POOL_FACTOR 4

struct cdx_rec_hit {
	int64_t id; /* -1: no hit (fewer than k) */
	float score;
	uint32_t part; /* index into parts */
	uint32_t shard, row;
	uint32_t rank;     /* 1-based rank in the merged list */
	int explore;       /* filled by exploration */
	double propensity; /* of this item in this slot */
};

/* cdx_rec_pool returns the pool size a request explores from. */
uint32_t cdx_rec_pool(const struct cdx_rec_request *r);

/* cdx_rec_search runs r. hits holds nq x k entries (query i at i x k; best
 * first, exploration slots after the exploit ones, padded with id -1);
 * exhausted (may be NULL) nq flags: fewer than k items pass at all. Errors
 * from a part's search name its collection. */
int cdx_rec_search(struct cdx_rec_request *r, struct cdx_rec_hit *hits, uint8_t *exhausted);

/* cdx_rec_explore draws the exploration of one query: given a merged list
 * of n items (n may be below x + pool), x exploit slots and e exploration
 * slots, it writes into slot_of[0..e) the list positions drawn for the
 * exploration slots (-1 when the pool runs out) and returns the propensity
 * of each drawn item (1 / pool size; 0 if none). Deterministic in seed. */
double cdx_rec_explore(size_t n, uint32_t x, uint32_t e, uint32_t pool, uint64_t seed, int64_t *slot_of);

/* cdx_rec_query_seed: the seed of query i of a request with seed. */
static inline uint64_t
cdx_rec_query_seed(uint64_t seed, size_t i)
{
	return cdx_mix64(seed ^ cdx_mix64((uint64_t) i + 1));
}

#endif
