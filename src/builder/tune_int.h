/*
 * tune_int.h — the insides of the self-tuning build, shared by tune.c (the
 * run: queries, candidates, choice, operating points, report) and
 * tune_measure.c (building one candidate and measuring it). Not a public
 * interface; tune.h has the DESIGN.
 */
#ifndef CANDEX_TUNE_INT_H
#define CANDEX_TUNE_INT_H

#include <math.h>

#include "builder/tune.h"
#include "faissx/error.h"
#include "search/search.h"
#include "shard/refine.h"

#define NKINDS     4    /* refine: none, fp32, fp16, sq8 (enum cdx_refine_kind order) */
#define MAX_F      5    /* refine factors 1, 2, 4, 8, 16 */
#define MAX_NPROBE 16   /* nprobe ladder 1, 2, 4, ... */
#define TRAIN_ITER 10   /* k-means iterations (Faiss: 25): recall measured equal on sift and glove */
#define TRAIN_PTS  64   /* sample cap per centroid (Faiss: 256) */
#define COST_TIE   1.10 /* structures this close in cost are ranked by bytes per item */

static const float factors[MAX_F] = { 1, 2, 4, 8, 16 };

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
	int fastscan; /* 4-bit codes in SIMD blocks (PQ<M>x4fs) */
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

/* A per-query cache of candidates' scores. A row's scores for a query do
 * not depend on the structure that found it, so the cache is kept across
 * every nprobe of a candidate and across candidates: their pools overlap
 * mostly, and scoring (full-dimension re-rank distances) is most of the
 * tuner's search time. */
struct score_cache {
	uint32_t slots; /* a power of two >= 4 x pool, per query */
	int32_t *row;   /* nsel x slots; -1 = empty */
	float *score;   /* nsel x slots x NKINDS: [0] true distance, [kind] re-ranked score */
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
	size_t pool;                    /* candidates fetched per selection query */
	double flat_ns[CDX_TUNE_MAX_K]; /* exact search's modelled cost at each k */
	struct score_cache cache;       /* tune_measure.c */
};

static inline int
higher_better(int metric)
{
	return cdx_metric_higher_is_better(metric);
}

static inline size_t
nf_for(uint32_t k)
{
	/* factor x k candidates are re-ranked; beyond 16 x 10, 8 x 100, 4 x 500
	 * the pool costs more than more lists do */
	return k <= 10 ? 5 : k <= 100 ? 4 : 3;
}

static inline double
elapsed_s(const struct tdata *t)
{
	return (double) (cdx_now_us() - t->t0) / 1e6;
}

/* tune_measure.c */
/* cdx__tune_model_ns: one query's modelled CPU time (ns) with candidate c
 * at nprobe (codes scanned per query), pool candidates, a refine kind. */
double cdx__tune_model_ns(
    const struct cand *c, uint32_t nprobe, double codes, double pool, int kind, uint32_t dim);
/* cdx__tune_bytes_per_item: an item's memory with candidate c and a refine kind. */
double cdx__tune_bytes_per_item(const struct cand *c, int kind, uint32_t dim);
/* cdx__tune_cache_init makes t->cache for t->nsel queries and pools of
 * t->pool; cdx__tune_cache_fini frees it. */
int cdx__tune_cache_init(struct tdata *t);
void cdx__tune_cache_fini(struct tdata *t);
/* cdx__tune_measure_ivf builds candidate c (over like's coarse stage when
 * like is not NULL), adds the tuning base, searches the nprobe ladder and
 * chooses its settings; *trained gets a copy of the trained, empty index. */
int cdx__tune_measure_ivf(struct tdata *t, struct cand *c, const FaissIndex *like, const uint64_t *sample,
    size_t ns, const int *kinds, FaissIndex **trained);

#endif
