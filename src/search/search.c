/*
 * search.c — one request's search over every shard of a collection: coarse
 * assignment once, per-shard IVF scan with the request's nprobe, exclusion,
 * optional exact re-ranking, and a merge into one top-k.
 *
 * Nothing here writes to a shared Faiss object (see search.h DESIGN), so any
 * number of threads may search one collection at once.
 *
 * Selections (a filter, takedowns, exclusions) are tested on every code the
 * scan visits through Faiss's IDSelector (faissx), so each shard's kf
 * candidates are the nearest rows that pass; index types whose scan cannot
 * take a selector are searched plain and their results filtered. Crowding
 * (max_per_group) is applied in the merge, before the top k is cut. A query
 * with a selection or crowding that ends with fewer rows than it needs, or (with a selection) whose
 * probed lists held fewer than kf rows that pass (a filter whose items lie
 * away from the query), is searched again, alone, with twice the
 * candidates (when a shard filled all of its kf but crowding dropped some)
 * or twice the lists, until it is satisfied or has searched everything
 * (then `exhausted`).
 * What it needs is the request's k tier (points.h) rather than k when a
 * selection is on, so that every k of a tier widens alike and answers
 * still agree across k. A filter or takedowns also choose the operating
 * point as if k were tier / selectivity: the filtered top k lie about as
 * deep in the lists as the unfiltered top k / selectivity do.
 */
#define _GNU_SOURCE
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "faissx/faissx.h"
#include "search/collection_int.h"
#include "search/filter.h"
#include "faissx/error.h"
#include "search/points.h"
#include "search/select.h"

struct candidate {
	float score;
	uint32_t shard;
	uint32_t row;
	int64_t id;
};

/* Per-call scratch, allocated once per request. */
struct search_ctx {
	const cdx_collection *c;
	const struct cdx_search_params *p;
	size_t kf;   /* results fetched per shard per query */
	size_t qdim; /* floats a query has as the searched Faiss index takes it */
	size_t nprobe;
	float refine;
	int higher_better;
	struct cdx_idset excl; /* excluded ids (ids and keys' ids); n 0 and no marker: none */
	int excluding;
	cdx_filter *filter;
	const cdx_rowset *blocked;
	int selecting; /* a filter, takedowns or exclusions: rows are tested */
	int thinning;  /* a filter or takedowns: a share of every list is left out */
	int crowd_col; /* crowding's group column, -1 = none */
	uint32_t crowd_cap;
	size_t need;     /* results a query must reach before it stops widening */
	size_t seen_min; /* with a selection: rows that pass its probed lists must hold (kf) */
	uint64_t *codes; /* codes scanned (atomically added to by every slice) */
};

/* Scratch of one merge: group counts for crowding (open addressing). */
struct crowd {
	int64_t *groups;
	uint32_t *counts;
	uint64_t mask;
};

static int
cmp_cand_low(const void *a, const void *b)
{
	const struct candidate *x = a, *y = b;
	if (x->score != y->score)
		return x->score < y->score ? -1 : 1;
	return x->id < y->id ? -1 : x->id > y->id;
}

static int
cmp_cand_high(const void *a, const void *b)
{
	const struct candidate *x = a, *y = b;
	if (x->score != y->score)
		return x->score > y->score ? -1 : 1;
	return x->id < y->id ? -1 : x->id > y->id;
}

uint32_t
cdx_collection_effective_nprobe(const cdx_collection *c, uint32_t requested)
{
	if (c->d->nlist == 0)
		return 0;
	uint32_t n = requested ? requested : c->manifest->default_nprobe;
	if (n == 0)
		n = 1;
	return (uint32_t) CDX_MIN((size_t) n, c->d->nprobe_cap);
}

int
cdx_collection_has_refine(const cdx_collection *c)
{
	for (uint32_t i = 0; i < c->d->nshards; i++)
		if (c->d->shards[i].refine_data == NULL)
			return 0;
	return 1;
}

float
cdx_collection_effective_refine(const cdx_collection *c, float requested)
{
	float f = requested > 0 ? requested : c->manifest->default_refine_factor;
	return f >= 1.0f && cdx_collection_has_refine(c) ? f : 0.0f;
}

/* prepare_selection compiles the filter and builds the exclusion set. */
static int
prepare_selection(struct search_ctx *x)
{
	const struct cdx_search_params *p = x->p;
	const cdx_collection *c = x->c;
	int rc;
	x->crowd_col = -1;
	if (p->filter != NULL && p->filter[0] != '\0'
	    && (rc = cdx_filter_compile(&x->filter, p->filter, c->d->attrs)) != CDX_OK)
		return rc;
	x->blocked = p->blocked != NULL && p->blocked->count > 0 ? p->blocked : NULL;
	size_t nex = p->n_exclude_ids + p->n_exclude_keys;
	if (nex > 0) {
		int64_t *key_ids = p->n_exclude_keys ? malloc(p->n_exclude_keys * sizeof(int64_t)) : NULL;
		size_t nk = 0;
		if (p->n_exclude_keys > 0 && key_ids == NULL)
			return cdx_error(CDX_ENOMEM, "exclusion list");
		for (size_t i = 0; i < p->n_exclude_keys; i++) {
			uint32_t shard, row;
			/* A key the collection does not hold cannot be returned anyway. */
			if (cdx_collection_find_key(c, p->exclude_keys[i], &shard, &row, NULL) == CDX_OK)
				key_ids[nk++] = c->d->shards[shard].ids[row];
		}
		cdx_error_clear();
		int64_t lo = INT64_MAX, hi = INT64_MIN;
		for (size_t i = 0; i < p->n_exclude_ids; i++) {
			lo = CDX_MIN(lo, p->exclude_ids[i]);
			hi = CDX_MAX(hi, p->exclude_ids[i]);
		}
		for (size_t i = 0; i < nk; i++) {
			lo = CDX_MIN(lo, key_ids[i]);
			hi = CDX_MAX(hi, key_ids[i]);
		}
		if ((rc = cdx_idset_init(&x->excl, nex, lo, hi)) != CDX_OK) {
			free(key_ids);
			return rc;
		}
		for (size_t i = 0; i < p->n_exclude_ids; i++)
			cdx_idset_add(&x->excl, p->exclude_ids[i]);
		for (size_t i = 0; i < nk; i++)
			cdx_idset_add(&x->excl, key_ids[i]);
		free(key_ids);
		x->excluding = x->excl.n > 0 || x->excl.has_empty;
	}
	x->selecting = x->filter != NULL || x->blocked != NULL || x->excluding;
	x->thinning = x->filter != NULL || x->blocked != NULL;
	if (p->max_per_group > 0) {
		const struct cdx_attr_schema *a = c->d->attrs;
		const char *g = p->group_by;
		if (g != NULL && g[0] != '\0') {
			x->crowd_col = cdx_attr_find(a, g, strlen(g));
			if (x->crowd_col < 0)
				return cdx_error(CDX_EINVAL,
				    "group_by: collection %s has no attribute '%.64s'",
				    c->manifest->collection, g);
		} else {
			for (uint32_t i = 0; a != NULL && i < a->ncols && x->crowd_col < 0; i++)
				if (a->cols[i].type == CDX_ATTR_GROUP)
					x->crowd_col = (int) i;
			if (x->crowd_col < 0)
				return cdx_error(CDX_EINVAL,
				    "max_per_group: collection %s has no group attribute (build it with "
				    "--attrs "
				    "and a name:group column)",
				    c->manifest->collection);
		}
		x->crowd_cap = p->max_per_group;
	}
	return CDX_OK;
}

/* row_passes: the filter, takedowns and exclusions let (shard, row) through. */
static int
row_passes(const struct search_ctx *x, uint32_t shard, uint32_t row)
{
	const struct cdx_loaded_shard *ls = &x->c->d->shards[shard];
	if (x->blocked != NULL && cdx_rowset_has(x->blocked, shard, row))
		return 0;
	if (x->excluding && cdx_idset_has(&x->excl, ls->ids[row]))
		return 0;
	return x->filter == NULL || cdx_filter_match(x->filter, &ls->attrs, row);
}

struct member_ctx {
	const struct search_ctx *x;
	uint32_t shard;
};

static int
member(const void *arg, int64_t label)
{
	const struct member_ctx *m = arg;
	return row_passes(m->x, m->shard, (uint32_t) label);
}

/* estimate_selectivity: the share of rows the filter and takedowns keep,
 * over an evenly spaced sample of at most 2048 rows (deterministic). */
static double
estimate_selectivity(const struct search_ctx *x)
{
	const struct cdx_collection_data *d = x->c->d;
	uint64_t step = d->items / 2048 + 1, seen = 0, kept = 0;
	for (uint32_t s = 0; s < d->nshards; s++) {
		for (uint64_t r = (s * 7919) % step; r < d->shards[s].rows; r += step) {
			seen++;
			kept += row_passes(x, s, (uint32_t) r);
		}
	}
	if (seen == 0)
		return 1.0;
	/* nothing kept in the sample: at most about one row in 2 x seen */
	return kept > 0 ? (double) kept / (double) seen : 0.5 / (double) seen;
}

/* Query slices are this small when a deadline is set, so that the search
 * notices it passing within a fraction of its run time. */
#define DEADLINE_SLICE 32

/* past_deadline: the caller's deadline has passed (CDX_ETIMEDOUT set). */
static int
past_deadline(const struct search_ctx *x)
{
	if (x->p->deadline_us == NULL || cdx_now_us() <= atomic_load(x->p->deadline_us))
		return 0;
	cdx_error(CDX_ETIMEDOUT, "deadline passed during the search");
	return 1;
}

/* pad_assignment writes nq rows of the coarse assignment (x->nprobe lists
 * each) with stride nprobe cap into keys and kdis (malloc'd), padded with -1
 * lists that IndexIVF::search_preassigned skips (search.h DESIGN). */
static int
pad_assignment(
    const struct search_ctx *x, size_t nq, const idx_t *assign, const float *cdis, idx_t **keys, float **kdis)
{
	size_t cap = x->c->d->nprobe_cap, np = CDX_MIN(x->nprobe, x->c->d->nlist);
	*keys = malloc(nq * cap * sizeof(idx_t));
	*kdis = malloc(nq * cap * sizeof(float));
	if (*keys == NULL || *kdis == NULL)
		return cdx_error(CDX_ENOMEM, "coarse assignment for %zu queries", nq);
	for (size_t i = 0; i < nq; i++) {
		for (size_t j = 0; j < cap; j++) {
			(*keys)[i * cap + j] = j < np ? assign[i * np + j] : -1;
			(*kdis)[i * cap + j] = j < np ? cdis[i * np + j] : 0;
		}
	}
	return CDX_OK;
}

/* Searches queries [q0, q1) of q (index space: x->qdim floats each) on
 * every shard; D/I are [shard][q1 - q0][kf]. */
static int
search_slice(const struct search_ctx *x, const float *q, size_t q0, size_t q1, float *D, idx_t *I)
{
	const cdx_collection *c = x->c;
	size_t nq = q1 - q0, kf = x->kf;
	const float *qs = q + q0 * x->qdim;
	idx_t *assign = NULL, *keys = NULL;
	float *cdis = NULL, *kdis = NULL;
	int rc = CDX_OK;

	size_t np = CDX_MIN(x->nprobe, c->d->nlist);
	if (c->d->nlist > 0) {
		assign = malloc(nq * np * sizeof(idx_t));
		cdis = malloc(nq * np * sizeof(float));
		if (assign == NULL || cdis == NULL) {
			rc = cdx_error(CDX_ENOMEM, "coarse assignment for %zu queries", nq);
			goto done;
		}
		if (faiss_Index_search(c->d->quantizer, (idx_t) nq, qs, (idx_t) np, cdis, assign) != 0) {
			rc = cdx_error_faiss("coarse quantizer search");
			goto done;
		}
		uint64_t codes = 0;
		for (size_t i = 0; i < nq * np; i++)
			if (assign[i] >= 0)
				codes += c->d->list_sizes[assign[i]];
		__atomic_fetch_add(x->codes, codes, __ATOMIC_RELAXED);
	}
	for (uint32_t s = 0; s < c->d->nshards && rc == CDX_OK; s++) {
		struct cdx_loaded_shard *ls = &c->d->shards[s];
		if (past_deadline(x)) {
			rc = CDX_ETIMEDOUT;
			break;
		}
		float *dst_d = D + ((size_t) s * nq) * kf;
		idx_t *dst_i = I + ((size_t) s * nq) * kf;
		int frc;
		struct member_ctx mc = { x, s };
		int in_scan = x->selecting && ls->selector_scan;
		if (ls->ivf != NULL && ls->fastscan) {
			/* selections are tested on its candidates in merge_query */
			cdx_fx_view *v;
			if ((rc = cdx__shard_view_acquire(ls, &v)) != CDX_OK)
				break;
			frc = cdx_fx_view_search(v, nq, qs, kf, np, assign, cdis, dst_d, dst_i);
			cdx__shard_view_release(ls, v);
		} else if (ls->ivf != NULL && ls->preassigned && (in_scan || np > c->d->nprobe_cap)) {
			/* a filtered scan, or wider than the shared index's nprobe */
			frc = cdx_fx_ivf_search_sel((const FaissIndex *) ls->ivf, nq, qs, kf, assign, cdis,
			    np, dst_d, dst_i, in_scan ? member : NULL, &mc);
		} else if (ls->ivf != NULL && ls->preassigned) {
			if (keys == NULL
			    && (rc = pad_assignment(x, nq, assign, cdis, &keys, &kdis)) != CDX_OK)
				break;
			frc = faiss_IndexIVF_search_preassigned(
			    ls->ivf, (idx_t) nq, qs, (idx_t) kf, keys, kdis, dst_d, dst_i, 0);
		} else if (ls->ivf != NULL) {
			pthread_mutex_lock(&ls->lock);
			faiss_IndexIVF_set_nprobe(ls->ivf, CDX_MIN(x->nprobe, c->d->nlist));
			frc = faiss_Index_search(ls->index, (idx_t) nq, qs, (idx_t) kf, dst_d, dst_i);
			faiss_IndexIVF_set_nprobe(ls->ivf, c->d->nprobe_cap);
			pthread_mutex_unlock(&ls->lock);
		} else if (in_scan) {
			frc = cdx_fx_search_sel(ls->index, nq, qs, kf, dst_d, dst_i, member, &mc);
		} else {
			frc = faiss_Index_search(ls->index, (idx_t) nq, qs, (idx_t) kf, dst_d, dst_i);
		}
		if (frc != 0)
			rc = cdx_error_faiss("shard search");
	}
done:
	free(assign);
	free(cdis);
	free(keys);
	free(kdis);
	return rc;
}

/* Serial search of a whole batch in chunks, so that the assignment arrays
 * (chunk x nprobe cap) stay small whatever the batch size. */
static int
search_chunked(const struct search_ctx *x, const float *q, size_t nq, float *D, idx_t *I)
{
	size_t chunk = x->p->deadline_us ? DEADLINE_SLICE : 256;
	if (nq <= chunk)
		return search_slice(x, q, 0, nq, D, I);
	size_t nshards = x->c->d->nshards, kf = x->kf;
	float *Dc = malloc(nshards * chunk * kf * sizeof(float));
	idx_t *Ic = malloc(nshards * chunk * kf * sizeof(idx_t));
	int rc = Dc && Ic ? CDX_OK : cdx_error(CDX_ENOMEM, "search buffers");
	for (size_t a = 0; rc == CDX_OK && a < nq; a += chunk) {
		size_t b = CDX_MIN(nq, a + chunk), sn = b - a;
		rc = search_slice(x, q, a, b, Dc, Ic);
		for (size_t s = 0; rc == CDX_OK && s < nshards; s++) {
			memcpy(D + (s * nq + a) * kf, Dc + s * sn * kf, sn * kf * sizeof(float));
			memcpy(I + (s * nq + a) * kf, Ic + s * sn * kf, sn * kf * sizeof(idx_t));
		}
	}
	free(Dc);
	free(Ic);
	return rc;
}

/* crowd_take: whether a candidate of group g may still be taken (and
 * counts it if so). */
static int
crowd_take(struct crowd *cr, int64_t g, uint32_t cap)
{
	uint64_t i = cdx_mix64((uint64_t) g) & cr->mask;
	for (; cr->counts[i] != 0; i = (i + 1) & cr->mask)
		if (cr->groups[i] == g)
			break;
	if (cr->counts[i] >= cap)
		return 0;
	cr->groups[i] = g;
	cr->counts[i]++;
	return 1;
}

/* Merges query i's per-shard results into hits[0..kout): the candidates
 * that pass (tested again here: index types without a selector scan
 * returned all rows), scored, sorted, then taken best first within the
 * crowding cap. *got is how many were taken, at most x->need; *full says
 * whether some shard returned all kf it was asked for (more may exist);
 * *seen counts the candidates all shards returned that pass. */
static int
merge_query(const struct search_ctx *x, size_t i, size_t nq, const float *query, const float *D,
    const idx_t *I, struct candidate *cand, struct crowd *cr, struct cdx_hit *hits, size_t kout, size_t *got,
    int *full, size_t *seen)
{
	const cdx_collection *c = x->c;
	size_t kf = x->kf, n = 0;
	*full = 0;
	*seen = 0;
	for (uint32_t s = 0; s < c->d->nshards; s++) {
		const struct cdx_loaded_shard *ls = &c->d->shards[s];
		const float *d = D + ((size_t) s * nq + i) * kf;
		const idx_t *l = I + ((size_t) s * nq + i) * kf;
		size_t returned = 0, passed = n;
		for (size_t j = 0; j < kf; j++) {
			if (l[j] < 0)
				continue;
			returned++;
			if ((uint64_t) l[j] >= ls->rows)
				return cdx_error(CDX_EINTERNAL, "shard %u returned row %lld of %llu", s,
				    (long long) l[j], (unsigned long long) ls->rows);
			uint32_t row = (uint32_t) l[j];
			if (x->selecting && !row_passes(x, s, row))
				continue;
			float score = cdx_map_score(&c->d->map, query, d[j]);
			if (x->refine > 0)
				score = cdx_refine_distance(&ls->refine, row, query, c->manifest->metric);
			cand[n++] = (struct candidate) { score, s, row, ls->ids[row] };
		}
		if (returned == kf && kf < ls->rows)
			*full = 1;
		/* rows that pass: a fast-scan shard, filtered here and not in
		 * its scan, returned rows that do not */
		*seen += n - passed;
	}
	qsort(cand, n, sizeof(*cand), x->higher_better ? cmp_cand_high : cmp_cand_low);
	size_t taken = 0;
	if (x->crowd_col >= 0)
		memset(cr->counts, 0, (cr->mask + 1) * sizeof(uint32_t));
	for (size_t j = 0; j < n && taken < x->need; j++) {
		if (x->crowd_col >= 0) {
			const struct cdx_loaded_shard *ls = &c->d->shards[cand[j].shard];
			if (!crowd_take(cr, cdx_attr_get(&ls->attrs, (uint32_t) x->crowd_col, cand[j].row),
			        x->crowd_cap))
				continue;
		}
		if (taken < kout)
			hits[taken]
			    = (struct cdx_hit) { cand[j].id, cand[j].score, cand[j].shard, cand[j].row };
		taken++;
	}
	for (size_t j = taken; j < kout; j++)
		hits[j] = (struct cdx_hit) { -1, x->higher_better ? -INFINITY : INFINITY, 0, 0 };
	*got = taken;
	return CDX_OK;
}

/* satisfied: a query found what it needs. With a filter or takedowns, its
 * probed lists must also have held kf rows that pass: a filter whose items
 * lie away from the query leaves the nearest lists nearly empty of them,
 * and the k that are found there need not be the nearest that pass.
 * (Exclusions remove a known handful of items, not a share of each list.) */
static int
satisfied(const struct search_ctx *x, size_t got, size_t seen)
{
	return got >= x->need && (!x->thinning || seen >= x->seen_min);
}

/* widen searches query i (index space qi, original q) again, alone, with
 * more candidates or more lists each round, until it is satisfied or has
 * searched everything. *nprobe_used gets the widest nprobe used. */
static int
widen(const struct search_ctx *x, const float *qi, const float *q, int full, size_t got, size_t seen,
    struct cdx_hit *hits, size_t kout, struct crowd *cr, int *exhausted, uint32_t *nprobe_used)
{
	const struct cdx_collection_data *d = x->c->d;
	struct search_ctx y = *x;
	uint64_t max_rows = 1;
	for (uint32_t s = 0; s < d->nshards; s++)
		max_rows = CDX_MAX(max_rows, d->shards[s].rows);
	float *D = NULL;
	idx_t *I = NULL;
	struct candidate *cand = NULL;
	int rc = CDX_OK;
	*exhausted = 0;
	for (;;) {
		if (past_deadline(&y)) {
			rc = CDX_ETIMEDOUT;
			break;
		}
		/* crowding or a post-filter dropped some: deeper in the same lists */
		if (full && y.kf < max_rows && (got < y.need || (y.thinning && seen < y.seen_min)))
			y.kf = (size_t) CDX_MIN((uint64_t) y.kf * 2, max_rows);
		else if (d->nlist > 0 && y.nprobe < d->nlist)
			y.nprobe = CDX_MIN(y.nprobe * 2, d->nlist);
		else {
			*exhausted = 1;
			break;
		}
		free(D);
		free(I);
		free(cand);
		D = malloc(d->nshards * y.kf * sizeof(float));
		I = malloc(d->nshards * y.kf * sizeof(idx_t));
		cand = malloc(d->nshards * y.kf * sizeof(*cand));
		if (D == NULL || I == NULL || cand == NULL) {
			rc = cdx_error(CDX_ENOMEM, "widened search of %zu candidates", y.kf);
			break;
		}
		if ((rc = search_slice(&y, qi, 0, 1, D, I)) != CDX_OK
		    || (rc = merge_query(&y, 0, 1, q, D, I, cand, cr, hits, kout, &got, &full, &seen))
		        != CDX_OK)
			break;
		if (satisfied(&y, got, seen))
			break;
	}
	*nprobe_used = (uint32_t) y.nprobe;
	free(D);
	free(I);
	free(cand);
	return rc;
}

/* index_queries maps nq queries (normalised for cos) into the space the
 * searched Faiss index takes: *qi (malloc'd; NULL when the queries go in
 * unchanged) and *qdim floats each. An IVF behind a pre-transform (PCA) is
 * searched directly (search.h DESIGN: candex runs the coarse quantizer
 * itself), so its queries go through the pre-transform here; any other
 * index applies its own. */
static int
index_queries(const cdx_collection *c, const float *q, size_t nq, float **qi, size_t *qdim)
{
	const struct cdx_vector_map *vm = &c->d->map;
	int ivf_pre = c->d->pre != NULL && c->d->nlist > 0;
	*qi = NULL;
	*qdim = vm->index_dim;
	if (cdx_map_identity(vm) && !ivf_pre)
		return CDX_OK;
	float *mapped = malloc(nq * vm->index_dim * sizeof(float));
	if (mapped == NULL)
		return cdx_error(CDX_ENOMEM, "%zu queries in index space", nq);
	cdx_map_queries(vm, q, nq, mapped);
	if (!ivf_pre) {
		*qi = mapped;
		return CDX_OK;
	}
	float *t = malloc(nq * c->d->inner_dim * sizeof(float));
	int rc = t == NULL ? cdx_error(CDX_ENOMEM, "%zu transformed queries", nq) : CDX_OK;
	if (rc == CDX_OK && cdx_fx_apply_pretransform(c->d->pre, nq, mapped, t) != 0)
		rc = cdx_error_faiss("query pre-transform");
	free(mapped);
	if (rc != CDX_OK) {
		free(t);
		return rc;
	}
	*qi = t;
	*qdim = c->d->inner_dim;
	return CDX_OK;
}

int
cdx_collection_search(const cdx_collection *c, const struct cdx_search_params *p, const float *queries,
    size_t nq, struct cdx_hit *hits)
{
	const struct cdx_manifest *m = c->manifest;
	size_t dim = m->dim;
	if (p->k == 0)
		return cdx_error(CDX_EINVAL, "k must be at least 1");
	if (nq == 0 || queries == NULL)
		return cdx_error(CDX_EEMPTY, "no query vectors");
	long bad = cdx_find_nonfinite(queries, nq * dim);
	if (bad >= 0)
		return cdx_error(CDX_ENONFINITE, "query %ld, dimension %ld is not finite", bad / (long) dim,
		    bad % (long) dim);
	if (p->refine_factor >= 1.0f && !cdx_collection_has_refine(c))
		return cdx_error(CDX_EINVAL,
		    "refine factor %.1f asked, but collection %s was built without a "
		    "refine store (candex build --refine)",
		    (double) p->refine_factor, m->collection);

	uint64_t codes = 0;
	struct search_ctx x
	    = { .c = c, .p = p, .higher_better = cdx_metric_higher_is_better(m->metric), .codes = &codes };
	float *q = NULL, *qi = NULL, *D = NULL;
	idx_t *I = NULL;
	struct candidate *cand = NULL;
	struct crowd cr = { 0 };
	int rc = prepare_selection(&x);
	if (rc != CDX_OK)
		goto done;
	/* A filter or takedowns keep a share s of the items: the point is the
	 * one measured for tier / s (see the DESIGN note above). */
	uint32_t tier = cdx_points_tier(m, p->k), k_point = p->k;
	double selectivity = 1.0;
	if ((x.filter != NULL || x.blocked != NULL) && c->d->nlist > 0) {
		selectivity = estimate_selectivity(&x);
		if (p->nprobe == 0 && selectivity < 1.0)
			k_point
			    = (uint32_t) CDX_MIN(ceil(CDX_MAX(p->k, tier) / selectivity), (double) INT32_MAX);
	}
	struct cdx_point_choice pc;
	cdx_points_choose(m, k_point, p->nprobe, p->refine_factor, p->recall_target, p->escalate, &pc);
	x.nprobe = cdx_collection_effective_nprobe(c, pc.nprobe);
	x.refine = cdx_collection_effective_refine(c, pc.refine_factor);
	/* ... but never shallower than the request's own point: a factor
	 * measured at a large k (where recall@k forgives more) re-ranks too
	 * few of the s x tier' candidates that pass for recall at k. */
	float refine_own = 0;
	if (k_point != p->k) {
		struct cdx_point_choice own;
		cdx_points_choose(m, p->k, 0, p->refine_factor, p->recall_target, p->escalate, &own);
		x.nprobe = CDX_MAX(x.nprobe, cdx_collection_effective_nprobe(c, own.nprobe));
		refine_own = cdx_collection_effective_refine(c, own.refine_factor);
	}
	int narrowing = x.selecting || x.crowd_col >= 0;
	/* What a query must find: k; with a selection, its k tier, so that
	 * every k of a tier searches (and widens) alike. */
	x.need = narrowing ? CDX_MAX(p->k, tier) : p->k;
	size_t want = x.need;
	/* Re-ranking fetches factor x the k tier, not factor x k: every k of
	 * a tier then re-ranks the same candidates, so answers agree across k.
	 * A filtered search uses the point measured at tier' = tier(k / s),
	 * whose factor was measured for factor x tier' candidates: of those,
	 * about s x tier' pass, so it re-ranks factor x max(tier, s x tier'),
	 * and at least what the request's own point re-ranks. */
	if (x.refine > 0) {
		double depth
		    = CDX_MAX(CDX_MAX((double) CDX_MAX(x.need, tier), selectivity * pc.tier_k) * x.refine,
		        (double) CDX_MAX(x.need, tier) * refine_own);
		want = (size_t) ceil(depth);
		x.refine = (float) (depth / (double) CDX_MAX(x.need, tier)); /* reported */
	}
	x.kf = CDX_MAX((size_t) 1, CDX_MIN(want, (size_t) c->d->items));
	x.need = CDX_MIN(x.need, (size_t) c->d->items);
	x.seen_min = x.kf;
	/* A shard that cannot filter in its scan (fast-scan) returns rows that
	 * do not pass: ask it for kf / s, so that about kf of them pass (up to
	 * 64 x; widening goes further). */
	int post_filtered = 0;
	for (uint32_t sh = 0; sh < c->d->nshards; sh++)
		post_filtered |= !c->d->shards[sh].selector_scan;
	if (x.thinning && post_filtered && selectivity < 1.0) {
		double more = ceil((double) x.kf / CDX_MAX(selectivity, 1.0 / 64));
		x.kf = (size_t) CDX_MIN(more, (double) c->d->items);
	}
	if (x.crowd_col >= 0) {
		uint64_t slots = 16;
		while (slots < 2 * (uint64_t) x.need)
			slots *= 2;
		cr.mask = slots - 1;
		cr.groups = malloc(slots * sizeof(int64_t));
		cr.counts = calloc(slots, sizeof(uint32_t));
		if (cr.groups == NULL || cr.counts == NULL) {
			rc = cdx_error(CDX_ENOMEM, "crowding of %zu results", x.need);
			goto done;
		}
	}
	q = malloc(nq * dim * sizeof(float));
	D = malloc(c->d->nshards * nq * x.kf * sizeof(float));
	I = malloc(c->d->nshards * nq * x.kf * sizeof(idx_t));
	cand = malloc(c->d->nshards * x.kf * sizeof(*cand));
	if (q == NULL || D == NULL || I == NULL || cand == NULL) {
		rc = cdx_error(CDX_ENOMEM, "search buffers for %zu queries x %zu candidates", nq, x.kf);
		goto done;
	}
	memcpy(q, queries, nq * dim * sizeof(float));
	if (m->metric == CDX_METRIC_COS)
		cdx_normalize_rows(q, nq, dim);
	if ((rc = index_queries(c, q, nq, &qi, &x.qdim)) != CDX_OK)
		goto done;
	const float *qx = qi != NULL ? qi : q;

	/* Faiss's own OpenMP loops stay on this thread unless the caller allows
	 * parallelism; a batch is then split into slices, one per thread. */
	int saved_threads = omp_get_max_threads();
	int threads = p->parallel ? saved_threads : 1;
	omp_set_num_threads(1);
	if (threads > 1 && nq > 1) {
		/* at least one slice per thread, and none over 256 queries
		 * (DEADLINE_SLICE with a deadline) */
		size_t most = p->deadline_us ? DEADLINE_SLICE : 256;
		size_t nslices = CDX_MIN(nq, CDX_MAX((size_t) threads, (nq + most - 1) / most));
		int slice_rc = CDX_OK;
		float *Dt = malloc(c->d->nshards * nq * x.kf * sizeof(float));
		idx_t *It = malloc(c->d->nshards * nq * x.kf * sizeof(idx_t));
		if (Dt == NULL || It == NULL) {
			rc = cdx_error(CDX_ENOMEM, "search buffers");
		} else {
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
			for (size_t t = 0; t < nslices; t++) {
				size_t a = nq * t / nslices, b = nq * (t + 1) / nslices;
				/* Each slice writes its own [shard][a..b) block of Dt/It. */
				float *Ds = Dt + c->d->nshards * a * x.kf;
				idx_t *Is = It + c->d->nshards * a * x.kf;
				int r = search_slice(&x, qx, a, b, Ds, Is);
				if (r != CDX_OK) {
#pragma omp critical
					slice_rc = r;
				}
			}
			rc = slice_rc;
			/* Reorder from [slice][shard][query] to [shard][query]. */
			for (size_t t = 0; rc == CDX_OK && t < nslices; t++) {
				size_t a = nq * t / nslices, b = nq * (t + 1) / nslices, sn = b - a;
				for (uint32_t s = 0; s < c->d->nshards; s++) {
					memcpy(D + (s * nq + a) * x.kf,
					    Dt + c->d->nshards * a * x.kf + s * sn * x.kf,
					    sn * x.kf * sizeof(float));
					memcpy(I + (s * nq + a) * x.kf,
					    It + c->d->nshards * a * x.kf + s * sn * x.kf,
					    sn * x.kf * sizeof(idx_t));
				}
			}
		}
		free(Dt);
		free(It);
	} else {
		rc = search_chunked(&x, qx, nq, D, I);
	}
	omp_set_num_threads(saved_threads);

	uint32_t widened = 0, nprobe_max = (uint32_t) x.nprobe;
	for (size_t i = 0; rc == CDX_OK && i < nq; i++) {
		size_t got, seen;
		int full, exhausted = 0;
		struct cdx_hit *h = hits + i * p->k;
		if (i % DEADLINE_SLICE == 0 && past_deadline(&x)) {
			rc = CDX_ETIMEDOUT; /* merging, re-ranking and widening take time too */
			break;
		}
		rc = merge_query(&x, i, nq, q + i * dim, D, I, cand, &cr, h, p->k, &got, &full, &seen);
		/* plain queries are never widened: their answer is a function of
		 * the operating point alone, as the router's exact merge of shard
		 * groups needs (a group holds only some of each list) */
		if (rc == CDX_OK && narrowing && !satisfied(&x, got, seen)) {
			uint32_t np;
			widened++;
			rc = widen(
			    &x, qx + i * x.qdim, q + i * dim, full, got, seen, h, p->k, &cr, &exhausted, &np);
			nprobe_max = CDX_MAX(nprobe_max, np);
		}
		if (p->exhausted != NULL)
			p->exhausted[i] = (uint8_t) (exhausted && h[p->k - 1].id < 0);
	}
	if (rc == CDX_OK && p->used != NULL) {
		*p->used = (struct cdx_search_used) {
			.nprobe = c->d->nlist > 0 ? nprobe_max : 0,
			.refine_factor = x.refine,
			.candidates = (uint32_t) x.kf,
			.codes = codes,
			.recall_target = pc.recall_target,
			.expected_recall = c->d->nlist == 0 && pc.recall_target > 0 ? 1.0
			    : pc.point != NULL                                      ? pc.point->recall
			                                                            : 0,
			.target_unmet = pc.unmet && c->d->nlist > 0,
			.rung = pc.rung,
			.rungs = pc.rungs,
			.widened = widened,
			.selectivity = selectivity,
		};
	}
done:
	cdx_filter_free(x.filter);
	cdx_idset_fini(&x.excl);
	free(cr.groups);
	free(cr.counts);
	free(q);
	free(qi);
	free(D);
	free(I);
	free(cand);
	return rc;
}
