/*
 * search.c — one request's search over every shard of a collection: coarse
 * assignment once, per-shard IVF scan with the request's nprobe, exclusion,
 * optional exact re-ranking, and a merge into one top-k.
 *
 * Nothing here writes to a shared Faiss object (see search.h DESIGN), so any
 * number of threads may search one collection at once.
 */
#define _GNU_SOURCE
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "faissx/faissx.h"
#include "search/collection_int.h"
#include "faissx/error.h"
#include "search/points.h"

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
	int64_t *excl_ids; /* sorted */
	size_t n_excl_ids;
	uint64_t *excl_rows; /* sorted (shard << 32 | row) of excluded keys */
	size_t n_excl_rows;
	uint64_t *codes; /* codes scanned (atomically added to by every slice) */
};

static int
cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *) a, y = *(const int64_t *) b;
	return x < y ? -1 : x > y;
}

static int
cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
	return x < y ? -1 : x > y;
}

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

static int
prepare_exclusions(struct search_ctx *x)
{
	const struct cdx_search_params *p = x->p;
	if (p->n_exclude_ids > 0) {
		x->excl_ids = malloc(p->n_exclude_ids * sizeof(int64_t));
		if (x->excl_ids == NULL)
			return cdx_error(CDX_ENOMEM, "exclusion list");
		memcpy(x->excl_ids, p->exclude_ids, p->n_exclude_ids * sizeof(int64_t));
		qsort(x->excl_ids, p->n_exclude_ids, sizeof(int64_t), cmp_i64);
		x->n_excl_ids = p->n_exclude_ids;
	}
	if (p->n_exclude_keys > 0) {
		x->excl_rows = malloc(p->n_exclude_keys * sizeof(uint64_t));
		if (x->excl_rows == NULL)
			return cdx_error(CDX_ENOMEM, "exclusion list");
		for (size_t i = 0; i < p->n_exclude_keys; i++) {
			uint32_t shard, row;
			/* A key the collection does not hold cannot be returned anyway. */
			if (cdx_collection_find_key(x->c, p->exclude_keys[i], &shard, &row, NULL) == CDX_OK)
				x->excl_rows[x->n_excl_rows++] = (uint64_t) shard << 32 | row;
		}
		qsort(x->excl_rows, x->n_excl_rows, sizeof(uint64_t), cmp_u64);
	}
	cdx_error_clear();
	return CDX_OK;
}

static int
excluded(const struct search_ctx *x, int64_t id, uint32_t shard, uint32_t row)
{
	if (x->n_excl_ids > 0 && bsearch(&id, x->excl_ids, x->n_excl_ids, sizeof(int64_t), cmp_i64) != NULL)
		return 1;
	uint64_t loc = (uint64_t) shard << 32 | row;
	return x->n_excl_rows > 0
	    && bsearch(&loc, x->excl_rows, x->n_excl_rows, sizeof(uint64_t), cmp_u64) != NULL;
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
	size_t cap = x->c->d->nprobe_cap, np = x->nprobe;
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

	if (c->d->nlist > 0) {
		size_t np = x->nprobe;
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
		if (ls->ivf != NULL && ls->fastscan) {
			cdx_fx_view *v;
			if ((rc = cdx__shard_view_acquire(ls, &v)) != CDX_OK)
				break;
			frc = cdx_fx_view_search(v, nq, qs, kf, x->nprobe, assign, cdis, dst_d, dst_i);
			cdx__shard_view_release(ls, v);
		} else if (ls->ivf != NULL && ls->preassigned) {
			if (keys == NULL
			    && (rc = pad_assignment(x, nq, assign, cdis, &keys, &kdis)) != CDX_OK)
				break;
			frc = faiss_IndexIVF_search_preassigned(
			    ls->ivf, (idx_t) nq, qs, (idx_t) kf, keys, kdis, dst_d, dst_i, 0);
		} else if (ls->ivf != NULL) {
			pthread_mutex_lock(&ls->lock);
			faiss_IndexIVF_set_nprobe(ls->ivf, x->nprobe);
			frc = faiss_Index_search(ls->index, (idx_t) nq, qs, (idx_t) kf, dst_d, dst_i);
			faiss_IndexIVF_set_nprobe(ls->ivf, c->d->nprobe_cap);
			pthread_mutex_unlock(&ls->lock);
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

/* Merges query i's per-shard results into hits[0..k). */
static int
merge_query(const struct search_ctx *x, size_t i, size_t nq, const float *query, const float *D,
    const idx_t *I, struct candidate *cand, struct cdx_hit *hits)
{
	const cdx_collection *c = x->c;
	size_t kf = x->kf, n = 0, k = x->p->k;
	for (uint32_t s = 0; s < c->d->nshards; s++) {
		const struct cdx_loaded_shard *ls = &c->d->shards[s];
		const float *d = D + ((size_t) s * nq + i) * kf;
		const idx_t *l = I + ((size_t) s * nq + i) * kf;
		for (size_t j = 0; j < kf; j++) {
			if (l[j] < 0)
				continue;
			if ((uint64_t) l[j] >= ls->rows)
				return cdx_error(CDX_EINTERNAL, "shard %u returned row %lld of %llu", s,
				    (long long) l[j], (unsigned long long) ls->rows);
			uint32_t row = (uint32_t) l[j];
			int64_t id = ls->ids[row];
			if (excluded(x, id, s, row))
				continue;
			float score = cdx_map_score(&c->d->map, query, d[j]);
			if (x->refine > 0)
				score = cdx_refine_distance(&ls->refine, row, query, c->manifest->metric);
			cand[n++] = (struct candidate) { score, s, row, id };
		}
	}
	qsort(cand, n, sizeof(*cand), x->higher_better ? cmp_cand_high : cmp_cand_low);
	for (size_t j = 0; j < k; j++) {
		if (j < n)
			hits[j] = (struct cdx_hit) { cand[j].id, cand[j].score, cand[j].shard, cand[j].row };
		else
			hits[j] = (struct cdx_hit) { -1, x->higher_better ? -INFINITY : INFINITY, 0, 0 };
	}
	return CDX_OK;
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
	struct cdx_point_choice pc;
	cdx_points_choose(m, p->k, p->nprobe, p->refine_factor, p->recall_target, p->escalate, &pc);
	x.nprobe = cdx_collection_effective_nprobe(c, pc.nprobe);
	x.refine = cdx_collection_effective_refine(c, pc.refine_factor);
	size_t excl = p->n_exclude_ids + p->n_exclude_keys, want = (size_t) p->k + excl;
	/* Re-ranking fetches factor x the k tier, not factor x k: every k of
	 * a tier then re-ranks the same candidates, so answers agree across k. */
	if (x.refine > 0)
		want = (size_t) ceil((double) (CDX_MAX(p->k, pc.tier_k) + excl) * x.refine);
	x.kf = CDX_MAX((size_t) 1, CDX_MIN(want, (size_t) c->d->items));

	float *q = NULL, *qi = NULL, *D = NULL;
	idx_t *I = NULL;
	struct candidate *cand = NULL;
	int rc = prepare_exclusions(&x);
	if (rc != CDX_OK)
		goto done;
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

	for (size_t i = 0; rc == CDX_OK && i < nq; i++) {
		if (i % DEADLINE_SLICE == 0 && past_deadline(&x))
			rc = CDX_ETIMEDOUT; /* merging and re-ranking take time too */
		else
			rc = merge_query(&x, i, nq, q + i * dim, D, I, cand, hits + i * p->k);
	}
	if (rc == CDX_OK && p->used != NULL) {
		*p->used = (struct cdx_search_used) {
			.nprobe = (uint32_t) x.nprobe,
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
		};
	}
done:
	free(x.excl_ids);
	free(x.excl_rows);
	free(q);
	free(qi);
	free(D);
	free(I);
	free(cand);
	return rc;
}
