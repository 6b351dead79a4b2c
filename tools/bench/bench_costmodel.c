/*
 * bench_costmodel.c — measures, on this machine, the constants of the
 * self-tuning build's cost model (src/builder/tune.c, "the cost model") by
 * timing the server's own search code (cdx_collection_search, one thread,
 * one query per call, in thread CPU time) on in-memory collections built to isolate each term,
 * and prints them beside the constants compiled into candex, as ratios.
 *
 *   build/bench_costmodel [--dim 64] [--seconds 0.3]
 *
 * Only ratios between the constants steer the tuner; BENCHMARKS.md ("Cost
 * model") records a run.
 */
#define _GNU_SOURCE
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <faiss/c_api/index_factory_c.h>

#include "builder/tune.h"
#include "faissx/faissx.h"
#include "search/search.h"
#include "shard/refine.h"

static uint32_t dim = 64;

/* thread_us: this thread's CPU time. The constants are CPU time on one
 * thread, and CPU time holds when other jobs share the cores (wall-clock
 * time does not). */
static uint64_t
thread_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t) ts.tv_sec * 1000000u + (uint64_t) ts.tv_nsec / 1000u;
}
static double min_seconds = 0.3;

static void
gen(float *x, size_t n, uint64_t seed)
{
	cdx_rng r;
	cdx_rng_seed(&r, seed);
	for (size_t i = 0; i < n * dim; i++)
		x[i] = (float) cdx_rng_normal(&r);
}

/* make builds an in-memory collection of n random items with factory
 * (trained on them), and an fp32 refine store when refine is set. */
static cdx_collection *
make(const char *factory, size_t n, const float *x)
{
	FaissIndex *idx = NULL;
	if (faiss_index_factory(&idx, (int) dim, factory, METRIC_L2) != 0)
		return NULL;
	cdx_fx_train_params(idx, 10, 64);
	if (faiss_Index_train(idx, (idx_t) n, x) != 0 || faiss_Index_add(idx, (idx_t) n, x) != 0)
		return NULL;
	struct cdx_manifest *m = calloc(1, sizeof(*m));
	snprintf(m->collection, sizeof(m->collection), "bench");
	m->metric = CDX_METRIC_L2;
	m->dim = m->index_dim = dim;
	m->items = n;
	m->nshards = 1;
	m->default_nprobe = 1;
	cdx_collection *c = NULL;
	if (cdx_collection_from_index(&c, m, idx) != CDX_OK)
		return NULL;
	return c;
}

/* ns_per_query times single-query searches until min_seconds; the fastest
 * of three passes counts (this VM's neighbours only ever add time). */
static double
ns_per_query(const cdx_collection *c, const float *q, size_t nq, uint32_t k, uint32_t nprobe, double *codes)
{
	struct cdx_hit *hits = malloc(k * sizeof(*hits));
	double best = INFINITY;
	uint64_t total_codes = 0, calls = 0;
	for (int pass = 0; pass < 3; pass++) {
		uint64_t t0 = thread_us(), n = 0;
		do {
			for (size_t i = 0; i < nq; i++, n++) {
				struct cdx_search_used used;
				struct cdx_search_params p
				    = { .k = k, .nprobe = nprobe, .refine_factor = 0.5f, .used = &used };
				cdx_collection_search(c, &p, q + i * dim, 1, hits);
				total_codes += used.codes;
				calls++;
			}
		} while ((double) (thread_us() - t0) / 1e6 < min_seconds / 3);
		double ns = (double) (thread_us() - t0) * 1000.0 / (double) n;
		if (ns < best)
			best = ns;
	}
	free(hits);
	if (codes != NULL)
		*codes = (double) total_codes / (double) calls;
	return best;
}

static void
row(const char *what, double measured, double compiled)
{
	printf("%-44s %12.3f %12.3f %8.2fx\n", what, measured, compiled, measured / compiled);
}

int
main(int argc, char **argv)
{
	cdx_process_init(argc, argv);
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--dim") == 0 && i + 1 < argc)
			dim = (uint32_t) atoi(argv[++i]);
		else if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
			min_seconds = atof(argv[++i]);
		else {
			fprintf(stderr, "usage: bench_costmodel [--dim D] [--seconds S]\n");
			return 2;
		}
	}
	omp_set_num_threads(1);
	cdx_blas_set_threads(1);
	enum { NQ = 200, BIG = 100000 };
	float *x = malloc((size_t) BIG * dim * sizeof(float)), *q = malloc((size_t) NQ * dim * sizeof(float));
	gen(x, BIG, 1);
	gen(q, NQ, 2);
	printf(
	    "cost model constants, one thread, dim %u (ns; the ratio column is measured / compiled)\n", dim);
	printf("%-44s %12s %12s %9s\n", "term", "measured", "compiled", "ratio");

	/* per request, and per float of a flat scan: two flat sizes */
	cdx_collection *f1 = make("Flat", 1000, x), *f2 = make("Flat", 20000, x);
	double t1 = ns_per_query(f1, q, NQ, 10, 0, NULL), t2 = ns_per_query(f2, q, NQ, 10, 0, NULL);
	double per_float = (t2 - t1) / ((20000.0 - 1000.0) * dim);
	double per_query = t1 - per_float * 1000.0 * dim;
	row("NS_QUERY (per request)", per_query, CDX_TUNE_NS_QUERY);
	row("NS_FLOAT_DIST (per float of a flat scan)", per_float, CDX_TUNE_NS_FLOAT_DIST);
	cdx_collection_unref(f1);
	cdx_collection_unref(f2);

	/* per code per sub-quantizer: 64 lists probed 1 vs 16 (codes grow 16x) */
	const char *pqs[][2] = { { "IVF64,PQ16x8np", "NS_CODE8 (per code x M, 8-bit)" },
		{ "IVF64,PQ16x4np", "NS_CODE4 (per code x M, 4-bit)" } };
	const double compiled_code[] = { CDX_TUNE_NS_CODE8, CDX_TUNE_NS_CODE4 };
	for (int i = 0; i < 2; i++) {
		cdx_collection *c = make(pqs[i][0], BIG, x);
		double c1, c16;
		double a = ns_per_query(c, q, NQ, 10, 1, &c1), b = ns_per_query(c, q, NQ, 10, 16, &c16);
		row(pqs[i][1], (b - a) / ((c16 - c1) * 16.0), compiled_code[i]);
		cdx_collection_unref(c);
	}
	/* per table entry per probed list: many short lists (8 items each) */
	cdx_collection *l
	    = make("IVF4096,PQ16x8np", 4096 * 8, x); /* Faiss warns: 8 points a list is the point */
	double cl1, cl2;
	double la = ns_per_query(l, q, NQ, 10, 64, &cl1), lb = ns_per_query(l, q, NQ, 10, 512, &cl2);
	double per_list = (lb - la - CDX_TUNE_NS_CODE8 * 16 * (cl2 - cl1)) / (512.0 - 64.0);
	row("NS_LUT (per M x 2^nbits entry per list)", per_list / (16.0 * 256.0), CDX_TUNE_NS_LUT);
	/* heap: a pool of 1000 against 10 over the same codes */
	double cp;
	double h10 = ns_per_query(l, q, NQ, 10, 512, &cp), h1000 = ns_per_query(l, q, NQ, 1000, 512, NULL);
	double ins = 1000.0 * (1 + log(cp / 1000.0));
	row("NS_HEAP (per log2(pool) per insertion)", (h1000 - h10) / (ins * log2(1001.0)), CDX_TUNE_NS_HEAP);
	cdx_collection_unref(l);

	/* fast-scan (2-dimensional sub-vectors, M = dim / 2): per code per
	 * sub-quantizer from 64 long lists probed 1 vs 16; per probed list per
	 * sub-quantizer from many short lists (one block of 32 each); the
	 * result handlers from a pool of 1000 against 10 */
	uint32_t fm = dim / 2;
	char fac[64];
	snprintf(fac, sizeof(fac), "IVF64,PQ%ux4fs", fm);
	cdx_collection *fs = make(fac, BIG, x);
	double fc1, fc16;
	double fa = ns_per_query(fs, q, NQ, 10, 1, &fc1), fb = ns_per_query(fs, q, NQ, 10, 16, &fc16);
	double fs_code = (fb - fa) / ((fc16 - fc1 + 16.0 * 15) * fm);
	row("NS_FS_CODE (per code x M, fast-scan)", fs_code, CDX_TUNE_NS_FS_CODE);
	cdx_collection_unref(fs);
	snprintf(fac, sizeof(fac), "IVF4096,PQ%ux4fs", fm);
	cdx_collection *fl = make(fac, 4096 * 8, x);
	double fl1, fl2;
	double fla = ns_per_query(fl, q, NQ, 10, 64, &fl1), flb = ns_per_query(fl, q, NQ, 10, 512, &fl2);
	double fs_list = (flb - fla - fs_code * fm * (fl2 - fl1 + 16.0 * (512 - 64))) / ((512.0 - 64.0) * fm);
	row("NS_FS_LIST (per list x M, fast-scan)", fs_list, CDX_TUNE_NS_FS_LIST);
	double fcp;
	double fh10 = ns_per_query(fl, q, NQ, 10, 512, &fcp),
	       fh1000 = ns_per_query(fl, q, NQ, 1000, 512, NULL);
	double fins = 1000.0 * (1 + log(fcp / 1000.0));
	row("NS_FS_HEAP (per log2(pool) per insertion)", (fh1000 - fh10) / (fins * log2(1001.0)),
	    CDX_TUNE_NS_FS_HEAP);
	cdx_collection_unref(fl);

	/* re-ranking: 1000 random candidates a query, each store kind */
	const char *kinds[] = { NULL, "fp32", "fp16", "sq8" };
	const double compiled_dim[]
	    = { 0, CDX_TUNE_NS_REFINE_FP32, CDX_TUNE_NS_REFINE_FP16, CDX_TUNE_NS_REFINE_SQ8 };
	float *vmin = malloc(dim * sizeof(float)), *vdiff = malloc(dim * sizeof(float));
	uint64_t *rows = malloc(1000 * sizeof(uint64_t));
	cdx_sq8_train(x, BIG, dim, vmin, vdiff);
	cdx_rng r;
	cdx_rng_seed(&r, 3);
	for (int i = 0; i < 1000; i++)
		rows[i] = cdx_rng_next(&r) % BIG;
	for (int kind = CDX_REFINE_FP32; kind <= CDX_REFINE_SQ8; kind++) {
		struct cdx_refine_store st
		    = { .kind = kind, .dim = dim, .rows = BIG, .vmin = vmin, .vdiff = vdiff };
		st.bytes_per_vector = cdx_refine_bytes_per_vector(kind, dim);
		uint8_t *data = malloc((size_t) BIG * st.bytes_per_vector);
		cdx_refine_encode(&st, x, BIG, data);
		st.data = data;
		double best = INFINITY;
		volatile float sink = 0;
		for (int pass = 0; pass < 3; pass++) {
			uint64_t t0 = thread_us(), n = 0;
			do {
				for (int qi = 0; qi < NQ; qi++, n++)
					for (int j = 0; j < 1000; j++)
						sink += cdx_refine_distance(&st, rows[(j + qi * 7) % 1000],
						    q + (size_t) qi * dim, CDX_METRIC_L2);
			} while ((double) (thread_us() - t0) / 1e6 < min_seconds / 3);
			double ns = (double) (thread_us() - t0) * 1000.0 / ((double) n * 1000.0);
			if (ns < best)
				best = ns;
		}
		char what[64];
		snprintf(what, sizeof(what), "re-rank one %s candidate (dim %u)", kinds[kind], dim);
		row(what, best, CDX_TUNE_NS_REFINE_ROW + compiled_dim[kind] * dim);
		free(data);
	}
	free(vmin);
	free(vdiff);
	free(rows);
	free(x);
	free(q);
	return 0;
}
