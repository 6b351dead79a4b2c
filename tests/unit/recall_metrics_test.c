/*
 * recall_metrics_test.c — the recall figures against independent facts:
 * exact search scores 1.0, random ids score about k/N, a hand-made tie case
 * counts by distance; ground truth against a plain brute-force loop for every
 * metric; the truth cache; file readers; operating-point selection; reports.
 */
#define _GNU_SOURCE
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/index_factory_c.h>

#include "recall/recall.h"
#include "shard/shard.h"
#include "testutil.h"

/* A base + queries in the space of one metric, truth computed. */
struct fixture {
	float *base, *q;
	size_t nb, nq;
	uint32_t dim;
	struct cdx_recall_space s;
	struct cdx_truth t;
};

static void
fixture_make(struct fixture *f, int metric, size_t nb, size_t nq, uint32_t dim, uint32_t k, uint64_t seed)
{
	memset(f, 0, sizeof(*f));
	f->nb = nb;
	f->nq = nq;
	f->dim = dim;
	f->base = malloc(nb * dim * sizeof(float));
	f->q = malloc(nq * dim * sizeof(float));
	tu_clustered(f->base, nb, dim, 20, seed);
	/* queries: perturbed base rows, so that neighbours are close */
	cdx_rng rng;
	cdx_rng_seed(&rng, seed + 1);
	for (size_t i = 0; i < nq; i++) {
		size_t r = cdx_rng_next(&rng) % nb;
		for (uint32_t j = 0; j < dim; j++)
			f->q[i * dim + j] = f->base[r * dim + j] + 0.5f * (float) cdx_rng_normal(&rng);
	}
	if (metric == CDX_METRIC_COS) {
		cdx_normalize_rows(f->base, nb, dim);
		cdx_normalize_rows(f->q, nq, dim);
	}
	f->s = (struct cdx_recall_space) { .metric = metric, .dim = dim, .nb = nb, .base = f->base };
	assert_int_equal(cdx_truth_compute(&f->t, &f->s, f->q, nq, k, NULL, NULL), 0);
}

static void
fixture_free(struct fixture *f)
{
	cdx_truth_fini(&f->t);
	free(f->base);
	free(f->q);
}

/* Truth agrees with a plain brute-force loop (tu_exact_knn, written
 * independently): same distance at every rank (rows may differ on ties). */
static void
check_truth_vs_bruteforce(int metric, size_t nb, size_t nq, uint32_t dim)
{
	struct fixture f;
	fixture_make(&f, metric, nb, nq, dim, 20, 7 + (uint64_t) metric);
	int64_t want[20];
	for (size_t i = 0; i < f.nq; i++) {
		tu_exact_knn(f.base, f.nb, f.dim, f.q + i * f.dim, 20, metric != CDX_METRIC_L2, want);
		for (int j = 0; j < 20; j++) {
			/* dist is stored as float: compare with a relative tolerance */
			double dt = f.t.dist[i * 20 + j], tol = 1e-6 * (1 + fabs(dt));
			double dw = cdx_recall_distance(&f.s, f.q + i * f.dim, want[j]);
			assert_true(fabs(dw - dt) < 100 * tol);
			assert_true(
			    fabs(cdx_recall_distance(&f.s, f.q + i * f.dim, f.t.rows[i * 20 + j]) - dt)
			    < tol);
		}
		/* best first, non-decreasing distances */
		for (int j = 1; j < 20; j++)
			assert_true(f.t.dist[i * 20 + j] >= f.t.dist[i * 20 + j - 1]);
	}
	fixture_free(&f);
}

static void
test_truth_l2(void **state)
{
	(void) state;
	check_truth_vs_bruteforce(CDX_METRIC_L2, 3000, 50, 24);
}

static void
test_truth_ip(void **state)
{
	(void) state;
	check_truth_vs_bruteforce(CDX_METRIC_IP, 3000, 50, 24);
}

static void
test_truth_cos(void **state)
{
	(void) state;
	check_truth_vs_bruteforce(CDX_METRIC_COS, 3000, 50, 24);
}

/* More queries than one Faiss call takes (1024): every batch, including a
 * short last one, agrees with the brute-force loop. */
static void
test_truth_batches(void **state)
{
	(void) state;
	check_truth_vs_bruteforce(CDX_METRIC_L2, 600, 2100, 8);
	check_truth_vs_bruteforce(CDX_METRIC_COS, 600, 1100, 8);
}

/* An exact index (a separate Faiss "Flat" from index_factory) scores 1.0. */
static void
check_flat_is_perfect(int metric)
{
	struct fixture f;
	fixture_make(&f, metric, 4000, 200, 32, 100, 11 + (uint64_t) metric);
	FaissIndex *idx = NULL;
	assert_int_equal(
	    faiss_index_factory(&idx, 32, "Flat", metric == CDX_METRIC_L2 ? METRIC_L2 : METRIC_INNER_PRODUCT),
	    0);
	assert_int_equal(faiss_Index_add(idx, (idx_t) f.nb, f.base), 0);
	float *d = malloc(f.nq * 100 * sizeof(float));
	idx_t *lab = malloc(f.nq * 100 * sizeof(idx_t));
	int64_t *hits = malloc(f.nq * 100 * sizeof(int64_t));
	/* one query at a time: the float rounding differs from the truth's batched
	 * BLAS path, which the tie rule must absorb */
	for (size_t i = 0; i < f.nq; i++)
		assert_int_equal(
		    faiss_Index_search(idx, 1, f.q + i * 32, 100, d + i * 100, lab + i * 100), 0);
	for (size_t i = 0; i < f.nq * 100; i++)
		hits[i] = lab[i];
	double eps = CDX_RECALL_EPSILON_DEFAULT;
	assert_true(cdx_recall_mean(&f.t, &f.s, f.q, hits, f.nq, 100, 100, 100, eps) == 1.0);
	assert_true(cdx_recall_mean(&f.t, &f.s, f.q, hits, f.nq, 100, 10, 10, eps) == 1.0);
	assert_true(cdx_recall_mean(&f.t, &f.s, f.q, hits, f.nq, 100, 10, 1, eps) == 1.0);
	double se = 1;
	assert_true(cdx_recall_mean_se(&f.t, &f.s, f.q, hits, f.nq, 100, 10, 10, eps, &se) == 1.0);
	assert_true(se == 0); /* every query agrees */
	/* ranks 10..19 are not the top 10 (a tight epsilon: cosine distances
	 * of clustered points are within 1e-3 of each other) */
	int64_t *rev = malloc(f.nq * 10 * sizeof(int64_t));
	for (size_t i = 0; i < f.nq; i++)
		for (int j = 0; j < 10; j++)
			rev[i * 10 + j] = lab[i * 100 + 19 - j]; /* ranks 10..19 */
	double r = cdx_recall_mean(&f.t, &f.s, f.q, rev, f.nq, 10, 10, 10, 1e-7);
	assert_true(r < 0.05);
	faiss_Index_free(idx);
	free(d);
	free(lab);
	free(hits);
	free(rev);
	fixture_free(&f);
}

static void
test_flat_l2(void **state)
{
	(void) state;
	check_flat_is_perfect(CDX_METRIC_L2);
}

static void
test_flat_ip(void **state)
{
	(void) state;
	check_flat_is_perfect(CDX_METRIC_IP);
}

static void
test_flat_cos(void **state)
{
	(void) state;
	check_flat_is_perfect(CDX_METRIC_COS);
}

/* Random ids: each returned row is in the true top-k with probability k/N. */
static void
test_random_ids(void **state)
{
	(void) state;
	struct fixture f;
	fixture_make(&f, CDX_METRIC_L2, 1000, 2000, 8, 100, 5);
	int64_t *hits = malloc(f.nq * 100 * sizeof(int64_t));
	cdx_rng rng;
	cdx_rng_seed(&rng, 99);
	for (size_t i = 0; i < f.nq; i++) {
		/* distinct random rows per query (a partial Fisher-Yates) */
		int64_t perm[1000];
		for (int j = 0; j < 1000; j++)
			perm[j] = j;
		for (int j = 0; j < 100; j++) {
			int s = j + (int) (cdx_rng_next(&rng) % (uint64_t) (1000 - j));
			int64_t tmp = perm[j];
			perm[j] = perm[s];
			perm[s] = tmp;
			hits[i * 100 + j] = perm[j];
		}
	}
	double eps = CDX_RECALL_EPSILON_DEFAULT;
	double r10 = cdx_recall_mean(&f.t, &f.s, f.q, hits, f.nq, 100, 10, 10, eps);
	double r100 = cdx_recall_mean(&f.t, &f.s, f.q, hits, f.nq, 100, 100, 100, eps);
	double r1 = cdx_recall_mean(&f.t, &f.s, f.q, hits, f.nq, 100, 10, 1, eps);
	/* expected 0.01 (sd ~0.0007), 0.1 (sd ~0.0007), 0.01 (sd ~0.0022) */
	assert_true(fabs(r10 - 0.01) < 0.003);
	assert_true(fabs(r100 - 0.1) < 0.005);
	assert_true(fabs(r1 - 0.01) < 0.008);
	/* its standard error: per query Binomial(10, 0.01) / 10 has sd 0.0315,
	 * over 2000 queries 0.0007, the figure the asserts above rely on */
	double se;
	double r10b = cdx_recall_mean_se(&f.t, &f.s, f.q, hits, f.nq, 100, 10, 10, eps, &se);
	assert_true(r10b == r10);
	assert_true(se > 0.0005 && se < 0.001);
	free(hits);
	fixture_free(&f);
}

/* Hand-made ties in 2-d around q = (0,0): rows 0, 1, 2 are all at distance
 * 1, row 3 at 2, row 4 at 1 + 0.0005, row 5 at 3. */
static void
test_ties(void **state)
{
	(void) state;
	float base[] = { 1, 0, 0, 1, 0, -1, 2, 0, 1.0005f, 0, 3, 0 };
	float q[] = { 0, 0 };
	struct cdx_recall_space s = { .metric = CDX_METRIC_L2, .dim = 2, .nb = 6, .base = base };
	struct cdx_truth t;
	assert_int_equal(cdx_truth_compute(&t, &s, q, 1, 4, NULL, NULL), 0);
	/* ties ordered by row */
	assert_int_equal(t.rows[0], 0);
	assert_int_equal(t.rows[1], 1);
	assert_int_equal(t.rows[2], 2);
	assert_int_equal(t.rows[3], 4);
	assert_true(fabs(t.dist[1] - 1.0) < 1e-6);

	double eps = 1e-3;
	int64_t h02[] = { 0, 2 };
	int64_t h21[] = { 2, 1 };
	int64_t h03[] = { 0, 3 };
	int64_t h00[] = { 0, 0 };
	int64_t h04[] = { 0, 4 };
	int64_t hm[] = { -1, 1 };
	/* 2-recall@2: truth {0, 1}; row 2 ties with row 1 and counts */
	assert_true(cdx_recall_query(&t, &s, q, 0, h02, 2, 2, eps) == 1.0);
	assert_true(cdx_recall_query(&t, &s, q, 0, h21, 2, 2, eps) == 1.0);
	assert_true(cdx_recall_query(&t, &s, q, 0, h03, 2, 2, eps) == 0.5);
	/* a repeated hit counts once */
	assert_true(cdx_recall_query(&t, &s, q, 0, h00, 2, 2, eps) == 0.5);
	assert_true(cdx_recall_query(&t, &s, q, 0, hm, 2, 2, eps) == 0.5);
	/* row 4 is 0.0005 further than the 2nd: inside eps 1e-3, outside 1e-4 */
	assert_true(cdx_recall_query(&t, &s, q, 0, h04, 2, 2, 1e-3) == 1.0);
	assert_true(cdx_recall_query(&t, &s, q, 0, h04, 2, 2, 1e-4) == 0.5);
	/* 1-recall@2: any hit at the nearest distance */
	int64_t h32[] = { 3, 2 };
	assert_true(cdx_recall_query(&t, &s, q, 0, h32, 2, 1, eps) == 1.0);
	assert_true(cdx_recall_query(&t, &s, q, 0, h03 + 1, 1, 1, eps) == 0.0);
	/* without base vectors (ids only) ties do not count */
	struct cdx_recall_space ids_only = { .metric = CDX_METRIC_L2, .dim = 2, .nb = 6, .base = NULL };
	assert_true(cdx_recall_query(&t, &ids_only, q, 0, h02, 2, 2, eps) == 0.5);
	assert_true(cdx_recall_query(&t, &ids_only, q, 0, h21, 2, 2, eps) == 0.5);
	cdx_truth_fini(&t);

	/* the same with inner product: rows 0 and 1 have equal <x,q> */
	float bip[] = { 1, 1, 1, 1, 0.5f, 0.5f, 2, 0 };
	float qip[] = { 1, 0 };
	struct cdx_recall_space sip = { .metric = CDX_METRIC_IP, .dim = 2, .nb = 4, .base = bip };
	assert_int_equal(cdx_truth_compute(&t, &sip, qip, 1, 2, NULL, NULL), 0);
	assert_int_equal(t.rows[0], 3);
	assert_int_equal(t.rows[1], 0);
	int64_t hip[] = { 3, 1 };
	int64_t hip2[] = { 3, 2 };
	assert_true(cdx_recall_query(&t, &sip, qip, 0, hip, 2, 2, eps) == 1.0);
	assert_true(cdx_recall_query(&t, &sip, qip, 0, hip2, 2, 2, eps) == 0.5);
	cdx_truth_fini(&t);
}

static void
test_percentile(void **state)
{
	(void) state;
	double v[100];
	for (int i = 0; i < 100; i++)
		v[i] = 100 - i; /* 100 .. 1, unsorted */
	assert_true(cdx_percentile(v, 100, 50) == 50);
	assert_true(cdx_percentile(v, 100, 99) == 99);
	assert_true(cdx_percentile(v, 100, 100) == 100);
	assert_true(cdx_percentile(v, 100, 0) == 1);
	double one = 3.5;
	assert_true(cdx_percentile(&one, 1, 99) == 3.5);
	assert_true(isnan(cdx_percentile(v, 0, 50)));
}

static void
test_truth_cache(void **state)
{
	(void) state;
	char *dir = tu_tmpdir("recall-cache");
	struct fixture f;
	fixture_make(&f, CDX_METRIC_IP, 500, 20, 8, 10, 3);
	uint64_t key = cdx_truth_key(&f.s, f.q, f.nq, 10, NULL, 0);
	assert_true(key != cdx_truth_key(&f.s, f.q, f.nq, 11, NULL, 0));
	struct cdx_recall_space other = f.s;
	other.metric = CDX_METRIC_L2;
	assert_true(key != cdx_truth_key(&other, f.q, f.nq, 10, NULL, 0));
	f.q[3] += 1;
	assert_true(key != cdx_truth_key(&f.s, f.q, f.nq, 10, NULL, 0));
	f.q[3] -= 1;
	char path[4096];
	cdx_truth_cache_path(path, sizeof(path), dir, key);
	struct cdx_truth t;
	assert_int_equal(cdx_truth_load(&t, path), CDX_ENOTFOUND);
	assert_int_equal(cdx_truth_save(&f.t, path), 0);
	assert_int_equal(cdx_truth_load(&t, path), 0);
	assert_int_equal(t.nq, f.t.nq);
	assert_int_equal(t.k, f.t.k);
	assert_int_equal(t.metric, CDX_METRIC_IP);
	assert_memory_equal(t.rows, f.t.rows, 20 * 10 * sizeof(int64_t));
	assert_memory_equal(t.dist, f.t.dist, 20 * 10 * sizeof(float));
	cdx_truth_fini(&t);
	/* flip one byte: the checksum catches it */
	FILE *fp = fopen(path, "r+b");
	fseek(fp, 100, SEEK_SET);
	int c = fgetc(fp);
	fseek(fp, 100, SEEK_SET);
	fputc(c ^ 1, fp);
	fclose(fp);
	assert_int_equal(cdx_truth_load(&t, path), CDX_ECORRUPT);
	fixture_free(&f);
	tu_rmdir(dir);
}

static void
test_truth_from_rows(void **state)
{
	(void) state;
	struct fixture f;
	fixture_make(&f, CDX_METRIC_L2, 800, 30, 8, 20, 4);
	int32_t *gt = malloc(30 * 20 * sizeof(int32_t));
	for (size_t i = 0; i < 30 * 20; i++)
		gt[i] = (int32_t) f.t.rows[i];
	struct cdx_truth t;
	assert_int_equal(cdx_truth_from_rows(&t, &f.s, f.q, 30, gt, 20, 10), 0);
	assert_int_equal(t.k, 10);
	for (size_t i = 0; i < 30; i++)
		for (int j = 0; j < 10; j++)
			assert_true(t.dist[i * 10 + j] == f.t.dist[i * 20 + j]);
	cdx_truth_fini(&t);
	/* rows shorter than k */
	assert_int_equal(cdx_truth_from_rows(&t, &f.s, f.q, 30, gt, 20, 50), CDX_EINVAL);
	assert_non_null(strstr(cdx_last_error(), "fewer than k"));
	/* a row outside the base */
	gt[5] = 800;
	assert_int_equal(cdx_truth_from_rows(&t, &f.s, f.q, 30, gt, 20, 10), CDX_ECORRUPT);
	free(gt);
	fixture_free(&f);
}

/* The id -> base row map (the files themselves are src/input's: input_test). */
static void
test_idmap(void **state)
{
	(void) state;
	const int64_t ids[3] = { 100, 7, -5 };
	struct cdx_idmap m;
	assert_int_equal(cdx_idmap_init_ids(&m, ids, 3), 0);
	assert_int_equal(cdx_idmap_row(&m, 100), 0);
	assert_int_equal(cdx_idmap_row(&m, 7), 1);
	assert_int_equal(cdx_idmap_row(&m, -5), 2);
	assert_int_equal(cdx_idmap_row(&m, 8), -1);
	cdx_idmap_fini(&m);
	const int64_t dup[3] = { 1, 2, 1 };
	assert_int_equal(cdx_idmap_init_ids(&m, dup, 3), CDX_EDUP);
	assert_non_null(strstr(cdx_last_error(), "id 1 appears at rows 0 and 2"));
	cdx_idmap_identity(&m, 10);
	assert_int_equal(cdx_idmap_row(&m, 9), 9);
	assert_int_equal(cdx_idmap_row(&m, 10), -1);
}

static void
test_nprobes_and_pick(void **state)
{
	(void) state;
	uint32_t p[32];
	size_t n = cdx_recall_default_nprobes(100, p, 32);
	uint32_t want[] = { 1, 2, 4, 8, 16, 32, 64, 100 };
	assert_int_equal(n, 8);
	assert_memory_equal(p, want, sizeof(want));
	n = cdx_recall_default_nprobes(4096, p, 32);
	assert_int_equal(n, 11);
	assert_int_equal(p[10], 1024);
	n = cdx_recall_default_nprobes(0, p, 32);
	assert_int_equal(n, 1);

	struct cdx_recall_row rows[4] = {
		{ .nprobe = 1, .recall = 0.5, .qps = 1000, .p99_ms = 1 },
		{ .nprobe = 4, .recall = 0.9, .qps = 500, .p99_ms = 2 },
		{ .nprobe = 4, .refine_factor = 2, .recall = 0.96, .qps = 400, .p99_ms = 3 },
		{ .nprobe = 16, .recall = 0.95, .qps = 200, .p99_ms = 5 },
	};
	assert_int_equal(cdx_recall_pick(rows, 4, 0.9), 1);
	assert_int_equal(cdx_recall_pick(rows, 4, 0.95), 2);
	assert_int_equal(cdx_recall_pick(rows, 4, 0.97), -1);
	/* a mean just over the target is not enough when the queries disagree:
	 * 0.96 - 1.645 x 0.01 < 0.95, so the next point that holds is taken */
	rows[2].recall_se = 0.01;
	rows[3].recall_se = 0; /* 0.95 exactly, every query agreeing */
	assert_int_equal(cdx_recall_pick(rows, 4, 0.95), 3);
	assert_int_equal(cdx_recall_pick(rows, 4, 0.94), 2); /* 0.96 - 0.01645 >= 0.94 */
	rows[2].recall_se = rows[3].recall_se = 0;
	size_t at;
	assert_true(cdx_recall_worst_drop(rows, 4, &at) == 0);
	rows[3].recall = 0.8;
	assert_true(fabs(cdx_recall_worst_drop(rows, 4, &at) - 0.1) < 1e-12);
	assert_int_equal(at, 3);
}

static void
test_reports(void **state)
{
	(void) state;
	char *dir = tu_tmpdir("recall-report");
	struct cdx_recall_row rows[4];
	for (int i = 0; i < 4; i++) {
		rows[i] = (struct cdx_recall_row) { .nprobe = 1u << i,
			.refine_factor = i < 2 ? 0.5f : 2,
			.k = 10,
			.recall = 0.5 + 0.1 * i,
			.recall_1 = 0.9,
			.recall_10 = 0.5 + 0.1 * i,
			.recall_100 = NAN,
			.p50_ms = 0.1,
			.p95_ms = 0.2,
			.p99_ms = 0.3,
			.mean_ms = 0.12,
			.qps = 1000.0 / (i + 1),
			.bytes_per_vector = 40,
			.nq = 100 };
	}
	char *csv = tu_path(dir, "r.csv"), *js = tu_path(dir, "r.json"), *png = tu_path(dir, "r.png");
	assert_int_equal(cdx_recall_write_csv(csv, rows, 4), 0);
	char *text;
	size_t len;
	assert_int_equal(cdx_read_file(csv, &text, &len), 0);
	assert_non_null(strstr(text, "nprobe,refine_factor,k,recall_at_k"));
	assert_non_null(strstr(text, "\n4,2,10,0.700000,0.900000,0.700000,,"));
	free(text);

	struct cdx_recall_meta meta = { .collection = "c",
		.metric = CDX_METRIC_COS,
		.dim = 8,
		.nb = 10,
		.nq = 100,
		.k = 10,
		.eps = 1e-3,
		.truth_source = "computed" };
	struct cdx_recall_point pts[2] = { { 0.6, 2 }, { 0.99, -1 } };
	assert_int_equal(cdx_recall_write_json(js, &meta, rows, 4, pts, 2), 0);
	json_error_t jerr;
	json_t *root = json_load_file(js, 0, &jerr);
	assert_non_null(root);
	assert_string_equal(json_string_value(json_object_get(root, "metric")), "cos");
	json_t *res = json_object_get(root, "results");
	assert_int_equal(json_array_size(res), 4);
	assert_true(json_is_null(json_object_get(json_array_get(res, 0), "recall_100_at_100")));
	json_t *p0 = json_array_get(json_object_get(root, "operating_points"), 0);
	assert_int_equal(json_integer_value(json_object_get(p0, "nprobe")), 4);
	assert_true(json_is_false(
	    json_object_get(json_array_get(json_object_get(root, "operating_points"), 1), "reached")));
	json_decref(root);

	assert_int_equal(cdx_recall_plot(png, "it's a test", rows, 4, 2000), 0);
	assert_int_equal(cdx_read_file(png, &text, &len), 0);
	assert_true(len > 1000);
	assert_memory_equal(text, "\x89PNG", 4);
	free(text);
	char *gp = tu_path(dir, "r.gp");
	assert_int_equal(cdx_read_file(gp, &text, &len), 0);
	assert_non_null(strstr(text, "set logscale y"));
	assert_non_null(strstr(text, "refine x2"));
	assert_non_null(strstr(text, "exact search (Faiss flat): 2000 QPS"));
	free(text);
	free(gp);
	free(csv);
	free(js);
	free(png);
	tu_rmdir(dir);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_truth_l2),
		cmocka_unit_test(test_truth_ip),
		cmocka_unit_test(test_truth_cos),
		cmocka_unit_test(test_truth_batches),
		cmocka_unit_test(test_flat_l2),
		cmocka_unit_test(test_flat_ip),
		cmocka_unit_test(test_flat_cos),
		cmocka_unit_test(test_random_ids),
		cmocka_unit_test(test_ties),
		cmocka_unit_test(test_percentile),
		cmocka_unit_test(test_truth_cache),
		cmocka_unit_test(test_truth_from_rows),
		cmocka_unit_test(test_idmap),
		cmocka_unit_test(test_nprobes_and_pick),
		cmocka_unit_test(test_reports),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
