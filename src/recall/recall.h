/*
 * recall.h — measuring recall: exact ground truth, recall metrics with the
 * ann-benchmarks tie rule, a sweep over search settings, reports (table, CSV,
 * JSON, gnuplot PNG) and operating points. `candex recall` is a thin main()
 * over this; docs/recall.md explains the definitions.
 *
 * DESIGN
 * Everything here works on "base rows": the row numbers of the vectors the
 * index was built from (the builder's --input). Ground truth is computed by a
 * Faiss flat index over those vectors (or read from an .ivecs file of rows)
 * and stored with each neighbour's true distance, so that a returned hit can
 * be judged by its distance, not its row: a hit counts when its true distance
 * is <= the r-th true distance + epsilon (ann-benchmarks' rule). The true
 * distance of a hit is recomputed from the base vectors, never taken from the
 * index's approximate score, and all distances (truth and hits) come from the
 * same double-precision routine so that equal vectors compare equal.
 *
 * Distances are "lower is better" for every metric:
 *   l2  -> Euclidean distance (not squared, as ann-benchmarks)
 *   ip  -> -<x, q>
 *   cos -> 1 - <x/|x|, q/|q|>
 * epsilon is in those units.
 *
 * The sweep does not know what it searches: a cdx_recall_backend callback
 * runs the queries (in process over a loaded collection, or over RPC to a
 * server; see recall_backend.c), and returns external ids, which a
 * cdx_idmap turns into base rows.
 */
#ifndef CANDEX_RECALL_H
#define CANDEX_RECALL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "common/common.h"
#include "input/input.h"

#define CDX_RECALL_EPSILON_DEFAULT 1e-3

/* --- external id -> base row ------------------------------------------- */

/* The index's hits carry external ids. Without explicit ids (the builder got
 * no --ids) id == base row; with them, ids[row] is the id of base row row. */
struct cdx_idmap {
	size_t n;
	int64_t *sorted_ids; /* NULL = identity */
	int64_t *rows;       /* rows[i] is the base row of sorted_ids[i] */
};
/* cdx_idmap_init_ids builds a map from ids[0..n) (copied); duplicates are an error. */
int cdx_idmap_init_ids(struct cdx_idmap *m, const int64_t *ids, size_t n);
void cdx_idmap_identity(struct cdx_idmap *m, size_t n);
/* cdx_idmap_row returns the base row of id, or -1 if no base row has that id. */
int64_t cdx_idmap_row(const struct cdx_idmap *m, int64_t id);
void cdx_idmap_fini(struct cdx_idmap *m);

/* --- distances ----------------------------------------------------------- */

/* The space in which true distances are computed. base is nb x dim, already
 * normalised for cos; NULL means "no base vectors": recall is then judged by
 * row identity only (no tie rule). */
struct cdx_recall_space {
	int metric; /* enum cdx_metric */
	uint32_t dim;
	size_t nb;
	const float *base;
};

/* cdx_recall_distance is the true distance (lower is better, see DESIGN) of
 * base row row to q (normalised for cos), in double precision. Rows outside
 * [0, nb) are +infinity. */
double cdx_recall_distance(const struct cdx_recall_space *s, const float *q, int64_t row);

/* --- ground truth -------------------------------------------------------- */

/* The k nearest base rows of each query, best first, with true distances.
 * Ties are ordered by the lower row. dist is NULL when the truth came from an
 * .ivecs file without base vectors. */
struct cdx_truth {
	size_t nq;
	uint32_t k;
	int metric;
	int64_t *rows; /* nq x k; -1 past the end of a base with < k rows */
	float *dist;   /* nq x k, or NULL */
};

/* cdx_truth_compute finds the exact top-k of queries (nq x dim, normalised
 * for cos) among s->base with a Faiss flat index (IndexFlatL2 for l2,
 * IndexFlatIP for ip and cos), 1024 queries per call (Faiss parallelises each
 * call with OpenMP), then recomputes the distances with cdx_recall_distance
 * and re-sorts, so that truth and hits are judged by one routine.
 * progress (may be NULL) is called after each batch. */
int cdx_truth_compute(struct cdx_truth *t, const struct cdx_recall_space *s, const float *queries, size_t nq,
    uint32_t k, void (*progress)(void *arg, size_t done, size_t total), void *arg);

/* cdx_recall_exact_qps times exact search, the baseline IVF-PQ is compared
 * with: a Faiss flat index over s->base, all queries at k in batches of 1024
 * (Faiss's OpenMP threads on every core), at least twice and until
 * min_seconds; the fastest pass counts. */
int cdx_recall_exact_qps(const struct cdx_recall_space *s, const float *queries, size_t nq, uint32_t k,
    double min_seconds, double *qps);

/* cdx_truth_from_rows makes truth from given neighbour rows (e.g. an .ivecs
 * file: nq rows of gt_k ints, of which the first k are kept). With base
 * vectors (s->base != NULL) each row's true distance is computed. Errors:
 * CDX_EINVAL when gt_k < k (rows shorter than k), CDX_ECORRUPT for a row
 * number outside the base. */
int cdx_truth_from_rows(struct cdx_truth *t, const struct cdx_recall_space *s, const float *queries,
    size_t nq, const int32_t *gt, uint32_t gt_k, uint32_t k);

/* cdx_truth_key is the cache key: xxh64 of base, queries, metric, k and an
 * optional extra (e.g. the ivecs file's contents). */
uint64_t cdx_truth_key(const struct cdx_recall_space *s, const float *queries, size_t nq, uint32_t k,
    const void *extra, size_t extra_len);
/* cdx_truth_cache_path writes "<dir>/truth-<key hex16>.cdxgt" to out (PATH_MAX). */
void cdx_truth_cache_path(char *out, size_t outlen, const char *dir, uint64_t key);
/* cdx_truth_save writes t (rows and distances, checksummed) atomically. */
int cdx_truth_save(const struct cdx_truth *t, const char *path);
/* cdx_truth_load reads a file written by cdx_truth_save. CDX_ENOTFOUND if
 * absent, CDX_ECORRUPT on any inconsistency (the caller recomputes). */
int cdx_truth_load(struct cdx_truth *t, const char *path);
void cdx_truth_fini(struct cdx_truth *t);

/* --- metrics ------------------------------------------------------------- */

/* cdx_recall_query counts, for query qi, the returned base rows (hits[0..k),
 * -1 = none) that are among its r nearest: with distances (t->dist and
 * s->base) a distinct hit counts when its true distance <= the r-th true
 * distance + eps; without them, when its row is one of the r truth rows.
 * The count is capped at r. Returns the count / r, in [0, 1].
 * r-recall@k with r = k is ann-benchmarks' k-recall@k; r = 1 is 1-recall@k. */
double cdx_recall_query(const struct cdx_truth *t, const struct cdx_recall_space *s, const float *q,
    size_t qi, const int64_t *hits, uint32_t k, uint32_t r, double eps);

/* cdx_recall_mean is the mean of cdx_recall_query over nq queries; hits are
 * nq x stride rows (stride >= k), queries nq x dim (normalised for cos). */
double cdx_recall_mean(const struct cdx_truth *t, const struct cdx_recall_space *s, const float *queries,
    const int64_t *hits, size_t nq, size_t stride, uint32_t k, uint32_t r, double eps);
/* cdx_recall_mean_se is cdx_recall_mean that also sets *se, the standard
 * error of that mean (sample standard deviation / sqrt(n)). */
double cdx_recall_mean_se(const struct cdx_truth *t, const struct cdx_recall_space *s, const float *queries,
    const int64_t *hits, size_t nq, size_t stride, uint32_t k, uint32_t r, double eps, double *se);

/* cdx_percentile returns the p-th percentile (0..100, nearest rank) of
 * v[0..n), sorting v in place. NAN when n == 0. */
double cdx_percentile(double *v, size_t n, double p);

/* --- sweep ---------------------------------------------------------------- */

/* What is evaluated. search() runs nq queries (raw, as a client would send
 * them) with the given settings and writes nq x k external ids (-1 = none).
 * It must be safe to call from several threads at once. parallel: the call
 * may use several threads itself (unused by the sweep, which parallelises
 * across calls). */
struct cdx_recall_backend {
	void *ctx;
	int (*search)(void *ctx, const float *queries, size_t nq, uint32_t k, uint32_t nprobe,
	    float refine_factor, int64_t *ids);
	uint32_t batch; /* queries per call in the QPS pass; 0 = 256 */
};

/* Value passed as refine_factor for "no re-ranking": search treats 0 as
 * "the collection's default" and anything below 1 as none. */
#define CDX_RECALL_REFINE_NONE 0.5f

struct cdx_collection;
struct cdx_client;

/* cdx_recall_backend_collection searches a loaded collection in process
 * (cdx_collection_search, one thread per call). c must outlive be. */
void cdx_recall_backend_collection(struct cdx_recall_backend *be, const struct cdx_collection *c);

/* cdx_recall_backend_client searches collection over RPC (cdx_client_search),
 * batch queries per request. cl and collection must outlive be. */
int cdx_recall_backend_client(struct cdx_recall_backend *be, struct cdx_client *cl, const char *collection,
    uint32_t dim, uint32_t batch);
void cdx_recall_backend_fini(struct cdx_recall_backend *be); /* frees what _client allocated */

/* The queries, their truth and how to judge hits. */
struct cdx_recall_set {
	struct cdx_recall_space space;
	const float *queries;      /* nq x dim, as sent to the index */
	const float *queries_norm; /* nq x dim, normalised for cos (== queries otherwise) */
	size_t nq;
	const struct cdx_truth *truth;
	const struct cdx_idmap *idmap;
	double eps;
};

/* One measured setting. Recall figures are NAN when not measurable (k larger
 * than the truth holds). */
struct cdx_recall_row {
	uint32_t nprobe;
	float refine_factor; /* 0 = none */
	uint32_t k;
	double recall;                          /* k-recall@k at the primary k */
	double recall_se;                       /* its standard error over the queries (0 if unknown) */
	double recall_1;                        /* 1-recall@k */
	double recall_10;                       /* 10-recall@10 */
	double recall_100;                      /* 100-recall@100 */
	double p50_ms, p95_ms, p99_ms, mean_ms; /* single-query calls */
	double qps;                             /* batched, threads in parallel */
	double bytes_per_vector;
	size_t nq;
	size_t mismatched; /* queries whose single-call and batched hits differ */
};

struct cdx_sweep_config {
	uint32_t k;
	const uint32_t *nprobes;
	size_t n_nprobes;
	const float *refines; /* 0 = none */
	size_t n_refines;
	unsigned threads;       /* QPS pass; 0 = online CPUs */
	double min_seconds;     /* the QPS pass repeats until it has run this long; 0 = 0.3 */
	size_t latency_queries; /* single-query calls per setting; 0 = all */
	double bytes_per_vector;
	/* called after each setting (row) and, with row NULL, during long passes */
	void (*progress)(
	    void *arg, size_t done, size_t total, const char *what, const struct cdx_recall_row *row);
	void *progress_arg;
};

/* cdx_recall_sweep measures every nprobe x refine setting. On success *rows
 * (n_nprobes x n_refines entries, refine-major) is malloc'd; the caller frees it. */
int cdx_recall_sweep(const struct cdx_recall_backend *be, const struct cdx_recall_set *set,
    const struct cdx_sweep_config *cfg, struct cdx_recall_row **rows, size_t *nrows);

/* cdx_recall_default_nprobes fills out (capacity cap) with 1, 2, 4, ... up to
 * min(nlist, 1024), ending with that bound; nlist 0 (flat index) gives {1}. */
size_t cdx_recall_default_nprobes(uint32_t nlist, uint32_t *out, size_t cap);

/* cdx_recall_pick returns the index of the cheapest row (highest QPS, then
 * lowest p99) whose recall reaches target with 95% confidence (recall -
 * 1.645 x recall_se >= target: a point picked on tuning queries must hold on
 * the traffic it is saved for, not only on average over those queries), or
 * -1 if none does. */
long cdx_recall_pick(const struct cdx_recall_row *rows, size_t n, double target);

/* cdx_recall_monotonic_check returns the largest drop in recall as nprobe
 * rises at a fixed refine factor, and the setting where it happens. */
double cdx_recall_worst_drop(const struct cdx_recall_row *rows, size_t n, size_t *at);

/* --- reports --------------------------------------------------------------- */

/* Context printed with the results. */
struct cdx_recall_meta {
	const char *collection;
	const char *version;
	const char *source; /* index path or server URL */
	int metric;
	uint32_t dim;
	size_t nb;
	uint64_t items; /* in the index */
	uint32_t nlist; /* 0 = flat */
	size_t nq;
	uint32_t k;
	double eps;
	const char *truth_source; /* "computed", "cache", "ivecs" */
	int ids_only;             /* no base vectors: no tie rule */
	double exact_qps;         /* exact-search baseline (--baseline), 0 = not measured */
};

void cdx_recall_table_header(FILE *out, uint32_t k);
void cdx_recall_table_row(FILE *out, const struct cdx_recall_row *r);
int cdx_recall_write_csv(const char *path, const struct cdx_recall_row *rows, size_t n);

struct cdx_recall_point {
	double target;
	long row; /* index into rows, -1 = not reached */
};
int cdx_recall_write_json(const char *path, const struct cdx_recall_meta *meta,
    const struct cdx_recall_row *rows, size_t n, const struct cdx_recall_point *points, size_t npoints);

/* cdx_recall_plot writes png_path's .gp script and .dat data next to it and
 * runs gnuplot (pngcairo, else png) as a child: recall (x) against QPS (y,
 * log scale), one line per refine factor, and exact_qps (if > 0) as a
 * dashed line: the exact-search baseline. */
int cdx_recall_plot(
    const char *png_path, const char *title, const struct cdx_recall_row *rows, size_t n, double exact_qps);

/* --- a whole measurement, as `candex recall` runs it ------------------------ */

#define CDX_RECALL_MAX_LIST 64

/* What to measure and report (the options of `candex recall`; strings are
 * borrowed). cdx_recall_job_init fills the defaults. */
struct cdx_recall_job {
	const char *index; /* a version directory (DIR/NAME, .../CURRENT, .../<v>) */
	const char *url;   /* or a live server, with collection */
	const char *collection;
	const char *queries, *base, *ids, *gt; /* files, read by src/input */
	int format;            /* of queries and base: CDX_INPUT_AUTO, _FVECS, _NPY, _RAW_F32 */
	const char *cache_dir; /* of computed truth; NULL: the default */
	int no_cache;
	double eps; /* tie tolerance */
	uint32_t k;
	uint32_t nprobes[CDX_RECALL_MAX_LIST];
	size_t n_nprobes;                   /* 0: 1, 2, 4, ... up to min(nlist, 1024) */
	float refines[CDX_RECALL_MAX_LIST]; /* CDX_RECALL_REFINE_NONE for none */
	size_t n_refines;                   /* 0: none, and 2, 4, 8 with a refine store */
	int defaults;                       /* measure only the collection's default operating point */
	size_t max_queries, latency_queries;
	unsigned threads;
	uint32_t batch, timeout_ms;
	double min_time;
	int baseline; /* also time exact search */
	const char *csv, *json, *plot, *title;
	double targets[CDX_RECALL_MAX_LIST];
	size_t n_targets;
	int save;  /* write the points reached into the version's manifest */
	int quiet; /* no progress on stderr */
};
void cdx_recall_job_init(struct cdx_recall_job *j);
/* cdx_recall_job_check checks the rules between options (--save needs
 * --target, ...): CDX_EINVAL with a message saying what is missing. */
int cdx_recall_job_check(const struct cdx_recall_job *j);
/* cdx_recall_run measures: the table of every setting (and the operating
 * points) on out as it goes, progress on stderr unless quiet, the files
 * asked for. *unreached is 1 when a target was reached by no setting. */
int cdx_recall_run(const struct cdx_recall_job *j, FILE *out, int *unreached);

#endif
