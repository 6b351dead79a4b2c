/*
 * tune_measure.c — one candidate of the self-tuning build: trained on the
 * seeded sample, filled with the tuning base, searched through the server's
 * own search code at a ladder of nprobe, scored for every refine store and
 * factor from the same searches, costed by the model (tune.h).
 */
#define _GNU_SOURCE
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include <faiss/c_api/index_factory_c.h>

#include "builder/tune_int.h"
#include "faissx/faissx.h"
#include "search/points.h"
#include "shard/transform.h"

/* float_key maps a float to an unsigned key of the same order. */
static inline uint32_t
float_key(float f)
{
	uint32_t u;
	memcpy(&u, &f, sizeof(u));
	return u & 0x80000000u ? ~u : u | 0x80000000u;
}

/* order_by_score writes the positions 0..n-1 ordered by score (lower
 * first; equal scores keep position order) into order, with an LSD radix
 * sort of the keys in three 11-bit passes: the tuner orders every pool of
 * every query for every refine store at every nprobe, and a comparison
 * sort was a tenth of its time. tmp holds 2 x n uint32 of scratch. */
static void
order_by_score(const float *score, size_t n, uint32_t *order, uint32_t *tmp)
{
	uint32_t *keys = tmp, *pos = tmp + n;
	for (size_t j = 0; j < n; j++) {
		order[j] = (uint32_t) j;
		keys[j] = float_key(score[j]);
	}
	uint32_t *src = order, *dst = pos;
	for (int shift = 0; shift < 33; shift += 11) {
		size_t count[2049] = { 0 };
		for (size_t j = 0; j < n; j++)
			count[((keys[src[j]] >> shift) & 2047) + 1]++;
		for (int b = 0; b < 2048; b++)
			count[b + 1] += count[b];
		for (size_t j = 0; j < n; j++)
			dst[count[(keys[src[j]] >> shift) & 2047]++] = src[j];
		uint32_t *swap = src;
		src = dst;
		dst = swap;
	}
	if (src != order) /* three passes: the result is in pos */
		memcpy(order, src, n * sizeof(uint32_t));
}

/* spherical: cos collections train their coarse quantizer with spherical
 * k-means (train.c explains why); not behind a PCA, whose outputs are not
 * unit vectors. */
static int
train_first(struct tdata *t, struct cand *c, const float *xs, size_t ns, FaissIndex **out)
{
	FaissIndex *idx = NULL;
	FaissMetricType fm = t->metric == CDX_METRIC_IP && c->transform == CDX_TRANSFORM_NONE
	    ? METRIC_INNER_PRODUCT
	    : METRIC_L2;
	if (faiss_index_factory(&idx, (int) c->index_dim, c->factory, fm) != 0)
		return cdx_error_faiss(c->factory);
	int rc = CDX_OK;
	if (cdx_fx_train_params(idx, TRAIN_ITER, TRAIN_PTS) != 0)
		rc = cdx_error_faiss("train parameters");
	if (rc == CDX_OK && t->metric == CDX_METRIC_COS && c->pca == 0)
		rc = cdx_build_train_spherical(idx, ns, xs, TRAIN_ITER, TRAIN_PTS);
	if (rc == CDX_OK && faiss_Index_train(idx, (idx_t) ns, xs) != 0)
		rc = cdx_error_faiss("training");
	if (rc != CDX_OK) {
		faiss_Index_free(idx);
		return rc;
	}
	*out = idx;
	return CDX_OK;
}

static double
code_bytes(const struct cand *c)
{
	return c->flat ? 4.0 * c->index_dim : ceil((double) c->m * c->nbits / 8.0);
}

/* bytes_per_item: what an item costs the server in memory with a refine
 * kind: codes, Faiss's id per code, candex's id, and the refine copy (or,
 * without one, Faiss's direct map for reconstruction). */
double
cdx__tune_bytes_per_item(const struct cand *c, int kind, uint32_t dim)
{
	if (c->flat)
		return 4.0 * dim + 8;
	return code_bytes(c) + 8 + 8
	    + (kind == CDX_REFINE_NONE ? 8 : (double) cdx_refine_bytes_per_vector(kind, dim));
}

int
cdx__tune_cache_init(struct tdata *t)
{
	struct score_cache *sc = &t->cache;
	sc->slots = 64;
	while (sc->slots < 4 * t->pool)
		sc->slots *= 2;
	sc->row = malloc(t->nsel * sc->slots * sizeof(int32_t));
	sc->score = malloc(t->nsel * sc->slots * NKINDS * sizeof(float));
	if (sc->row == NULL || sc->score == NULL)
		return cdx_error(CDX_ENOMEM, "tuning score cache");
	memset(sc->row, 0xff, t->nsel * sc->slots * sizeof(int32_t));
	return CDX_OK;
}

void
cdx__tune_cache_fini(struct tdata *t)
{
	free(t->cache.row);
	free(t->cache.score);
	memset(&t->cache, 0, sizeof(t->cache));
}

/* cached_scores returns query q's scores of row, computing them on first
 * sight (a full table, unlikely at 4 x pool slots, just computes). */
static const float *
cached_scores(
    const struct tdata *t, struct score_cache *sc, size_t q, int32_t row, const int *kinds, float *tmp)
{
	int32_t *rows = sc->row + q * sc->slots;
	uint32_t h = (uint32_t) (cdx_mix64((uint64_t) row) & (sc->slots - 1));
	float *out = tmp;
	for (uint32_t probe = 0; probe < sc->slots; probe++, h = (h + 1) & (sc->slots - 1)) {
		if (rows[h] == row)
			return sc->score + (q * sc->slots + h) * NKINDS;
		if (rows[h] < 0) {
			rows[h] = row;
			out = sc->score + (q * sc->slots + h) * NKINDS;
			break;
		}
	}
	const float *qv = t->sel + q * t->dim;
	/* true distances, in recall_metrics.c's units, from the exact (fp32)
	 * score: float precision is far inside the tie epsilon */
	float s = cdx_refine_distance(&t->store[CDX_REFINE_FP32], (uint64_t) row, qv, t->metric);
	out[0] = t->metric == CDX_METRIC_L2 ? sqrtf(s > 0 ? s : 0)
	    : t->metric == CDX_METRIC_COS   ? 1.0f - s
	                                    : -s;
	int hb = higher_better(t->metric);
	for (int kind = CDX_REFINE_FP32; kind < NKINDS; kind++) {
		if (!kinds[kind])
			continue;
		float v = kind == CDX_REFINE_FP32
		    ? s
		    : cdx_refine_distance(&t->store[kind], (uint64_t) row, qv, t->metric);
		out[kind] = hb ? -v : v;
	}
	return out;
}

/* evaluate_pools turns one nprobe's candidate pools (nsel x pool rows, in
 * the index's order) into per-query recall for every k, refine kind and
 * factor: rec/se[k][kind][f]. */
static void
evaluate_pools(const struct tdata *t, struct score_cache *sc, const struct cdx_hit *hits, size_t pool,
    const int *kinds, double rec[CDX_TUNE_MAX_K][NKINDS][MAX_F], double se[CDX_TUNE_MAX_K][NKINDS][MAX_F])
{
	size_t nq = t->nsel, cells = (size_t) CDX_TUNE_MAX_K * NKINDS * MAX_F;
	double *per = calloc(nq * cells, sizeof(double));
	if (per == NULL) {
		for (size_t i = 0; i < cells; i++)
			(&rec[0][0][0])[i] = (&se[0][0][0])[i] = NAN;
		return;
	}
#pragma omp parallel
	{
		double *td = malloc(pool * sizeof(double));
		float *score = malloc(pool * NKINDS * sizeof(float)), *kscore = malloc(pool * sizeof(float));
		uint32_t *order = malloc(pool * sizeof(uint32_t)),
		         *scratch = malloc(2 * pool * sizeof(uint32_t));
#pragma omp for schedule(dynamic, 8)
		for (size_t q = 0; q < nq; q++) {
			if (td == NULL || score == NULL || kscore == NULL || order == NULL || scratch == NULL)
				continue;
			const struct cdx_hit *h = hits + q * pool;
			size_t have = 0;
			while (have < pool && h[have].id >= 0)
				have++;
			for (size_t j = 0; j < have; j++) {
				float tmp[NKINDS];
				const float *sc_j = cached_scores(t, sc, q, (int32_t) h[j].id, kinds, tmp);
				memcpy(score + j * NKINDS, sc_j, NKINDS * sizeof(float));
				td[j] = sc_j[0];
			}
			for (int kind = 0; kind < NKINDS; kind++) {
				if (!kinds[kind])
					continue;
				/* order: candidate positions by re-ranked score (none: as fetched) */
				for (size_t j = 0; j < have; j++)
					order[j] = (uint32_t) j;
				if (kind != CDX_REFINE_NONE) {
					for (size_t j = 0; j < have; j++)
						kscore[j] = score[j * NKINDS + kind];
					order_by_score(kscore, have, order, scratch);
				}
				for (uint32_t ki = 0; ki < t->nks; ki++) {
					uint32_t k = t->ks[ki];
					uint32_t r = 0;
					while (r < k && t->truth.rows[q * t->truth.k + r] >= 0)
						r++;
					if (r == 0)
						continue;
					double thr = (double) t->truth.dist[q * t->truth.k + r - 1]
					    + CDX_RECALL_EPSILON_DEFAULT;
					size_t nf = kind == CDX_REFINE_NONE ? 1 : nf_for(k);
					for (size_t fi = 0; fi < nf; fi++) {
						size_t window = kind == CDX_REFINE_NONE
						    ? k
						    : (size_t) (factors[fi] * (float) k);
						if (window > have)
							window = have;
						uint32_t taken = 0, found = 0;
						for (size_t j = 0; j < have && taken < k; j++) {
							uint32_t pos = order[j];
							if (pos >= window)
								continue;
							taken++;
							found += td[pos] <= thr;
						}
						if (found > r)
							found = r;
						per[q * cells + ((size_t) ki * NKINDS + (size_t) kind) * MAX_F
						    + fi]
						    = (double) found / r;
					}
				}
			}
		}
		free(td);
		free(score);
		free(kscore);
		free(order);
		free(scratch);
	}
	for (size_t cell = 0; cell < cells; cell++) {
		double s = 0, s2 = 0;
		for (size_t q = 0; q < nq; q++)
			s += per[q * cells + cell];
		double mean = s / (double) nq;
		for (size_t q = 0; q < nq; q++) {
			double dv = per[q * cells + cell] - mean;
			s2 += dv * dv;
		}
		(&rec[0][0][0])[cell] = mean;
		(&se[0][0][0])[cell] = nq > 1 ? sqrt(s2 / (double) (nq - 1) / (double) nq) : 1;
	}
	free(per);
}

double
cdx__tune_model_ns(const struct cand *c, uint32_t nprobe, double codes, double pool, int kind, uint32_t dim)
{
	double ns = CDX_TUNE_NS_QUERY;
	if (c->flat) {
		ns += CDX_TUNE_NS_FLOAT_DIST * codes * c->index_dim;
	} else {
		ns += CDX_TUNE_NS_FLOAT_DIST * (double) c->nlist * (c->pca ? c->pca : c->group_dim);
		if (c->pca)
			ns += CDX_TUNE_NS_FLOAT_DIST * (double) c->group_dim * c->pca;
		if (c->fastscan) {
			/* one table a query; lists are scanned in blocks of 32
			 * codes (half a block of padding a list, on average) */
			ns += CDX_TUNE_NS_LUT * (double) c->m * 16.0;
			ns += CDX_TUNE_NS_FS_CODE * (double) c->m * (codes + 16.0 * nprobe);
			ns += CDX_TUNE_NS_FS_LIST * (double) c->m * nprobe;
		} else {
			ns += CDX_TUNE_NS_LUT * nprobe * (double) c->m * (double) (1u << c->nbits);
			ns += (c->nbits == 8 ? CDX_TUNE_NS_CODE8 : CDX_TUNE_NS_CODE4) * (double) c->m * codes;
		}
	}
	/* a heap of the pool takes about pool x (1 + ln(codes / pool)) insertions */
	if (pool >= 1 && codes > 0) {
		double ins = codes <= pool ? codes : pool * (1 + log(codes / pool));
		ns += (c->fastscan ? CDX_TUNE_NS_FS_HEAP : CDX_TUNE_NS_HEAP) * log2(pool + 1) * ins;
	}
	if (kind != CDX_REFINE_NONE) {
		double per_dim = kind == CDX_REFINE_FP32 ? CDX_TUNE_NS_REFINE_FP32
		    : kind == CDX_REFINE_FP16            ? CDX_TUNE_NS_REFINE_FP16
		                                         : CDX_TUNE_NS_REFINE_SQ8;
		ns += pool * (CDX_TUNE_NS_REFINE_ROW + per_dim * dim);
	}
	return ns;
}

/* choose_settings fills c->best from the measured grid, and c->ns, c->kind
 * and c->bytes from the best refine kind (kinds[kind] say which count). */
static void
choose_settings(const struct tdata *t, struct cand *c, const int *kinds)
{
	c->ns = INFINITY;
	for (int kind = 0; kind < NKINDS; kind++) {
		if (!kinds[kind])
			continue;
		double sum = 0;
		int all = 1;
		for (uint32_t ki = 0; ki < t->nks; ki++) {
			uint32_t k = t->ks[ki];
			struct setting *b = &c->best[ki][kind];
			memset(b, 0, sizeof(*b));
			b->ns = INFINITY;
			size_t nf = kind == CDX_REFINE_NONE ? 1 : nf_for(k);
			for (uint32_t s = 0; s < c->nsteps; s++) {
				for (size_t fi = 0; fi < nf; fi++) {
					double r = c->rec[s][ki][kind][fi], se = c->se[s][ki][kind][fi];
					if (!(cdx_points_lower_bound(r, se) >= t->target))
						continue;
					double pool = kind == CDX_REFINE_NONE ? k : factors[fi] * k;
					double ns = cdx__tune_model_ns(
					    c, c->nprobes[s], c->codes[s], pool, kind, t->dim);
					if (ns < b->ns)
						*b = (struct setting) { 1, c->nprobes[s],
							kind == CDX_REFINE_NONE ? 0 : factors[fi], r, se,
							ns };
				}
			}
			all &= b->ok;
			sum += b->ns;
		}
		double ns = all ? sum / t->nks : INFINITY;
		double bytes = cdx__tune_bytes_per_item(c, kind, t->dim);
		/* cheaper by more than the tie band wins; within it, fewer bytes */
		if (c->kind < 0 || ns * COST_TIE < c->ns
		    || (ns < INFINITY && ns <= c->ns * COST_TIE && bytes < c->bytes)) {
			c->ns = ns;
			c->kind = kind;
			c->bytes = bytes;
		}
	}
}

/* ladder_done: whether more lists cannot give a setting worth having: at
 * every k, some setting reaches 0.99 (the top rung make_points makes), or
 * the cheapest setting of the last step already costs more than exact
 * search or 4 x the cheapest setting that reaches the target. Costs grow
 * with nprobe, so later steps only cost more. */
static int
ladder_done(const struct tdata *t, const struct cand *c, const int *kinds)
{
	uint32_t s = c->nsteps - 1;
	for (uint32_t ki = 0; ki < t->nks; ki++) {
		uint32_t k = t->ks[ki];
		double top = 0, cheapest = INFINITY, at_target = INFINITY;
		for (int kind = 0; kind < NKINDS; kind++) {
			size_t nf = kind == CDX_REFINE_NONE ? 1 : nf_for(k);
			for (size_t fi = 0; kinds[kind] && fi < nf; fi++) {
				double pool = kind == CDX_REFINE_NONE ? k : factors[fi] * k;
				double ns
				    = cdx__tune_model_ns(c, c->nprobes[s], c->codes[s], pool, kind, t->dim);
				if (ns < cheapest)
					cheapest = ns;
				if (c->rec[s][ki][kind][fi] > top)
					top = c->rec[s][ki][kind][fi];
				for (uint32_t p = 0; p <= s; p++) {
					double r = c->rec[p][ki][kind][fi], se = c->se[p][ki][kind][fi];
					if (cdx_points_lower_bound(r, se) >= t->target)
						at_target = fmin(at_target,
						    cdx__tune_model_ns(
						        c, c->nprobes[p], c->codes[p], pool, kind, t->dim));
				}
			}
		}
		if (top < 0.99 && cheapest <= t->flat_ns[ki] && cheapest <= 4 * at_target)
			return 0;
	}
	return 1;
}

/* map_rows_for: the tuning base or sample as candidate c's index takes it:
 * a new array (*owned) when the transform or padding changes it. */
static const float *
map_rows_for(const struct tdata *t, const struct cand *c, const float *x, size_t n, float **owned)
{
	struct cdx_vector_map vm = { t->metric, c->transform, t->dim, c->index_dim, t->max_norm2 };
	*owned = NULL;
	if (cdx_map_identity(&vm))
		return x;
	float *y = malloc(n * c->index_dim * sizeof(float));
	if (y == NULL)
		return NULL;
	cdx_map_items(&vm, x, n, y);
	*owned = y;
	return y;
}

/* measure_ivf builds candidate c (over like's coarse stage when like is
 * not NULL), adds the tuning base, searches the nprobe ladder and chooses
 * its settings. *trained gets a copy of the trained, empty index. */
int
cdx__tune_measure_ivf(struct tdata *t, struct cand *c, const FaissIndex *like, const uint64_t *sample,
    size_t ns, const int *kinds, FaissIndex **trained)
{
	uint64_t t0 = cdx_now_us();
	FaissIndex *idx = NULL, *copy = NULL;
	float *xs = NULL, *xb_owned = NULL;
	struct cdx_hit *hits = NULL;
	cdx_collection *coll = NULL;
	int rc = CDX_OK;
	*trained = NULL;
	c->evaluated = 1;
	c->kind = -1;

	/* the training sample, mapped */
	if ((xs = malloc(ns * c->index_dim * sizeof(float))) == NULL) {
		rc = cdx_error(CDX_ENOMEM, "tuning sample");
		goto done;
	}
	{
		struct cdx_vector_map vm = { t->metric, c->transform, t->dim, c->index_dim, t->max_norm2 };
		float *row = malloc(t->dim * sizeof(float));
		if (row == NULL) {
			rc = cdx_error(CDX_ENOMEM, "tuning sample");
			goto done;
		}
		for (size_t i = 0; i < ns; i++) {
			memcpy(row, t->base + sample[i] * t->dim, t->dim * sizeof(float));
			cdx_map_items(&vm, row, 1, xs + i * c->index_dim);
		}
		free(row);
	}
	if (like != NULL) {
		if (cdx_fx_ivfpq_like(like, (int) c->m, (int) c->nbits, c->fastscan, &idx) != 0) {
			rc = cdx_error_faiss("IVF-PQ over a trained coarse stage");
			goto done;
		}
		if (faiss_Index_train(idx, (idx_t) ns, xs) != 0) {
			rc = cdx_error_faiss("training");
			goto done;
		}
	} else if ((rc = train_first(t, c, xs, ns, &idx)) != CDX_OK) {
		goto done;
	}
	free(xs);
	xs = NULL;
	if (cdx_fx_clone(idx, &copy) != 0) {
		rc = cdx_error_faiss("copy of the trained index");
		goto done;
	}
	c->train_s = (double) (cdx_now_us() - t0) / 1e6;

	uint64_t t1 = cdx_now_us();
	const float *xb = map_rows_for(t, c, t->base, t->n, &xb_owned);
	if (xb == NULL) {
		rc = cdx_error(CDX_ENOMEM, "tuning base in index space");
		goto done;
	}
	cdx_blas_set_threads(omp_get_max_threads());
	int add_failed = faiss_Index_add(idx, (idx_t) t->n, xb) != 0;
	cdx_blas_set_threads(1); /* idle OpenBLAS threads spin (sched_yield) */
	if (add_failed) {
		rc = cdx_error_faiss("adding the tuning base");
		goto done;
	}
	free(xb_owned);
	xb_owned = NULL;
	c->add_s = (double) (cdx_now_us() - t1) / 1e6;

	/* the server's own search over it */
	struct cdx_manifest *m = calloc(1, sizeof(*m));
	if (m == NULL) {
		rc = cdx_error(CDX_ENOMEM, "tuning manifest");
		goto done;
	}
	snprintf(m->collection, sizeof(m->collection), "tune");
	m->metric = t->metric;
	m->dim = t->dim;
	m->index_dim = c->index_dim;
	m->transform = c->transform;
	m->max_norm2 = t->max_norm2;
	m->items = t->n;
	m->nshards = 1;
	m->default_nprobe = 1;
	rc = cdx_collection_from_index(&coll, m, idx);
	idx = NULL; /* owned by coll now, even on failure */
	if (rc != CDX_OK)
		goto done;

	uint64_t t2 = cdx_now_us();
	size_t pool = t->pool;
	if ((hits = malloc(t->nsel * pool * sizeof(*hits))) == NULL) {
		rc = cdx_error(CDX_ENOMEM, "tuning pools");
		goto done;
	}
	uint32_t cap = CDX_MIN(c->nlist, CDX_MAX(256u, c->nlist / 4));
	c->nsteps = 0;
	for (uint32_t np = 1; c->nsteps < MAX_NPROBE; np = np * 2 < cap ? np * 2 : cap) {
		struct cdx_search_used used;
		struct cdx_search_params sp = { .k = (uint32_t) pool,
			.nprobe = np,
			.refine_factor = 0.5f,
			.parallel = 1,
			.used = &used };
		if ((rc = cdx_collection_search(coll, &sp, t->sel, t->nsel, hits)) != CDX_OK)
			goto done;
		uint32_t s = c->nsteps++;
		c->nprobes[s] = np;
		c->codes[s] = (double) used.codes / (double) t->nsel;
		evaluate_pools(t, &t->cache, hits, pool, kinds, c->rec[s], c->se[s]);
		if (np == cap || ladder_done(t, c, kinds))
			break;
	}
	c->eval_s = (double) (cdx_now_us() - t2) / 1e6;
	choose_settings(t, c, kinds);
	*trained = copy;
	copy = NULL;
done:
	if (idx != NULL)
		faiss_Index_free(idx);
	if (copy != NULL)
		faiss_Index_free(copy);
	cdx_collection_unref(coll);
	free(xs);
	free(xb_owned);
	free(hits);
	return rc;
}
