/*
 * tune.h — the self-tuning build: choose a collection's structure (exact
 * search, or IVF-PQ with its transform, lists, codes and refine store) and
 * its operating points by measurement, within a time budget.
 *
 * DESIGN (docs/builder.md, "Self-tuning" has the numbers)
 * Queries: --tune-queries FILE (real query vectors: users are not items),
 * else a seeded sample of the input's rows, held out of the index the tuner
 * measures on. Either way they are split in two halves: the selection
 * queries choose everything; the check queries are searched once more at
 * publish time, through the published version itself, to show that the
 * choice holds on queries it did not see (manifest: check_recall).
 *
 * Candidates are measured, not guessed: each is trained on a seeded sample,
 * filled with the tuning base, and searched through the server's own search
 * code (an in-memory cdx_collection) at a ladder of nprobe. One search at
 * the largest candidate pool per nprobe yields every refine factor and k
 * (a pool of f x k is a prefix of it), and every refine store is scored from
 * the same candidates. A setting reaches the target when its recall over
 * the selection queries, minus 1.645 x sqrt(2) standard errors, is >= the
 * target: a 95% one-sided prediction bound for the recall of as many
 * queries the tuner has not seen (search/points.h).
 *
 * Cost is a model of one query's CPU time, from counts that the search
 * itself reports (codes scanned) and constants measured on this machine
 * (tools/bench/bench_costmodel.c prints them): choices do not depend on
 * what else the machine is doing, so a build stays deterministic. A
 * structure's cost is the mean over the tuned k of its cheapest setting
 * that reaches the target; the cheapest structure wins, and structures
 * within 10% of it are ranked by bytes per item.
 */
#ifndef CANDEX_TUNE_H
#define CANDEX_TUNE_H

#include <stddef.h>
#include <stdint.h>

#include <faiss/c_api/Index_c.h>

#include "builder/build.h"
#include "recall/recall.h"

#define CDX_TUNE_DEFAULT_TARGET   0.95
#define CDX_TUNE_DEFAULT_BUDGET_S 120.0
#define CDX_TUNE_DEFAULT_QUERIES  1000 /* split in two halves */
#define CDX_TUNE_MAX_ROWS         2000000
#define CDX_TUNE_MAX_K            CDX_MANIFEST_MAX_TUNED_K
#define CDX_TUNE_FLAT_BELOW       1000      /* fewer items: exact search, nothing to tune */
#define CDX_TUNE_NO_SELF          INT64_MIN /* a check query that is no input row */
#define CDX_TUNE_MIX_MAX          3         /* ip without --tune-queries: a query mixes 1..3 held-out rows */

/* The cost model: one query's CPU time, single thread, from counts. */
/* Nanoseconds per unit, single thread, measured on the project machine
 * with build/bench_costmodel (tools/bench/bench_costmodel.c) (BENCHMARKS.md, "Cost model": the run
 * these come from). Only ratios steer the choice; the absolute figures give
 * the modelled QPS reported beside the measured one. */
#define CDX_TUNE_NS_QUERY       5000.0 /* per request: copies, set-up, merge */
#define CDX_TUNE_NS_FLOAT_DIST  0.086  /* per float of a flat distance (coarse quantizer, exact search) */
#define CDX_TUNE_NS_LUT         0.25   /* per table entry built per probed list (M x 2^nbits) */
#define CDX_TUNE_NS_CODE8       0.88   /* per code per sub-quantizer, 8-bit PQ */
#define CDX_TUNE_NS_CODE4       1.49   /* per code per sub-quantizer, 4-bit PQ (no fast-scan) */
#define CDX_TUNE_NS_FS_CODE     0.03   /* per code per sub-quantizer, fast-scan (blocks of 32) */
#define CDX_TUNE_NS_FS_LIST     8.5    /* per probed list per sub-quantizer, fast-scan */
#define CDX_TUNE_NS_FS_HEAP     7.0    /* as NS_HEAP, fast-scan's result handlers */
#define CDX_TUNE_NS_HEAP        12.0   /* per heap step (log2 of the pool) per insertion, and the merge */
#define CDX_TUNE_NS_REFINE_ROW  2.0    /* per re-ranked candidate */
#define CDX_TUNE_NS_REFINE_FP32 0.245  /* per dimension of a re-ranked candidate: arithmetic and its bytes */
#define CDX_TUNE_NS_REFINE_FP16 0.217
#define CDX_TUNE_NS_REFINE_SQ8  0.17

struct cdx_tune_opts {
	double target;               /* recall target of every tuned k; 0 = default */
	uint32_t ks[CDX_TUNE_MAX_K]; /* tuned k, ascending; nks 0 = 10, 100, 500 */
	uint32_t nks;
	const char *queries;  /* --tune-queries, NULL: held-out input rows */
	int queries_format;   /* how to read them: CDX_INPUT_AUTO (by extension), _FVECS, _NPY, _RAW_F32 */
	double budget_s;      /* 0 = default */
	uint32_t max_queries; /* 0 = default */
	int refine;           /* -1: chosen; else only this refine kind */
	uint64_t seed;
	int quiet;
};
void cdx_tune_opts_init(struct cdx_tune_opts *o);

/* What the publish step searches through the new version. Rows are rows of
 * the whole input (ids map them to external ids). */
struct cdx_tune_check {
	size_t nq;
	uint32_t dim;
	float *queries; /* nq x dim, as a client would send them */
	int64_t *self;  /* nq external ids to exclude (held-out rows; CDX_TUNE_NO_SELF: none), or NULL */
	struct cdx_truth truth; /* over the whole input, self removed; k = largest tuned k */
	int metric;
};
void cdx_tune_check_free(struct cdx_tune_check *c); /* NULL is a no-op */

/* What the tuner chose. */
struct cdx_tune_result {
	struct cdx_build_params params; /* factory, nlist, M, nbits, flat, note */
	int transform;                  /* enum cdx_transform */
	uint32_t index_dim;
	double max_norm2;
	int refine;
	float *sq8_vmin, *sq8_vdiff; /* refine sq8: dim each; owned */
	FaissIndex *index;           /* trained, empty; owned */
	struct cdx_operating_point *points;
	uint32_t npoints;
	uint32_t ks[CDX_TUNE_MAX_K], nks;
	double target;
	void *report;                 /* json_t*: candidates and their measured rows; owned */
	struct cdx_tune_check *check; /* owned */
};
void cdx_tune_result_fini(struct cdx_tune_result *r);

/* cdx_tune_run tunes a collection of in (rows x dim, metric) and fills r.
 * ids: the input rows' external ids (NULL: row numbers). */
int cdx_tune_run(
    const struct cdx_tune_opts *o, cdx_input *in, int metric, const int64_t *ids, struct cdx_tune_result *r);

/* cdx_tune_check_version searches the check queries through the version
 * in dir (what is about to be published, loaded as the server loads it) at
 * every tuned k with the default settings, judges the hits by their true
 * distance (read back from input, in the format and dimension the plan found),
 * and records the recall in the check_recall of the point used, in m. */
int cdx_tune_check_version(const struct cdx_tune_check *chk, const char *dir, const char *input,
    int input_format, uint32_t dim, const int64_t *ids, uint64_t rows, struct cdx_manifest *m);

/* cdx_tune_check_save writes the check (queries, their truth, the held-out
 * ids) into a distributed build's work directory; cdx_tune_check_load
 * reads it back for the publish step (*cp NULL when the build was not
 * tuned). */
int cdx_tune_check_save(const struct cdx_tune_check *c, const char *workdir);
int cdx_tune_check_load(struct cdx_tune_check **cp, const char *workdir, int metric, uint32_t dim);

#endif
