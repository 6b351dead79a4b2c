/*
 * tune.c — the self-tuning build (see tune.h DESIGN).
 *
 * Flow: read the input into memory (the tuning base), pick the queries,
 * compute their exact neighbours, then measure candidates in a fixed order
 * (exact search by the cost model alone; then IVF-PQ candidates: each
 * coarse group — transform, PCA, nlist — with 4-dimensional PQ sub-vectors,
 * then, for the best group, 8-dimensional sub-vectors and a quarter of the
 * lists), keep the cheapest that reaches the target at every tuned k, and
 * derive its operating points.
 */
#define _GNU_SOURCE
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include <faiss/c_api/Clustering_c.h>
#include <faiss/c_api/IndexIVF_c.h>
#include <faiss/c_api/clone_index_c.h>
#include <faiss/c_api/index_factory_c.h>
#include <jansson.h>

#include "builder/tune.h"
#include "faissx/faissx.h"
#include "search/points.h"
#include "search/search.h"
#include "shard/refine.h"
#include "shard/transform.h"
#include "faissx/error.h"

#define Z95        1.645 /* one-sided 95% */
#define NKINDS     4     /* refine: none, fp32, fp16, sq8 (enum cdx_refine_kind order) */
#define MAX_F      5     /* refine factors 1, 2, 4, 8, 16 */
#define MAX_NPROBE 16    /* nprobe ladder 1, 2, 4, ... */
#define TRAIN_ITER 10    /* k-means iterations (Faiss: 25): recall measured equal on sift and glove */
#define TRAIN_PTS  64    /* sample cap per centroid (Faiss: 256) */
#define COST_TIE   1.10  /* structures this close in cost are ranked by bytes per item */

static const float factors[MAX_F] = { 1, 2, 4, 8, 16 };

/* --- the cost model ------------------------------------------------------ */

/* Nanoseconds per unit, single thread, measured on the project machine
 * with tools/bench/bench_costmodel.c (BENCHMARKS.md, "Cost model"). Only
 * ratios matter for the choice; the absolute figures give the modelled QPS
 * reported beside the measured one. */
#define NS_QUERY       15000.0 /* per request: copies, coarse setup, merge */
#define NS_FLOAT_DIST  0.064   /* per float of a flat distance (coarse quantizer, exact search) */
#define NS_LUT         0.25    /* per table entry built per probed list (M x 2^nbits) */
#define NS_CODE8       0.8     /* per code per sub-quantizer, 8-bit PQ */
#define NS_CODE4       1.3     /* per code per sub-quantizer, 4-bit PQ (no fast-scan) */
#define NS_HEAP        5.0     /* per heap step (log2 of the pool) per insertion */
#define NS_REFINE_ROW  15.0    /* per re-ranked candidate: a cache miss on its row */
#define NS_REFINE_FP32 0.06    /* per dimension of a re-ranked candidate */
#define NS_REFINE_FP16 0.09
#define NS_REFINE_SQ8  0.12

struct cand;
static double model_ns(
    const struct cand *c, uint32_t nprobe, double codes, double pool, int kind, uint32_t dim);

/* --- candidates ------------------------------------------------------------ */

/* The cheapest setting found for one k and refine kind. */
struct setting {
	int ok; /* reaches the target */
	uint32_t nprobe;
	float factor;          /* 0: no re-ranking */
	double recall, se, ns; /* measured recall, its standard error, modelled ns per query */
};

struct cand {
	int flat;
	int group; /* stage-0 coarse group it shares, -1 for none */
	int transform;
	uint32_t pca, nlist, m, nbits, index_dim, group_dim;
	char factory[128];
	/* results */
	int evaluated;
	int kind;     /* the best refine kind */
	double ns;    /* mean over k of its best settings; INFINITY if it never reaches */
	double bytes; /* per item, with that kind */
	double train_s, add_s, eval_s;
	struct setting best[CDX_TUNE_MAX_K][NKINDS];
	/* every measured (nprobe, factor) of the best kind, for the ladder */
	uint32_t nsteps;
	uint32_t nprobes[MAX_NPROBE];
	double rec[MAX_NPROBE][CDX_TUNE_MAX_K][NKINDS][MAX_F];
	double se[MAX_NPROBE][CDX_TUNE_MAX_K][NKINDS][MAX_F];
	double codes[MAX_NPROBE];
	char note[160];
};

/* --- the tuning data ---------------------------------------------------------- */

struct tdata {
	const struct cdx_tune_opts *o;
	int metric;
	uint32_t dim;
	uint64_t nfull;
	float *full; /* nfull x dim, normalised for cos */
	size_t n;    /* the tuning base: full minus held-out rows */
	float *base; /* n x dim (== full when nothing is held out) */
	double max_norm2;
	uint32_t ks[CDX_TUNE_MAX_K], nks, kmax;
	double target;
	size_t nsel;
	float *sel; /* nsel x dim, normalised for cos */
	struct cdx_truth truth;
	struct cdx_recall_space space;
	struct cdx_refine_store store[NKINDS]; /* over base, for kinds fp32, fp16, sq8 */
	void *store_data[NKINDS];
	float *sq8_vmin, *sq8_vdiff;
	uint64_t t0;
	size_t pool; /* candidates fetched per selection query */
};

static int
higher_better(int metric)
{
	return cdx_metric_higher_is_better(metric);
}

static size_t
nf_for(uint32_t k)
{
	/* factor x k candidates are re-ranked; beyond 16 x 10, 8 x 100, 4 x 500
	 * the pool costs more than more lists do */
	return k <= 10 ? 5 : k <= 100 ? 4 : 3;
}

static double
elapsed_s(const struct tdata *t)
{
	return (double) (cdx_now_us() - t->t0) / 1e6;
}

/* --- reading -------------------------------------------------------------- */

static int
read_all(cdx_input *in, int metric, float **xp)
{
	uint64_t n = cdx_input_rows(in);
	uint32_t d = cdx_input_dim(in);
	float *x = malloc((size_t) n * d * sizeof(float));
	if (x == NULL)
		return cdx_error(CDX_ENOMEM, "tuning: %llu x %u floats", (unsigned long long) n, d);
	size_t step = CDX_MAX((size_t) 1, cdx_build_chunk_bytes() / ((size_t) d * sizeof(float)));
	int rc = CDX_OK;
	for (uint64_t r = 0; r < n && rc == CDX_OK; r += step) {
		size_t c = (size_t) CDX_MIN((uint64_t) step, n - r);
		rc = cdx_input_read(in, r, c, x + (size_t) r * d);
		cdx_input_release(in, r + c);
	}
	if (rc != CDX_OK) {
		free(x);
		return rc;
	}
	if (metric == CDX_METRIC_COS)
		cdx_normalize_rows(x, n, d);
	*xp = x;
	return CDX_OK;
}

/* read_queries reads --tune-queries: up to max rows (a seeded sample when
 * the file has more), in file order. */
static int
read_queries(const char *path, int format, uint32_t dim, uint32_t max, uint64_t seed, float **qp, size_t *np)
{
	cdx_input *qin = NULL;
	int rc = cdx_input_open(&qin, path, format == CDX_INPUT_RAW_F32 ? dim : 0, format);
	if (rc != CDX_OK)
		return rc;
	if (cdx_input_dim(qin) != dim) {
		rc = cdx_error(CDX_EDIM, "--tune-queries %s: dimension %u, the input has %u", path,
		    cdx_input_dim(qin), dim);
		cdx_input_close(qin);
		return rc;
	}
	uint64_t n = cdx_input_rows(qin), k = CDX_MIN(n, (uint64_t) max);
	uint64_t *rows = malloc(k * sizeof(uint64_t));
	float *q = malloc(k * dim * sizeof(float));
	if (rows == NULL || q == NULL) {
		free(rows);
		free(q);
		cdx_input_close(qin);
		return cdx_error(CDX_ENOMEM, "tuning queries");
	}
	cdx_build_sample(n, k, seed ^ 0x7175657279ull, rows);
	rc = cdx_input_read_rows(qin, rows, k, q);
	free(rows);
	cdx_input_close(qin);
	if (rc != CDX_OK) {
		free(q);
		return rc;
	}
	*qp = q;
	*np = k;
	return CDX_OK;
}

/* --- refine stores over the tuning base --------------------------------------- */

static int
make_stores(struct tdata *t)
{
	t->sq8_vmin = malloc(t->dim * sizeof(float));
	t->sq8_vdiff = malloc(t->dim * sizeof(float));
	if (t->sq8_vmin == NULL || t->sq8_vdiff == NULL)
		return cdx_error(CDX_ENOMEM, "tuning: sq8 tables");
	cdx_sq8_train(t->base, t->n, t->dim, t->sq8_vmin, t->sq8_vdiff);
	for (int kind = CDX_REFINE_FP32; kind <= CDX_REFINE_SQ8; kind++) {
		struct cdx_refine_store *st = &t->store[kind];
		st->kind = kind;
		st->dim = t->dim;
		st->rows = t->n;
		st->vmin = t->sq8_vmin;
		st->vdiff = t->sq8_vdiff;
		st->bytes_per_vector = cdx_refine_bytes_per_vector(kind, t->dim);
		if (kind == CDX_REFINE_FP32) {
			st->data = (const uint8_t *) t->base; /* the same bytes */
			continue;
		}
		uint8_t *data = malloc(t->n * st->bytes_per_vector);
		if (data == NULL)
			return cdx_error(CDX_ENOMEM, "tuning: %s copy of the base", cdx_refine_name(kind));
		cdx_refine_encode(st, t->base, t->n, data);
		st->data = data;
		t->store_data[kind] = data;
	}
	return CDX_OK;
}

/* --- building and measuring one IVF-PQ candidate ------------------------------- */

/* cmp_by_score orders candidate positions by score (lower first), then by
 * position, so that equal scores keep the index's order. */
static int
cmp_by_score(const void *a, const void *b, void *arg)
{
	const float *s = arg;
	uint32_t x = *(const uint32_t *) a, y = *(const uint32_t *) b;
	if (s[x] != s[y])
		return s[x] < s[y] ? -1 : 1;
	return x < y ? -1 : x > y;
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
static double
bytes_per_item(const struct cand *c, int kind, uint32_t dim)
{
	if (c->flat)
		return 4.0 * dim + 8;
	return code_bytes(c) + 8 + 8
	    + (kind == CDX_REFINE_NONE ? 8 : (double) cdx_refine_bytes_per_vector(kind, dim));
}

/* A per-query cache of candidates' scores, kept across one candidate's
 * nprobe ladder: the pools of nprobe n and 2n overlap mostly, and scoring
 * (full-dimension re-rank distances) is most of the tuner's search time. */
struct score_cache {
	uint32_t slots; /* a power of two >= 2 x pool, per query */
	int32_t *row;   /* nsel x slots; -1 = empty */
	float *score;   /* nsel x slots x NKINDS: [0] true distance, [kind] re-ranked score */
};

static int
cache_init(struct score_cache *sc, size_t nq, size_t pool)
{
	sc->slots = 64;
	while (sc->slots < 4 * pool)
		sc->slots *= 2;
	sc->row = malloc(nq * sc->slots * sizeof(int32_t));
	sc->score = malloc(nq * sc->slots * NKINDS * sizeof(float));
	if (sc->row == NULL || sc->score == NULL)
		return cdx_error(CDX_ENOMEM, "tuning score cache");
	memset(sc->row, 0xff, nq * sc->slots * sizeof(int32_t));
	return CDX_OK;
}

static void
cache_fini(struct score_cache *sc)
{
	free(sc->row);
	free(sc->score);
	memset(sc, 0, sizeof(*sc));
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
		uint32_t *order = malloc(pool * sizeof(uint32_t));
#pragma omp for schedule(dynamic, 8)
		for (size_t q = 0; q < nq; q++) {
			if (td == NULL || score == NULL || kscore == NULL || order == NULL)
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
					qsort_r(order, have, sizeof(uint32_t), cmp_by_score, kscore);
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

static double
model_ns(const struct cand *c, uint32_t nprobe, double codes, double pool, int kind, uint32_t dim)
{
	double ns = NS_QUERY;
	if (c->flat) {
		ns += NS_FLOAT_DIST * codes * c->index_dim;
	} else {
		ns += NS_FLOAT_DIST * (double) c->nlist * (c->pca ? c->pca : c->group_dim);
		if (c->pca)
			ns += NS_FLOAT_DIST * (double) c->group_dim * c->pca;
		ns += NS_LUT * nprobe * (double) c->m * (double) (1u << c->nbits);
		ns += (c->nbits == 8 ? NS_CODE8 : NS_CODE4) * (double) c->m * codes;
	}
	/* a heap of the pool takes about pool x (1 + ln(codes / pool)) insertions */
	if (pool >= 1 && codes > 0) {
		double ins = codes <= pool ? codes : pool * (1 + log(codes / pool));
		ns += NS_HEAP * log2(pool + 1) * ins;
	}
	if (kind != CDX_REFINE_NONE) {
		double per_dim = kind == CDX_REFINE_FP32 ? NS_REFINE_FP32
		    : kind == CDX_REFINE_FP16            ? NS_REFINE_FP16
		                                         : NS_REFINE_SQ8;
		ns += pool * (NS_REFINE_ROW + per_dim * dim);
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
					if (!(r - Z95 * se >= t->target))
						continue;
					double pool = kind == CDX_REFINE_NONE ? k : factors[fi] * k;
					double ns
					    = model_ns(c, c->nprobes[s], c->codes[s], pool, kind, t->dim);
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
		double bytes = bytes_per_item(c, kind, t->dim);
		/* cheaper by more than the tie band wins; within it, fewer bytes */
		if (c->kind < 0 || ns * COST_TIE < c->ns
		    || (ns < INFINITY && ns <= c->ns * COST_TIE && bytes < c->bytes)) {
			c->ns = ns;
			c->kind = kind;
			c->bytes = bytes;
		}
	}
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
static int
measure_ivf(struct tdata *t, struct cand *c, const FaissIndex *like, const uint64_t *sample, size_t ns,
    const int *kinds, FaissIndex **trained)
{
	uint64_t t0 = cdx_now_us();
	FaissIndex *idx = NULL, *copy = NULL;
	float *xs = NULL, *xb_owned = NULL;
	struct cdx_hit *hits = NULL;
	cdx_collection *coll = NULL;
	struct score_cache cache = { 0 };
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
		if (cdx_fx_ivfpq_like(like, (int) c->m, (int) c->nbits, &idx) != 0) {
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
	if (faiss_clone_index(idx, &copy) != 0) {
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
	if ((rc = cache_init(&cache, t->nsel, pool)) != CDX_OK)
		goto done;
	if ((hits = malloc(t->nsel * pool * sizeof(*hits))) == NULL) {
		rc = cdx_error(CDX_ENOMEM, "tuning pools");
		goto done;
	}
	uint32_t cap = CDX_MIN(c->nlist, CDX_MAX(256u, c->nlist / 4));
	c->nsteps = 0;
	for (uint32_t np = 1;
	     np <= cap && c->nsteps<MAX_NPROBE; np = np * 2> cap && np < cap ? cap : np * 2) {
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
		evaluate_pools(t, &cache, hits, pool, kinds, c->rec[s], c->se[s]);
		/* the ladder ends once every k has a setting at 0.99 (the top rung
		 * online adaptation may need; make_points stops there too) */
		int done_all = 1;
		for (uint32_t ki = 0; ki < t->nks; ki++) {
			double top = 0;
			for (int kind = 0; kind < NKINDS; kind++)
				for (size_t fi = 0; kinds[kind] && fi < MAX_F; fi++)
					if (c->rec[s][ki][kind][fi] > top)
						top = c->rec[s][ki][kind][fi];
			done_all &= top >= 0.99;
		}
		if (done_all || np == cap)
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
	cache_fini(&cache);
	return rc;
}

/* --- the run ------------------------------------------------------------------ */

static void
cand_name(const struct cand *c, int kind, char *out, size_t cap)
{
	snprintf(out, cap, "%s%s%s%s", c->flat ? "Flat" : c->factory,
	    c->transform == CDX_TRANSFORM_MIPS_L2 ? " (ip as L2)" : "", kind > 0 ? " + refine " : "",
	    kind > 0 ? cdx_refine_name(kind) : "");
}

static void
log_cand(const struct tdata *t, const struct cand *c)
{
	char name[200];
	cand_name(c, c->kind, name, sizeof(name));
	if (c->ns == INFINITY) {
		cdx_info("BLD-TUNE",
		    "%s: does not reach %.3g at every k%s%s (trained %.1f s, searched %.1f s)", name,
		    t->target, c->note[0] ? ": " : "", c->note, c->train_s, c->eval_s);
		return;
	}
	char ks[256] = "";
	size_t used = 0;
	for (uint32_t ki = 0; ki < t->nks && used < sizeof(ks); ki++) {
		const struct setting *b = &c->best[ki][c->kind];
		int n = snprintf(ks + used, sizeof(ks) - used, "%sk %u: nprobe %u x%g %.3f", ki ? ", " : "",
		    t->ks[ki], b->nprobe, (double) b->factor, b->recall);
		if (n > 0)
			used += (size_t) n;
	}
	cdx_info("BLD-TUNE", "%s: %s; %.0f QPS modelled, %.0f B/item (trained %.1f s, searched %.1f s)", name,
	    ks, 1e9 / c->ns, c->bytes, c->train_s, c->eval_s);
}

/* flat_cand: exact search, by the cost model alone (its recall is 1). */
static void
flat_cand(const struct tdata *t, struct cand *c)
{
	memset(c, 0, sizeof(*c));
	c->flat = 1;
	c->evaluated = 1;
	c->index_dim = t->dim;
	c->kind = CDX_REFINE_NONE;
	snprintf(c->factory, sizeof(c->factory), "Flat");
	double sum = 0;
	for (uint32_t ki = 0; ki < t->nks; ki++) {
		double ns = model_ns(c, 0, (double) t->nfull, t->ks[ki], CDX_REFINE_NONE, t->dim);
		c->best[ki][CDX_REFINE_NONE] = (struct setting) { 1, 0, 0, 1.0, 0, ns };
		sum += ns;
	}
	c->ns = sum / t->nks;
	c->bytes = bytes_per_item(c, CDX_REFINE_NONE, t->dim);
}

/* tune_nlist: the power of two nearest 2 sqrt(n), in [16, n / 39]. */
static uint32_t
tune_nlist(size_t n)
{
	uint32_t nlist = 16;
	while ((double) nlist * 1.414 < 2.0 * sqrt((double) n))
		nlist *= 2;
	while (nlist > 16 && n / nlist < CDX_BUILD_MIN_POINTS_PER_LIST)
		nlist /= 2;
	return nlist;
}

static uint32_t
round_up(uint32_t x, uint32_t m)
{
	return (x + m - 1) / m * m;
}

/* ivf_cand describes an IVF-PQ candidate: group_dim is what the PQ codes
 * (PCA output, or the index vectors, padded to a multiple of 8 so that
 * both sub-vector sizes divide it). */
static void
ivf_cand(const struct tdata *t, struct cand *c, int transform, uint32_t pca, uint32_t nlist, uint32_t nbits,
    uint32_t dsub)
{
	memset(c, 0, sizeof(*c));
	c->transform = transform;
	c->pca = pca;
	c->nlist = nlist;
	c->nbits = nbits;
	c->kind = -1;
	c->group = -1;
	c->ns = INFINITY;
	uint32_t d_eff = t->dim + (transform == CDX_TRANSFORM_MIPS_L2);
	c->index_dim = pca ? d_eff : round_up(d_eff, 8);
	c->group_dim = pca ? pca : c->index_dim;
	c->m = c->group_dim / dsub;
	if (pca)
		snprintf(c->factory, sizeof(c->factory), "PCA%u,IVF%u,PQ%ux%unp", pca, nlist, c->m, nbits);
	else
		snprintf(c->factory, sizeof(c->factory), "IVF%u,PQ%ux%unp", nlist, c->m, nbits);
}

static int
better(const struct cand *a, const struct cand *b)
{
	if (b == NULL)
		return 1;
	if (a->ns == INFINITY)
		return 0;
	if (a->ns * COST_TIE < b->ns)
		return 1;
	return a->ns <= b->ns * COST_TIE && a->bytes < b->bytes && a->ns < INFINITY;
}

static json_t *
cand_json(const struct tdata *t, const struct cand *c, int kind, int chosen)
{
	char name[200];
	cand_name(c, kind, name, sizeof(name));
	json_t *o = json_object();
	json_object_set_new(o, "structure", json_string(name));
	json_object_set_new(o, "factory", json_string(c->factory));
	json_object_set_new(o, "transform", json_string(cdx_transform_name(c->transform)));
	json_object_set_new(o, "refine", json_string(cdx_refine_name(kind)));
	json_object_set_new(o, "chosen", json_boolean(chosen));
	double ns = 0;
	int all = 1;
	json_t *ks = json_array();
	for (uint32_t ki = 0; ki < t->nks; ki++) {
		const struct setting *b = &c->best[ki][kind];
		json_t *r = json_object();
		json_object_set_new(r, "k", json_integer(t->ks[ki]));
		json_object_set_new(r, "reached", json_boolean(b->ok));
		if (b->ok) {
			json_object_set_new(r, "nprobe", json_integer(b->nprobe));
			json_object_set_new(r, "refine_factor", json_real(b->factor));
			json_object_set_new(r, "recall", json_real(b->recall));
			json_object_set_new(r, "recall_se", json_real(b->se));
			json_object_set_new(r, "qps_model", json_real(1e9 / b->ns));
			ns += b->ns;
		}
		all &= b->ok;
		json_array_append_new(ks, r);
	}
	json_object_set_new(o, "reached", json_boolean(all));
	json_object_set_new(o, "qps_model", all ? json_real(1e9 / (ns / t->nks)) : json_null());
	json_object_set_new(o, "bytes_per_item", json_real(bytes_per_item(c, kind, t->dim)));
	json_object_set_new(o, "train_s", json_real(c->train_s));
	json_object_set_new(o, "add_s", json_real(c->add_s));
	json_object_set_new(o, "search_s", json_real(c->eval_s));
	json_object_set_new(o, "per_k", ks);
	if (c->note[0])
		json_object_set_new(o, "note", json_string(c->note));
	return o;
}

/* make_points: for each tuned k, the cheapest setting of the chosen
 * candidate for each rung target (the default target among them), as
 * operating points; rungs that repeat a cheaper rung's setting are dropped. */
static int
make_points(const struct tdata *t, const struct cand *c, struct cdx_tune_result *r)
{
	static const double rungs[] = { 0.8, 0.9, 0.95, 0.97, 0.98, 0.99 };
	size_t cap = (size_t) t->nks * (CDX_ARRAY_LEN(rungs) + 1);
	r->points = calloc(cap, sizeof(*r->points));
	if (r->points == NULL)
		return cdx_error(CDX_ENOMEM, "operating points");
	for (uint32_t ki = 0; ki < t->nks; ki++) {
		double targets[CDX_ARRAY_LEN(rungs) + 1];
		size_t nt = 0;
		for (size_t i = 0; i < CDX_ARRAY_LEN(rungs); i++)
			if (fabs(rungs[i] - t->target) > 1e-9)
				targets[nt++] = rungs[i];
		targets[nt++] = t->target;
		for (size_t i = 1; i < nt; i++) /* ascending */
			for (size_t j = i; j > 0 && targets[j] < targets[j - 1]; j--) {
				double x = targets[j];
				targets[j] = targets[j - 1];
				targets[j - 1] = x;
			}
		struct cdx_operating_point *prev = NULL;
		for (size_t ti = 0; ti < nt; ti++) {
			struct cdx_operating_point p = { .recall_target = targets[ti], .k = t->ks[ki] };
			double best = INFINITY;
			if (c->flat) {
				p.recall = 1;
				best = c->best[ki][CDX_REFINE_NONE].ns;
			} else {
				size_t nf = c->kind == CDX_REFINE_NONE ? 1 : nf_for(t->ks[ki]);
				for (uint32_t s = 0; s < c->nsteps; s++)
					for (size_t fi = 0; fi < nf; fi++) {
						double rec = c->rec[s][ki][c->kind][fi],
						       se = c->se[s][ki][c->kind][fi];
						if (!(rec - Z95 * se >= targets[ti]))
							continue;
						double pool = c->kind == CDX_REFINE_NONE
						    ? t->ks[ki]
						    : factors[fi] * t->ks[ki];
						double ns = model_ns(
						    c, c->nprobes[s], c->codes[s], pool, c->kind, t->dim);
						if (ns < best) {
							best = ns;
							p.nprobe = c->nprobes[s];
							p.refine_factor
							    = c->kind == CDX_REFINE_NONE ? 0 : factors[fi];
							p.recall = rec;
							p.recall_se = se;
						}
					}
			}
			if (best == INFINITY)
				break; /* higher rungs are not reached either */
			p.qps = 1e9 / best;
			if (prev != NULL && prev->nprobe == p.nprobe
			    && prev->refine_factor == p.refine_factor) {
				*prev = p; /* one rung, labelled with the highest target it reaches */
				continue;
			}
			r->points[r->npoints] = p;
			prev = &r->points[r->npoints++];
		}
	}
	return CDX_OK;
}

void
cdx_tune_opts_init(struct cdx_tune_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->refine = -1;
	o->seed = CDX_BUILD_DEFAULT_SEED;
}

void
cdx_tune_check_free(struct cdx_tune_check *c)
{
	if (c == NULL)
		return;
	free(c->queries);
	free(c->self);
	cdx_truth_fini(&c->truth);
	free(c);
}

void
cdx_tune_result_fini(struct cdx_tune_result *r)
{
	if (r->index != NULL)
		faiss_Index_free(r->index);
	free(r->sq8_vmin);
	free(r->sq8_vdiff);
	free(r->points);
	if (r->report != NULL)
		json_decref((json_t *) r->report);
	cdx_tune_check_free(r->check);
	memset(r, 0, sizeof(*r));
}

static void
tdata_fini(struct tdata *t)
{
	if (t->base != t->full)
		free(t->base);
	free(t->full);
	free(t->sel);
	cdx_truth_fini(&t->truth);
	for (int k = 0; k < NKINDS; k++)
		free(t->store_data[k]);
	free(t->sq8_vmin);
	free(t->sq8_vdiff);
}

/* pick_queries: --tune-queries, or held-out rows of the input (removed from
 * the tuning base). Alternate queries go to selection and to the check. */
static int
pick_queries(struct tdata *t, const int64_t *ids, struct cdx_tune_check *chk, json_t *report)
{
	const struct cdx_tune_opts *o = t->o;
	uint32_t maxq = o->max_queries ? o->max_queries : CDX_TUNE_DEFAULT_QUERIES;
	float *q = NULL;
	size_t nq = 0;
	uint64_t *held = NULL;
	int rc;
	json_t *qj = json_object();
	json_object_set_new(report, "queries", qj);
	if (o->queries != NULL) {
		if ((rc = read_queries(o->queries, o->queries_format, t->dim, maxq, o->seed, &q, &nq))
		    != CDX_OK)
			return rc;
		t->base = t->full;
		t->n = t->nfull;
		json_object_set_new(qj, "source", json_string(o->queries));
	} else {
		nq = (size_t) CDX_MIN((uint64_t) maxq, t->nfull / 10);
		held = malloc(nq * sizeof(uint64_t));
		q = malloc(nq * t->dim * sizeof(float));
		t->n = t->nfull - nq;
		t->base = malloc(t->n * t->dim * sizeof(float));
		if (held == NULL || q == NULL || t->base == NULL) {
			free(held);
			free(q);
			return cdx_error(CDX_ENOMEM, "tuning queries");
		}
		cdx_build_sample(t->nfull, nq, o->seed ^ 0x68656c64ull, held);
		size_t h = 0, b = 0;
		for (uint64_t r = 0; r < t->nfull; r++) {
			const float *v = t->full + r * t->dim;
			if (h < nq && held[h] == r)
				memcpy(q + h++ * t->dim, v, t->dim * sizeof(float));
			else
				memcpy(t->base + b++ * t->dim, v, t->dim * sizeof(float));
		}
		json_object_set_new(qj, "source", json_string("held-out input rows"));
	}
	if (nq < 2) {
		free(held);
		free(q);
		return cdx_error(CDX_EEMPTY, "tuning needs at least 2 queries, has %zu", nq);
	}
	t->nsel = (nq + 1) / 2;
	chk->nq = nq / 2;
	chk->dim = t->dim;
	chk->metric = t->metric;
	t->sel = malloc(t->nsel * t->dim * sizeof(float));
	chk->queries = malloc((chk->nq ? chk->nq : 1) * t->dim * sizeof(float));
	if (held != NULL)
		chk->self = malloc((chk->nq ? chk->nq : 1) * sizeof(int64_t));
	if (t->sel == NULL || chk->queries == NULL || (held != NULL && chk->self == NULL)) {
		free(held);
		free(q);
		return cdx_error(CDX_ENOMEM, "tuning queries");
	}
	for (size_t i = 0; i < nq; i++) {
		const float *v = q + i * t->dim;
		if (i % 2 == 0) {
			memcpy(t->sel + (i / 2) * t->dim, v, t->dim * sizeof(float));
		} else {
			memcpy(chk->queries + (i / 2) * t->dim, v, t->dim * sizeof(float));
			if (held != NULL)
				chk->self[i / 2] = ids ? ids[held[i]] : (int64_t) held[i];
		}
	}
	if (t->metric == CDX_METRIC_COS)
		cdx_normalize_rows(t->sel, t->nsel, t->dim);
	json_object_set_new(qj, "selection", json_integer((json_int_t) t->nsel));
	json_object_set_new(qj, "check", json_integer((json_int_t) chk->nq));

	/* the check's truth: over the whole input, without the query's own row */
	rc = CDX_OK;
	if (chk->nq > 0) {
		struct cdx_recall_space full = { t->metric, t->dim, t->nfull, t->full };
		float *qn = malloc(chk->nq * t->dim * sizeof(float));
		struct cdx_truth big;
		memset(&big, 0, sizeof(big));
		if (qn == NULL)
			rc = cdx_error(CDX_ENOMEM, "check queries");
		if (rc == CDX_OK) {
			memcpy(qn, chk->queries, chk->nq * t->dim * sizeof(float));
			if (t->metric == CDX_METRIC_COS)
				cdx_normalize_rows(qn, chk->nq, t->dim);
			uint32_t kk = (uint32_t) CDX_MIN((uint64_t) t->kmax + (held != NULL), t->nfull);
			rc = cdx_truth_compute(&big, &full, qn, chk->nq, kk, NULL, NULL);
		}
		if (rc == CDX_OK) {
			struct cdx_truth *ct = &chk->truth;
			ct->nq = chk->nq;
			ct->k = CDX_MIN(t->kmax, big.k);
			ct->metric = t->metric;
			ct->rows = malloc(ct->nq * ct->k * sizeof(int64_t));
			ct->dist = malloc(ct->nq * ct->k * sizeof(float));
			if (ct->rows == NULL || ct->dist == NULL)
				rc = cdx_error(CDX_ENOMEM, "check truth");
			for (size_t i = 0; rc == CDX_OK && i < ct->nq; i++) {
				int64_t self_row = held != NULL ? (int64_t) held[2 * i + 1] : -1;
				uint32_t w = 0;
				for (uint32_t j = 0; j < big.k && w < ct->k; j++) {
					if (big.rows[i * big.k + j] == self_row)
						continue;
					ct->rows[i * ct->k + w] = big.rows[i * big.k + j];
					ct->dist[i * ct->k + w] = big.dist[i * big.k + j];
					w++;
				}
				for (; w < ct->k; w++) {
					ct->rows[i * ct->k + w] = -1;
					ct->dist[i * ct->k + w] = INFINITY;
				}
			}
		}
		cdx_truth_fini(&big);
		free(qn);
	}
	free(held);
	free(q);
	return rc;
}

int
cdx_tune_run(
    const struct cdx_tune_opts *o, cdx_input *in, int metric, const int64_t *ids, struct cdx_tune_result *r)
{
	memset(r, 0, sizeof(*r));
	struct tdata t;
	memset(&t, 0, sizeof(t));
	t.o = o;
	t.t0 = cdx_now_us();
	t.metric = metric;
	t.dim = cdx_input_dim(in);
	t.nfull = cdx_input_rows(in);
	t.target = o->target > 0 ? o->target : CDX_TUNE_DEFAULT_TARGET;
	double budget = o->budget_s > 0 ? o->budget_s : CDX_TUNE_DEFAULT_BUDGET_S;
	static const uint32_t default_ks[] = { 10, 100, 500 };
	const uint32_t *ks = o->nks ? o->ks : default_ks;
	uint32_t nks = o->nks ? o->nks : (uint32_t) CDX_ARRAY_LEN(default_ks);
	json_t *report = json_object();
	struct cdx_tune_check *chk = calloc(1, sizeof(*chk));
	struct cand *cands = calloc(8, sizeof(*cands));
	FaissIndex *best_index = NULL, *tr = NULL;
	uint64_t *sample = NULL;
	int rc = CDX_OK;
	if (report == NULL || chk == NULL || cands == NULL) {
		rc = cdx_error(CDX_ENOMEM, "tuning");
		goto done;
	}
	if (t.nfull > CDX_TUNE_MAX_ROWS) {
		rc = cdx_error(CDX_EINVAL,
		    "%llu rows: the self-tuning build measures up to %d rows in memory; give --factory "
		    "(and --refine) from a tuning run on a sample, or --no-tune",
		    (unsigned long long) t.nfull, CDX_TUNE_MAX_ROWS);
		goto done;
	}
	for (uint32_t i = 0; i < nks; i++) /* a k beyond a tenth of the items says little */
		if (ks[i] <= CDX_MAX(1u, (uint32_t) (t.nfull / 10)) || i == 0)
			t.ks[t.nks++] = (uint32_t) CDX_MIN((uint64_t) ks[i], t.nfull);
	t.kmax = t.ks[t.nks - 1];

	cdx_info("BLD-TUNE", "tuning for %u-recall@%u >= %.3g%s (budget %.0f s): reading %llu rows", t.ks[0],
	    t.ks[0], t.target, t.nks > 1 ? " and the other k" : "", budget, (unsigned long long) t.nfull);
	if ((rc = read_all(in, metric, &t.full)) != CDX_OK)
		goto done;
	if (metric == CDX_METRIC_IP) {
		for (uint64_t i = 0; i < t.nfull; i++) {
			const float *v = t.full + i * t.dim;
			double s = 0;
			for (uint32_t j = 0; j < t.dim; j++)
				s += (double) v[j] * v[j];
			if (s > t.max_norm2)
				t.max_norm2 = s;
		}
	}
	if ((rc = pick_queries(&t, ids, chk, report)) != CDX_OK)
		goto done;
	t.space = (struct cdx_recall_space) { metric, t.dim, t.n, t.base };
	if ((rc = cdx_truth_compute(&t.truth, &t.space, t.sel, t.nsel, t.kmax, NULL, NULL)) != CDX_OK)
		goto done;
	t.pool = 1;
	for (uint32_t ki = 0; ki < t.nks; ki++)
		t.pool = CDX_MAX(t.pool, (size_t) (factors[nf_for(t.ks[ki]) - 1] * (float) t.ks[ki]));
	t.pool = CDX_MIN(t.pool, t.n);
	if ((rc = make_stores(&t)) != CDX_OK)
		goto done;
	cdx_info("BLD-TUNE", "%zu selection and %zu check queries (%s), exact neighbours in %.1f s", t.nsel,
	    chk->nq, o->queries ? o->queries : "held-out rows", elapsed_s(&t));

	int kinds[NKINDS] = { 1, 1, 1, 1 };
	if (o->refine >= 0)
		for (int k = 0; k < NKINDS; k++)
			kinds[k] = k == o->refine;

	size_t ncand = 0;
	struct cand *best = &cands[ncand++];
	flat_cand(&t, best);
	log_cand(&t, best);
	if (t.nfull >= CDX_TUNE_FLAT_BELOW) {
		uint32_t nbits = t.n >= CDX_BUILD_8BIT_FROM ? 8 : 4, dsub[2] = { 4, 8 };
		if (nbits == 4) {
			dsub[0] = 2;
			dsub[1] = 4;
		}
		/* lists of a few hundred items: each probed list costs a table of
		 * M x 2^nbits entries, as much as scanning ~M x 2^nbits / M codes */
		uint32_t nlist0 = tune_nlist(t.n);
		/* coarse groups: (transform, PCA); PCA first where the dimension is high */
		struct {
			int transform;
			uint32_t pca;
		} groups[4];
		size_t ngroups = 0;
		int mips_first = metric == CDX_METRIC_IP;
		if (t.dim >= 256)
			groups[ngroups++].pca = 64,
			groups[ngroups - 1].transform = mips_first ? CDX_TRANSFORM_MIPS_L2 : 0;
		if (t.dim >= 512)
			groups[ngroups++].pca = 128,
			groups[ngroups - 1].transform = mips_first ? CDX_TRANSFORM_MIPS_L2 : 0;
		groups[ngroups].pca = 0, groups[ngroups++].transform = CDX_TRANSFORM_NONE;
		if (metric == CDX_METRIC_IP)
			groups[ngroups].pca = 0, groups[ngroups++].transform = CDX_TRANSFORM_MIPS_L2;

		size_t ns = (size_t) CDX_MIN((uint64_t) t.n, (uint64_t) CDX_MAX(32768u, 64u * 4 * nlist0));
		if ((sample = malloc(ns * sizeof(uint64_t))) == NULL) {
			rc = cdx_error(CDX_ENOMEM, "tuning sample");
			goto done;
		}
		cdx_build_sample(t.n, ns, o->seed, sample);
		r->params.train_sample = ns;
		struct cand *ivf_best = NULL;
		FaissIndex *group_first[4] = { NULL, NULL, NULL, NULL };
		double spent = 0;
		size_t measured = 0;
		for (int stage = 0; stage < 3 && rc == CDX_OK; stage++) {
			size_t nstage = stage == 0 ? ngroups : 1;
			for (size_t g = 0; g < nstage && rc == CDX_OK; g++) {
				double avg = measured ? spent / (double) measured : 0;
				if (elapsed_s(&t) + avg > budget && ivf_best != NULL) {
					cdx_warn("BLD-TUNE",
					    "tuning budget of %.0f s reached after %.1f s: %zu candidate(s) "
					    "measured, the rest skipped (--tune-budget)",
					    budget, elapsed_s(&t), measured);
					json_object_set_new(report, "budget_reached", json_true());
					stage = 3;
					break;
				}
				struct cand *c = &cands[ncand];
				const FaissIndex *like = NULL;
				if (stage == 0) {
					ivf_cand(&t, c, groups[g].transform, groups[g].pca, nlist0, nbits,
					    dsub[0]);
					c->group = (int) g;
				} else if (stage == 1) { /* the best group, the other sub-vector size */
					if (ivf_best == NULL)
						continue;
					ivf_cand(&t, c, ivf_best->transform, ivf_best->pca, ivf_best->nlist,
					    nbits, dsub[1]);
					c->group = ivf_best->group;
					like = group_first[ivf_best->group];
				} else { /* four times the lists: shorter lists, a larger coarse step */
					if (ivf_best == NULL
					    || t.n / (nlist0 * 4) < CDX_BUILD_MIN_POINTS_PER_LIST)
						continue;
					ivf_cand(&t, c, ivf_best->transform, ivf_best->pca, nlist0 * 4, nbits,
					    ivf_best->group_dim / ivf_best->m);
					c->group = -1;
				}
				if (c->m == 0 || c->group_dim % c->m != 0)
					continue;
				uint64_t c0 = cdx_now_us();
				rc = measure_ivf(&t, c, like, sample, ns, kinds, &tr);
				if (rc != CDX_OK)
					break;
				ncand++;
				measured++;
				spent += (double) (cdx_now_us() - c0) / 1e6;
				log_cand(&t, c);
				if (stage == 0)
					group_first[g] = tr; /* kept: stage 1 reuses its coarse stage */
				if (better(c, ivf_best)) {
					ivf_best = c;
					if (best_index != NULL && best_index != tr) {
						int shared = 0;
						for (int i = 0; i < 4; i++)
							shared |= group_first[i] == best_index;
						if (!shared)
							faiss_Index_free(best_index);
					}
					best_index = tr;
				} else if (stage != 0) {
					faiss_Index_free(tr);
				}
				tr = NULL;
			}
		}
		for (int i = 0; i < 4; i++)
			if (group_first[i] != NULL && group_first[i] != best_index)
				faiss_Index_free(group_first[i]);
		if (rc != CDX_OK)
			goto done;
		if (ivf_best != NULL && better(ivf_best, best))
			best = ivf_best;
	}
	if (!best->flat && best_index == NULL) {
		rc = cdx_error(CDX_EINTERNAL, "tuning chose an index it did not keep");
		goto done;
	}
	if (best->ns == INFINITY) {
		/* nothing but exact search reaches the target: that is the answer */
		best = &cands[0];
	}
	if (t.nfull < CDX_TUNE_FLAT_BELOW)
		snprintf(r->params.note, sizeof(r->params.note),
		    "%llu items < %d: exact Flat index (too few points to train IVF-PQ; a scan is cheap at "
		    "this size)",
		    (unsigned long long) t.nfull, CDX_TUNE_FLAT_BELOW);

	/* the result */
	r->target = t.target;
	r->nks = t.nks;
	memcpy(r->ks, t.ks, sizeof(r->ks));
	r->transform = best->transform;
	r->index_dim = best->index_dim;
	r->max_norm2 = best->transform == CDX_TRANSFORM_MIPS_L2 ? t.max_norm2 : 0;
	r->refine
	    = o->refine >= 0 ? o->refine : best->kind; /* exact search still carries a store asked for */
	snprintf(r->params.factory, sizeof(r->params.factory), "%s", best->factory);
	r->params.flat = best->flat;
	r->params.nlist = best->nlist;
	r->params.pq_m = best->m;
	r->params.pq_nbits = best->nbits;
	if (best->flat) {
		FaissMetricType fm = metric == CDX_METRIC_IP ? METRIC_INNER_PRODUCT : METRIC_L2;
		if (faiss_index_factory(&r->index, (int) t.dim, "Flat", fm) != 0) {
			rc = cdx_error_faiss("Flat");
			goto done;
		}
		r->params.train_sample = 0;
	} else {
		faiss_Index_reset(best_index);
		r->index = best_index;
		best_index = NULL;
	}
	if (r->refine == CDX_REFINE_SQ8) {
		r->sq8_vmin = malloc(t.dim * sizeof(float));
		r->sq8_vdiff = malloc(t.dim * sizeof(float));
		if (r->sq8_vmin == NULL || r->sq8_vdiff == NULL) {
			rc = cdx_error(CDX_ENOMEM, "sq8 tables");
			goto done;
		}
		memcpy(r->sq8_vmin, t.sq8_vmin, t.dim * sizeof(float));
		memcpy(r->sq8_vdiff, t.sq8_vdiff, t.dim * sizeof(float));
	}
	if ((rc = make_points(&t, best, r)) != CDX_OK)
		goto done;
	r->params.default_nprobe = r->npoints > 0 && r->points[0].nprobe > 0 ? r->points[0].nprobe : 1;
	for (uint32_t i = 0; i < r->npoints; i++)
		if (r->points[i].k == t.ks[0] && fabs(r->points[i].recall_target - t.target) < 1e-9)
			r->params.default_nprobe = CDX_MAX(1u, r->points[i].nprobe);

	char name[200];
	cand_name(best, best->kind, name, sizeof(name));
	json_object_set_new(report, "target", json_real(t.target));
	json_t *kj = json_array();
	for (uint32_t i = 0; i < t.nks; i++)
		json_array_append_new(kj, json_integer(t.ks[i]));
	json_object_set_new(report, "k", kj);
	json_object_set_new(report, "chosen", json_string(name));
	json_object_set_new(report, "budget_s", json_real(budget));
	json_object_set_new(report, "seconds", json_real(elapsed_s(&t)));
	json_t *cj = json_array();
	for (size_t i = 0; i < ncand; i++) {
		const struct cand *c = &cands[i];
		for (int kind = 0; kind < NKINDS; kind++)
			if (c->evaluated && (c->flat ? kind == CDX_REFINE_NONE : kinds[kind]))
				json_array_append_new(
				    cj, cand_json(&t, c, kind, c == best && kind == best->kind));
	}
	json_object_set_new(report, "candidates", cj);
	r->report = report;
	report = NULL;
	r->check = chk;
	chk = NULL;
	cdx_info("BLD-TUNE", "chose %s: %.0f QPS modelled, %.0f B/item, tuned in %.1f s", name,
	    1e9 / best->ns, best->bytes, elapsed_s(&t));
done:
	if (best_index != NULL)
		faiss_Index_free(best_index);
	if (tr != NULL)
		faiss_Index_free(tr);
	free(sample);
	free(cands);
	if (report != NULL)
		json_decref(report);
	cdx_tune_check_free(chk);
	tdata_fini(&t);
	if (rc != CDX_OK)
		cdx_tune_result_fini(r);
	return rc;
}

/* --- the check, at publish time ------------------------------------------------ */

static int
cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
	return x < y ? -1 : x > y;
}

/* check_query returns query qi's recall at k from the returned rows, judged
 * by true distance (read back from the input) as recall_metrics.c does. */
static double
check_query(const struct cdx_tune_check *chk, cdx_input *in, size_t qi, const float *qn, const int64_t *rows,
    uint32_t k, uint64_t *sorted, float *vecs)
{
	const int64_t *truth = chk->truth.rows + qi * chk->truth.k;
	uint32_t r = 0;
	while (r < k && r < chk->truth.k && truth[r] >= 0)
		r++;
	if (r == 0)
		return NAN;
	size_t n = 0;
	for (uint32_t j = 0; j < k; j++)
		if (rows[j] >= 0)
			sorted[n++] = (uint64_t) rows[j];
	qsort(sorted, n, sizeof(uint64_t), cmp_u64);
	size_t u = 0;
	for (size_t j = 0; j < n; j++)
		if (u == 0 || sorted[j] != sorted[u - 1])
			sorted[u++] = sorted[j];
	if (u > 0 && cdx_input_read_rows(in, sorted, u, vecs) != CDX_OK)
		return NAN;
	if (chk->metric == CDX_METRIC_COS)
		cdx_normalize_rows(vecs, u, chk->dim);
	struct cdx_recall_space s = { chk->metric, chk->dim, u, vecs };
	double thr = (double) chk->truth.dist[qi * chk->truth.k + r - 1] + CDX_RECALL_EPSILON_DEFAULT;
	uint32_t found = 0;
	for (size_t j = 0; j < u; j++)
		found += (double) (float) cdx_recall_distance(&s, qn, (int64_t) j) <= thr;
	return (double) CDX_MIN(found, r) / r;
}

int
cdx_tune_check_version(const struct cdx_tune_check *chk, const char *dir, const char *input, int input_format,
    uint32_t dim, const int64_t *ids, uint64_t rows, struct cdx_manifest *m)
{
	if (chk == NULL || chk->nq == 0 || m->ntuned_k == 0)
		return CDX_OK;
	cdx_collection *c = NULL;
	cdx_input *in = NULL;
	struct cdx_idmap map;
	memset(&map, 0, sizeof(map));
	uint32_t kmax = m->tuned_k[m->ntuned_k - 1];
	int64_t *hit_ids = malloc(kmax * sizeof(int64_t)), *hit_rows = malloc(kmax * sizeof(int64_t));
	struct cdx_hit *hits = malloc(kmax * sizeof(*hits));
	uint64_t *sorted = malloc(kmax * sizeof(uint64_t));
	float *vecs = malloc((size_t) kmax * chk->dim * sizeof(float)),
	      *qn = malloc(chk->dim * sizeof(float));
	double *per = malloc(chk->nq * sizeof(double));
	int rc = CDX_OK;
	if (hit_ids == NULL || hit_rows == NULL || hits == NULL || sorted == NULL || vecs == NULL
	    || qn == NULL || per == NULL) {
		rc = cdx_error(CDX_ENOMEM, "tuning check");
		goto done;
	}
	if ((rc = cdx_collection_load(&c, dir)) != CDX_OK)
		goto done;
	if ((rc = cdx_input_open(&in, input, dim, cdx_input_format_family(input_format))) != CDX_OK)
		goto done;
	if (ids != NULL)
		rc = cdx_idmap_init_ids(&map, ids, rows);
	else
		cdx_idmap_identity(&map, rows);
	if (rc != CDX_OK)
		goto done;
	for (uint32_t ki = 0; ki < m->ntuned_k && rc == CDX_OK; ki++) {
		uint32_t k = m->tuned_k[ki];
		struct cdx_point_choice pc;
		cdx_points_choose(m, k, 0, 0, 0, 0, &pc);
		size_t nq = 0;
		for (size_t i = 0; i < chk->nq && rc == CDX_OK; i++) {
			const float *q = chk->queries + i * chk->dim;
			struct cdx_search_params sp = { .k = k };
			if (chk->self != NULL) {
				sp.exclude_ids = &chk->self[i];
				sp.n_exclude_ids = 1;
			}
			if ((rc = cdx_collection_search(c, &sp, q, 1, hits)) != CDX_OK)
				break;
			for (uint32_t j = 0; j < k; j++)
				hit_rows[j] = hits[j].id < 0 ? -1 : cdx_idmap_row(&map, hits[j].id);
			memcpy(qn, q, chk->dim * sizeof(float));
			if (chk->metric == CDX_METRIC_COS)
				cdx_normalize_rows(qn, 1, chk->dim);
			double rq = check_query(chk, in, i, qn, hit_rows, k, sorted, vecs);
			if (!isnan(rq))
				per[nq++] = rq;
		}
		if (rc != CDX_OK || nq == 0)
			break;
		double sum = 0, s2 = 0;
		for (size_t i = 0; i < nq; i++)
			sum += per[i];
		double mean = sum / (double) nq;
		for (size_t i = 0; i < nq; i++)
			s2 += (per[i] - mean) * (per[i] - mean);
		double se = nq > 1 ? sqrt(s2 / (double) (nq - 1) / (double) nq) : 0;
		struct cdx_operating_point *p = (struct cdx_operating_point *) pc.point;
		if (p != NULL) /* chosen among m's own points */
			p->check_recall = mean;
		cdx_info("BLD-CHECK",
		    "k %u: %u-recall@%u %.4f +- %.4f on %zu queries the tuner did not see (chosen at %.4f on "
		    "its own; target %.3g)",
		    k, k, k, mean, se, nq, p ? p->recall : NAN, m->default_recall_target);
		if (mean + Z95 * se < m->default_recall_target)
			cdx_warn("BLD-CHECK",
			    "k %u: recall on unseen queries is below the target with 95%% confidence: the "
			    "tuning "
			    "queries may not be like the traffic (--tune-queries)",
			    k);
	}
done:
	cdx_idmap_fini(&map);
	cdx_input_close(in);
	cdx_collection_unref(c);
	free(hit_ids);
	free(hit_rows);
	free(hits);
	free(sorted);
	free(vecs);
	free(qn);
	free(per);
	return rc;
}
