/*
 * recall_real_test.c — `candex recall` on the real sets in ../shared/data
 * (sift-wallpapers l2, glove100 cos, lastfm-als64 l2/cos/ip), against the
 * sets' own .ivecs ground truth, re-checked by a second computation written
 * here from scratch (plain loops over the base vectors in double precision):
 * 10-recall@10, 1-recall@10 and 100-recall@100, with and without re-ranking.
 *
 * For every metric path: recall rises with nprobe, and probing every list
 * with a large refine factor reaches what exact search allows. Skipped when
 * the data is not present.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "recall/recall.h"
#include "search/search.h"

static char *dir;

struct set {
	const char *name; /* folder in ../shared/data */
	const char *metric;
	const char *gt;     /* ground-truth file in the folder */
	const char *build;  /* extra build options */
	const char *nprobe; /* sweep */
	const char *refine;
	uint32_t full_nprobe; /* every list */
	float big_refine;
	double min_best; /* recall that nprobe = nlist with big_refine must reach */
};

static const struct set sets[] = {
	{ "lastfm-als64", "l2", "groundtruth_l2.ivecs", "--refine fp32", "1,4,16,64,128", "0,8,64", 128, 64,
	    0.99 },
	{ "lastfm-als64", "cos", "groundtruth_cos.ivecs", "--refine fp32", "1,4,16,64,128", "0,8,64", 128, 64,
	    0.99 },
	{ "lastfm-als64", "ip", "groundtruth_ip.ivecs", "--refine fp32", "1,4,16,64,128", "0,8,64", 128, 64,
	    0.99 },
	{ "sift-wallpapers", "l2", "groundtruth_l2.ivecs", "--refine fp16", "1,4,16,64,256,1024", "0,4,32",
	    1024, 32, 0.99 },
	{ "glove100", "cos", "groundtruth_cos.ivecs", "--refine fp16", "1,4,16,64,256,2048", "0,4,32", 2048,
	    32, 0.99 },
};

static int
have_data(void)
{
	char p[4096];
	snprintf(p, sizeof(p), "%s/sift-wallpapers/base.fvecs", CANDEX_SHARED_DATA);
	return access(p, R_OK) == 0;
}

static int
setup(void **state)
{
	(void) state;
	dir = tu_tmpdir("recall-real");
	return 0;
}

static int
teardown(void **state)
{
	(void) state;
	tu_rmdir(dir);
	return 0;
}

static double
num(json_t *row, const char *field)
{
	json_t *v = json_object_get(row, field);
	assert_non_null(v);
	return json_number_value(v);
}

static json_t *
row_at(json_t *root, uint32_t nprobe, double refine)
{
	json_t *rows = json_object_get(root, "results");
	for (size_t i = 0; i < json_array_size(rows); i++) {
		json_t *r = json_array_get(rows, i);
		if ((uint32_t) num(r, "nprobe") == nprobe && fabs(num(r, "refine_factor") - refine) < 1e-6)
			return r;
	}
	fail_msg("no row for nprobe %u refine %g", nprobe, refine);
	return NULL;
}

/* The second computation: everything from the files, in plain loops. */
struct plain {
	float *base, *q;
	int32_t *gt;
	size_t nb, nq;
	uint32_t dim, gk;
	int metric;
};

static float *
read_fvecs(const char *path, size_t *n, uint32_t *dim)
{
	FILE *f = fopen(path, "rb");
	assert_non_null(f);
	int32_t d;
	assert_int_equal(fread(&d, 4, 1, f), 1);
	fseek(f, 0, SEEK_END);
	long len = ftell(f);
	fseek(f, 0, SEEK_SET);
	size_t rows = (size_t) len / (4 + 4 * (size_t) d);
	float *x = malloc(rows * (size_t) d * sizeof(float));
	for (size_t i = 0; i < rows; i++) {
		assert_int_equal(fread(&d, 4, 1, f), 1);
		assert_int_equal(fread(x + i * (size_t) d, 4, (size_t) d, f), (size_t) d);
	}
	fclose(f);
	*n = rows;
	*dim = (uint32_t) d;
	return x;
}

static void
plain_load(struct plain *p, const struct set *s)
{
	char path[4096];
	uint32_t d2;
	size_t ng;
	snprintf(path, sizeof(path), "%s/%s/base.fvecs", CANDEX_SHARED_DATA, s->name);
	p->base = read_fvecs(path, &p->nb, &p->dim);
	snprintf(path, sizeof(path), "%s/%s/query.fvecs", CANDEX_SHARED_DATA, s->name);
	p->q = read_fvecs(path, &p->nq, &d2);
	snprintf(path, sizeof(path), "%s/%s/%s", CANDEX_SHARED_DATA, s->name, s->gt);
	p->gt = (int32_t *) read_fvecs(path, &ng, &p->gk); /* same framing, int32 payload */
	assert_int_equal(ng, p->nq);
	p->metric = strcmp(s->metric, "l2") == 0 ? 0 : strcmp(s->metric, "ip") == 0 ? 1 : 2;
}

static void
plain_free(struct plain *p)
{
	free(p->base);
	free(p->q);
	free(p->gt);
}

/* distance, lower is better: l2 Euclidean, ip -dot, cos 1 - cosine */
static double
plain_dist(const struct plain *p, const float *q, size_t row)
{
	const float *x = p->base + row * p->dim;
	double dot = 0, xx = 0, qq = 0, l2 = 0;
	for (uint32_t j = 0; j < p->dim; j++) {
		dot += (double) x[j] * q[j];
		xx += (double) x[j] * x[j];
		qq += (double) q[j] * q[j];
		l2 += ((double) x[j] - q[j]) * ((double) x[j] - q[j]);
	}
	if (p->metric == 0)
		return sqrt(l2);
	if (p->metric == 1)
		return -dot;
	return 1 - dot / (sqrt(xx) * sqrt(qq));
}

/* r-recall@k of hits (nq x k ids = base rows) against the .ivecs truth:
 * with the distance tie rule (returned; a distinct hit counts when its
 * distance <= the largest of the file's first r + eps, at most r a query)
 * and by id only (*by_id). r = k is k-recall@k, r = 1 is 1-recall@k. */
static double
plain_recall(const struct plain *p, const int64_t *hits, uint32_t k, uint32_t r, double eps, double *by_id)
{
	size_t found = 0, found_id = 0;
	for (size_t i = 0; i < p->nq; i++) {
		const float *q = p->q + i * p->dim;
		const int32_t *g = p->gt + i * p->gk;
		double kth = 0;
		for (uint32_t j = 0; j < r; j++) { /* the r-th distance among the file's top r */
			double d = plain_dist(p, q, (size_t) g[j]);
			if (d > kth || j == 0)
				kth = d;
		}
		size_t mine = 0, mine_id = 0;
		for (uint32_t a = 0; a < k; a++) {
			int64_t h = hits[i * k + a];
			if (h < 0)
				continue;
			int dup = 0;
			for (uint32_t b = 0; b < a; b++)
				dup |= hits[i * k + b] == h;
			if (dup)
				continue;
			for (uint32_t b = 0; b < r; b++)
				mine_id += g[b] == h;
			if (plain_dist(p, q, (size_t) h) <= kth + eps + 1e-6 * fabs(kth))
				mine++;
		}
		found += mine < r ? mine : r;
		found_id += mine_id;
	}
	*by_id = (double) found_id / (double) (p->nq * r);
	return (double) found / (double) (p->nq * r);
}

/* search runs every query at (k, nprobe, refine) in batches of 64, as the
 * tool's QPS pass sends them, and writes nq x k ids */
static void
search(cdx_collection *c, const struct plain *p, uint32_t k, uint32_t nprobe, float refine, int64_t *ids)
{
	struct cdx_hit *hits = malloc(p->nq * k * sizeof(*hits));
	struct cdx_search_params sp
	    = { .k = k, .nprobe = nprobe, .refine_factor = refine > 0 ? refine : CDX_RECALL_REFINE_NONE };
	for (size_t q0 = 0; q0 < p->nq; q0 += 64) {
		size_t n = p->nq - q0 < 64 ? p->nq - q0 : 64;
		assert_int_equal(cdx_collection_search(c, &sp, p->q + q0 * p->dim, n, hits + q0 * k), CDX_OK);
	}
	for (size_t i = 0; i < p->nq * k; i++)
		ids[i] = hits[i].id;
	free(hits);
}

/* check_figure compares one of the tool's figures with the plain loop's */
static void
check_figure(const struct set *s, const char *what, uint32_t nprobe, float refine, double tool, double plain,
    double by_id)
{
	fprintf(stderr, "%s %s nprobe %u refine %g %s: tool %.4f, plain loop %.4f (by id only %.4f)\n",
	    s->name, s->metric, nprobe, (double) refine, what, tool, plain, by_id);
	if (fabs(tool - plain) > 0.001)
		fail_msg("%s %s: %s: the tool says %.4f, the plain loop %.4f", s->name, s->metric, what, tool,
		    plain);
	/* ties only ever add: the id-only figure is a lower bound */
	assert_true(by_id <= plain + 1e-9);
}

static void
run_set(const struct set *s)
{
	char data[4096], idx[4096], js[4200], png[4200];
	snprintf(data, sizeof(data), "%s/%s", CANDEX_SHARED_DATA, s->name);
	snprintf(idx, sizeof(idx), "%s/%s-%s", dir, s->name, s->metric);
	snprintf(js, sizeof(js), "%s/%s-%s.json", dir, s->name, s->metric);
	snprintf(png, sizeof(png), "%s/%s-%s.png", dir, s->name, s->metric);
	char *out = NULL;
	int rc = tu_run(&out, "%s build --quiet --input %s/base.fvecs --collection c --metric %s --out %s %s",
	    CANDEX_BIN, data, s->metric, idx, s->build);
	if (rc != 0)
		fprintf(stderr, "%s\n", out);
	assert_int_equal(rc, 0);
	free(out);
	rc = tu_run(&out,
	    "%s recall --quiet --index %s/c --queries %s/query.fvecs --gt %s/%s --base %s/base.fvecs "
	    "--nprobe %s --refine %s --latency-queries 200 --min-time 0.2 --json %s --plot %s",
	    CANDEX_BIN, idx, data, data, s->gt, data, s->nprobe, s->refine, js, png);
	fprintf(stderr, "== %s %s\n%s", s->name, s->metric, out);
	assert_int_equal(rc, 0);
	free(out);
	json_error_t jerr;
	json_t *root = json_load_file(js, 0, &jerr);
	assert_non_null(root);

	/* recall rises with nprobe at every refine factor, for every figure */
	json_t *rows = json_object_get(root, "results");
	const char *fields[] = { "recall_at_k", "recall_1_at_k", "recall_100_at_100" };
	for (int f = 0; f < 3; f++)
		for (size_t i = 0; i < json_array_size(rows); i++)
			for (size_t j = 0; j < json_array_size(rows); j++) {
				json_t *a = json_array_get(rows, i), *b = json_array_get(rows, j);
				if (num(a, "refine_factor") != num(b, "refine_factor")
				    || num(b, "nprobe") <= num(a, "nprobe"))
					continue;
				if (num(b, fields[f]) < num(a, fields[f]) - 0.005)
					fail_msg("%s %s: %s falls from %.4f (nprobe %g) to %.4f (nprobe %g), "
					         "refine %g",
					    s->name, s->metric, fields[f], num(a, fields[f]),
					    num(a, "nprobe"), num(b, fields[f]), num(b, "nprobe"),
					    num(a, "refine_factor"));
			}
	/* every list, big refine: what exact search allows */
	double best = num(row_at(root, s->full_nprobe, s->big_refine), "recall_at_k");
	if (best < s->min_best)
		fail_msg("%s %s: nprobe %u refine %g reaches only %.4f", s->name, s->metric, s->full_nprobe,
		    (double) s->big_refine, best);

	/* the second computation agrees at several settings */
	struct plain p;
	plain_load(&p, s);
	char path[4200];
	snprintf(path, sizeof(path), "%s/c", idx);
	cdx_collection *c = NULL;
	assert_int_equal(cdx_collection_load(&c, path), CDX_OK);
	int64_t *ids = malloc(p.nq * 100 * sizeof(int64_t));
	uint32_t probes[] = { 1, 16, s->full_nprobe };
	float refines[] = { 0, s->big_refine };
	double eps = CDX_RECALL_EPSILON_DEFAULT, by_id;
	for (int a = 0; a < 3; a++)
		for (int b = 0; b < 2; b++) {
			json_t *row = row_at(root, probes[a], refines[b]);
			double plain;
			search(c, &p, 10, probes[a], refines[b], ids);
			plain = plain_recall(&p, ids, 10, 10, eps, &by_id);
			check_figure(
			    s, "R10@10", probes[a], refines[b], num(row, "recall_at_k"), plain, by_id);
			plain = plain_recall(&p, ids, 10, 1, eps, &by_id);
			check_figure(
			    s, "R1@10", probes[a], refines[b], num(row, "recall_1_at_k"), plain, by_id);
			if (a == 2)
				continue; /* k = 100 over every list: slow, and the same code */
			search(c, &p, 100, probes[a], refines[b], ids);
			plain = plain_recall(&p, ids, 100, 100, eps, &by_id);
			check_figure(s, "R100@100", probes[a], refines[b], num(row, "recall_100_at_100"),
			    plain, by_id);
		}
	free(ids);
	cdx_collection_unref(c);
	plain_free(&p);
	json_decref(root);
}

static void
test_real_sets(void **state)
{
	(void) state;
	if (!have_data()) {
		fprintf(stderr, "no %s: skipped\n", CANDEX_SHARED_DATA);
		skip();
	}
	for (size_t i = 0; i < CDX_ARRAY_LEN(sets); i++)
		run_set(&sets[i]);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_real_sets),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
