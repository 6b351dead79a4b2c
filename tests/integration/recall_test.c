/*
 * recall_test.c — `candex recall` end to end on indexes made by `candex
 * build`, in process and through a live server, checked against independent
 * computations (a plain brute-force loop); its bad-input errors; and the
 * online recall checker on real collections.
 */
#include "srvtest.h"

#include <dirent.h>
#include <pty.h>
#include <jansson.h>
#include <math.h>

#include "recall/online.h"
#include "recall/recall.h"
#include "search/search.h"
#include "shard/manifest.h"

#define N   10000
#define DIM 32
#define NQ  200

static char *dir;
static float *base_l2, *base_cos, *base_ip, *queries;
static char qpath[4096], bpath_l2[4096], bpath_cos[4096], bpath_ip[4096];
/* bytes per item without a refine store, loaded here: "ip", and "l2p", an
 * L2 IVF-PQ like "l2r" and "cos" (which also hold Faiss's precomputed
 * table of nlist x M x 256 floats) */
static double bpv_plain_ip, bpv_plain_l2;

/* the builder's input file name (st_build writes it) */
static void
input_path(char *out, size_t len, const char *coll, uint64_t seed)
{
	snprintf(out, len, "%s/%s-%llu.fvecs", dir, coll, (unsigned long long) seed);
}

static int
setup(void **state)
{
	(void) state;
	dir = tu_tmpdir("recall-it");
	/* one clustered data set, indexed four ways */
	/* --no-tune: the sweeps need an IVF index at the fixed defaults */
	base_l2 = st_build(dir, "l2r", N, DIM, 1, "l2", "l2:", "--refine fp32 --no-tune");
	base_cos = st_build(dir, "cos", N, DIM, 1, "cos", "cos:", "--refine fp16 --no-tune");
	base_ip = st_build(dir, "ip", N, DIM, 1, "ip", "ip:", "--no-tune");
	free(st_build(dir, "l2p", N, DIM, 1, "l2", "ip:", "--refine none --no-tune"));
	free(st_build(dir, "flatl2", N, DIM, 1, "l2", "f:", "--factory Flat"));
	free(st_build(dir, "flatcos", N, DIM, 1, "cos", "f:", "--factory Flat"));
	free(st_build(dir, "flatip", N, DIM, 1, "ip", "f:", "--factory Flat"));
	input_path(bpath_l2, sizeof(bpath_l2), "l2r", 1);
	input_path(bpath_cos, sizeof(bpath_cos), "cos", 1);
	input_path(bpath_ip, sizeof(bpath_ip), "ip", 1);
	/* queries: perturbed base rows, so that neighbourhoods are dense */
	queries = malloc(NQ * DIM * sizeof(float));
	cdx_rng rng;
	cdx_rng_seed(&rng, 77);
	for (size_t i = 0; i < NQ; i++) {
		size_t r = cdx_rng_next(&rng) % N;
		for (size_t j = 0; j < DIM; j++)
			queries[i * DIM + j] = base_l2[r * DIM + j] + 0.7f * (float) cdx_rng_normal(&rng);
	}
	snprintf(qpath, sizeof(qpath), "%s/queries.fvecs", dir);
	assert_int_equal(tu_write_fvecs(qpath, queries, NQ, DIM), 0);
	char path[4200];
	const char *plain[2] = { "ip", "l2p" };
	double *bpv[2] = { &bpv_plain_ip, &bpv_plain_l2 };
	for (int i = 0; i < 2; i++) {
		snprintf(path, sizeof(path), "%s/index/%s", dir, plain[i]);
		cdx_collection *c = NULL;
		assert_int_equal(cdx_collection_load(&c, path), CDX_OK);
		*bpv[i] = (double) cdx_collection_memory_bytes(c) / N;
		cdx_collection_unref(c);
	}
	return 0;
}

static int
teardown(void **state)
{
	(void) state;
	free(base_l2);
	free(base_cos);
	free(base_ip);
	free(queries);
	tu_rmdir(dir);
	return 0;
}

/* run_recall runs `candex recall <args> --json <tmp>` and returns the parsed
 * JSON (NULL if the run failed; *out gets the output if not NULL). */
static json_t *run_recall(char **out, int *status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static json_t *
run_recall(char **out, int *status, const char *fmt, ...)
{
	static int seq;
	char args[8192], js[4200];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(args, sizeof(args), fmt, ap);
	va_end(ap);
	snprintf(js, sizeof(js), "%s/run-%d.json", dir, ++seq);
	char *o = NULL;
	int rc = tu_run(&o, "%s recall --quiet --cache-dir %s/cache --min-time 0.02 --json %s %s", CANDEX_BIN,
	    dir, js, args);
	if (status != NULL)
		*status = rc;
	if (rc != 0 && status == NULL)
		fprintf(stderr, "candex recall %s failed (%d):\n%s\n", args, rc, o);
	json_error_t jerr;
	json_t *root = rc == 0 || rc == 1 ? json_load_file(js, 0, &jerr) : NULL;
	if (out != NULL)
		*out = o;
	else
		free(o);
	return root;
}

static json_t *
row_at(json_t *root, uint32_t nprobe, double refine)
{
	json_t *rows = json_object_get(root, "results");
	for (size_t i = 0; i < json_array_size(rows); i++) {
		json_t *r = json_array_get(rows, i);
		if (json_integer_value(json_object_get(r, "nprobe")) == nprobe
		    && fabs(json_real_value(json_object_get(r, "refine_factor")) - refine) < 1e-6)
			return r;
	}
	return NULL;
}

static double
num(json_t *row, const char *field)
{
	json_t *v = json_object_get(row, field);
	assert_non_null(v);
	return json_number_value(v);
}

/* recall must not fall as nprobe rises (same refine factor) */
static void
assert_monotonic(json_t *root, const char *field)
{
	json_t *rows = json_object_get(root, "results");
	for (size_t i = 0; i < json_array_size(rows); i++)
		for (size_t j = 0; j < json_array_size(rows); j++) {
			json_t *a = json_array_get(rows, i), *b = json_array_get(rows, j);
			if (num(a, "refine_factor") != num(b, "refine_factor")
			    || num(b, "nprobe") <= num(a, "nprobe"))
				continue;
			if (num(b, field) < num(a, field) - 0.005) {
				fprintf(stderr,
				    "%s falls from %.4f (nprobe %g) to %.4f (nprobe %g), refine %g\n", field,
				    num(a, field), num(a, "nprobe"), num(b, field), num(b, "nprobe"),
				    num(a, "refine_factor"));
				fail();
			}
		}
}

/* The second computation, written here from scratch: the collection searched
 * in batches of 64 (as the tool's QPS pass sends them with --threads 2), and
 * the hits judged by plain loops in double precision over the raw base
 * vectors: every distance of a query, sorted; a distinct hit counts when its
 * distance is <= the r-th smallest + eps. Returns hits counted / (NQ r). */
static double
plain_dist(const float *x, const float *q, int metric)
{
	double dot = 0, xx = 0, qq = 0, l2 = 0;
	for (size_t j = 0; j < DIM; j++) {
		dot += (double) x[j] * q[j];
		xx += (double) x[j] * x[j];
		qq += (double) q[j] * q[j];
		l2 += ((double) x[j] - q[j]) * ((double) x[j] - q[j]);
	}
	if (metric == CDX_METRIC_L2)
		return sqrt(l2);
	if (metric == CDX_METRIC_IP)
		return -dot;
	return 1 - dot / (sqrt(xx) * sqrt(qq));
}

static int
cmp_dbl(const void *a, const void *b)
{
	double x = *(const double *) a, y = *(const double *) b;
	return x < y ? -1 : x > y;
}

static double
plain_recall(const char *coll, const float *base, int metric, uint32_t nprobe, float refine, uint32_t k,
    uint32_t r, double eps, size_t *counted)
{
	char path[4200];
	snprintf(path, sizeof(path), "%s/index/%s", dir, coll);
	cdx_collection *c = NULL;
	assert_int_equal(cdx_collection_load(&c, path), CDX_OK);
	struct cdx_hit *hits = malloc(NQ * k * sizeof(*hits));
	struct cdx_search_params p = { .k = k, .nprobe = nprobe, .refine_factor = refine };
	for (size_t q0 = 0; q0 < NQ; q0 += 64) {
		size_t n = NQ - q0 < 64 ? NQ - q0 : 64;
		assert_int_equal(cdx_collection_search(c, &p, queries + q0 * DIM, n, hits + q0 * k), CDX_OK);
	}
	double *d = malloc(N * sizeof(double)), *sorted = malloc(N * sizeof(double));
	size_t found = 0;
	for (size_t i = 0; i < NQ; i++) {
		for (size_t b = 0; b < N; b++)
			d[b] = plain_dist(base + b * DIM, queries + i * DIM, metric);
		memcpy(sorted, d, N * sizeof(double));
		qsort(sorted, N, sizeof(double), cmp_dbl);
		double thr = sorted[r - 1] + eps;
		size_t mine = 0;
		for (uint32_t a = 0; a < k; a++) {
			int64_t id = hits[i * k + a].id;
			int dup = 0;
			for (uint32_t b = 0; b < a; b++)
				dup |= hits[i * k + b].id == id;
			if (id >= 0 && id < N && !dup && d[id] <= thr)
				mine++;
		}
		found += mine < r ? mine : r;
	}
	free(d);
	free(sorted);
	free(hits);
	cdx_collection_unref(c);
	*counted = found;
	return (double) found / (double) (NQ * r);
}

/* the tool's figure equals the plain loop's, to one hit in the whole set
 * (a distance within float rounding of the threshold may fall either way) */
static void
assert_agrees(const char *coll, const char *what, double tool, double plain, uint32_t r)
{
	double one = 1.0 / (NQ * r);
	if (fabs(tool - plain) > one + 1e-12) {
		fprintf(stderr, "%s %s: tool %.6f, plain loop %.6f\n", coll, what, tool, plain);
		fail();
	}
}

static void
test_flat_is_exact(void **state)
{
	(void) state;
	const char *colls[] = { "flatl2", "flatcos", "flatip" };
	const char *bases[] = { bpath_l2, bpath_cos, bpath_ip };
	for (int i = 0; i < 3; i++) {
		json_t *root = run_recall(NULL, NULL,
		    "--index %s/index/%s --queries %s --base %s --latency-queries 20", dir, colls[i], qpath,
		    bases[i]);
		assert_non_null(root);
		json_t *rows = json_object_get(root, "results");
		assert_int_equal(json_array_size(rows), 1); /* flat: one setting */
		json_t *r = json_array_get(rows, 0);
		assert_true(num(r, "recall_at_k") == 1.0);
		assert_true(num(r, "recall_1_at_k") == 1.0);
		assert_true(num(r, "recall_100_at_100") == 1.0);
		assert_true(num(r, "qps") > 0);
		assert_true(num(r, "p99_ms") >= num(r, "p50_ms"));
		json_decref(root);
	}
}

static void
check_sweep(const char *coll, const char *bpath, const float *base, int metric, const char *refine_store)
{
	int has_refine = *refine_store != '\0';
	json_t *root = run_recall(NULL, NULL,
	    "--index %s/index/%s --queries %s --base %s --nprobe 1,4,16,64,256 %s --latency-queries 30 "
	    "--threads 2 --epsilon 1e-6",
	    dir, coll, qpath, bpath, has_refine ? "--refine 0,32" : "");
	assert_non_null(root);
	assert_string_equal(json_string_value(json_object_get(root, "metric")), cdx_metric_name(metric));
	/* nprobe 256 probes every list */
	assert_int_equal(json_integer_value(json_object_get(root, "nlist")), 256);
	assert_int_equal(json_integer_value(json_object_get(root, "items")), N);
	assert_int_equal(json_array_size(json_object_get(root, "results")), has_refine ? 10 : 5);
	assert_monotonic(root, "recall_at_k");
	assert_monotonic(root, "recall_100_at_100");
	assert_monotonic(root, "recall_1_at_k");
	/* more probes must help, and re-ranking every list reaches what exact
	 * search allows */
	double rf = has_refine ? 32 : 0;
	assert_true(
	    num(row_at(root, 256, rf), "recall_at_k") > num(row_at(root, 1, rf), "recall_at_k") + 0.1);
	if (has_refine) {
		assert_true(num(row_at(root, 256, 32), "recall_at_k") >= 0.99);
		assert_true(num(row_at(root, 256, 32), "recall_100_at_100") >= 0.99);
	}
	/* every figure agrees with the plain loop, at settings with and
	 * without re-ranking (a tight epsilon, as the run's) */
	const float rfs[2] = { CDX_RECALL_REFINE_NONE, 32 };
	for (int i = 0; i < (has_refine ? 2 : 1); i++) {
		uint32_t np = i == 0 ? 16 : 4;
		json_t *row = row_at(root, np, i == 0 ? 0 : 32);
		size_t n;
		assert_agrees(coll, "R10@10", num(row, "recall_at_k"),
		    plain_recall(coll, base, metric, np, rfs[i], 10, 10, 1e-6, &n), 10);
		assert_agrees(coll, "R1@10", num(row, "recall_1_at_k"),
		    plain_recall(coll, base, metric, np, rfs[i], 10, 1, 1e-6, &n), 1);
		assert_agrees(coll, "R100@100", num(row, "recall_100_at_100"),
		    plain_recall(coll, base, metric, np, rfs[i], 100, 100, 1e-6, &n), 100);
	}
	/* memory per vector: what the collection holds as loaded, over the
	 * items; the same data indexed the same way without a refine store
	 * ("ip", or "l2p" for L2 and cosine; keys "ip:<row>") holds dim x 4
	 * (fp32) or dim x 2 (fp16) bytes less per item, but 8 more for the
	 * direct map that finds stored vectors without a refine store, and
	 * one byte less of key than "cos:<row>" */
	double bpv = num(row_at(root, 1, 0), "bytes_per_vector");
	double bpv_plain = metric == CDX_METRIC_IP ? bpv_plain_ip : bpv_plain_l2;
	double want = strcmp(refine_store, "fp32") == 0 ? 4 * DIM
	    : strcmp(refine_store, "fp16") == 0         ? 2 * DIM
	                                                : 0;
	if (want > 0)
		want -= 8;
	if (metric == CDX_METRIC_COS)
		want += 1;
	if (fabs(bpv - bpv_plain - want) > 0.5)
		fprintf(
		    stderr, "%s: %.2f bytes per vector, %.2f without a refine store\n", coll, bpv, bpv_plain);
	assert_true(fabs(bpv - bpv_plain - want) <= 0.5);
	assert_true(bpv_plain > 8); /* PQ codes and an 8-byte id at least */
	json_decref(root);
}

static void
test_sweep_l2(void **state)
{
	(void) state;
	check_sweep("l2r", bpath_l2, base_l2, CDX_METRIC_L2, "fp32");
}

static void
test_sweep_cos(void **state)
{
	(void) state;
	check_sweep("cos", bpath_cos, base_cos, CDX_METRIC_COS, "fp16");
}

static void
test_sweep_ip(void **state)
{
	(void) state;
	check_sweep("ip", bpath_ip, base_ip, CDX_METRIC_IP, "");
}

/* Every metric path reaches what exact search allows: on small clustered
 * data indexed with an fp32 refine store, recall never falls as nprobe
 * rises (within a small tolerance without re-ranking, to one hit with it),
 * and probing every list while re-ranking every item gives exactly the
 * exact search's answer: recall 1.0 on every figure. */
#define MONO_N   4000
#define MONO_DIM 16

static void
check_monotonic(const char *metric, uint64_t seed)
{
	char coll[64], in[4200], qp[4200];
	snprintf(coll, sizeof(coll), "mono-%s", metric);
	float *x = st_build(dir, coll, MONO_N, MONO_DIM, seed, metric, "m:", "--refine fp32 --no-tune");
	input_path(in, sizeof(in), coll, seed);
	float *q = malloc(NQ * MONO_DIM * sizeof(float));
	cdx_rng rng;
	cdx_rng_seed(&rng, seed + 100);
	for (size_t i = 0; i < NQ; i++) {
		size_t r = cdx_rng_next(&rng) % MONO_N;
		for (size_t j = 0; j < MONO_DIM; j++)
			q[i * MONO_DIM + j] = x[r * MONO_DIM + j] + 0.7f * (float) cdx_rng_normal(&rng);
	}
	snprintf(qp, sizeof(qp), "%s/%s-queries.fvecs", dir, coll);
	assert_int_equal(tu_write_fvecs(qp, q, NQ, MONO_DIM), 0);
	free(q);
	free(x);

	/* re-ranking k x 400 = 4000 candidates re-ranks every item */
	json_t *root = run_recall(NULL, NULL,
	    "--index %s/index/%s --queries %s --base %s --nprobe 1,2,4,8,16,32,64 --refine 0,8,400 "
	    "--latency-queries 10",
	    dir, coll, qp, in);
	assert_non_null(root);
	assert_int_equal(json_integer_value(json_object_get(root, "nlist")), 64);
	json_t *rows = json_object_get(root, "results");
	assert_int_equal(json_array_size(rows), 21);
	const char *fields[] = { "recall_at_k", "recall_1_at_k", "recall_100_at_100" };
	for (int f = 0; f < 3; f++)
		for (size_t i = 0; i < json_array_size(rows); i++)
			for (size_t j = 0; j < json_array_size(rows); j++) {
				json_t *a = json_array_get(rows, i), *b = json_array_get(rows, j);
				double rf = num(a, "refine_factor");
				if (rf != num(b, "refine_factor") || num(b, "nprobe") <= num(a, "nprobe"))
					continue;
				/* A bigger candidate set ranked by PQ scores may push a
				 * true neighbour out of the top k (or of the k x 8
				 * re-ranked): small falls, 0.005 for k-recall@k; 1-recall
				 * moves by whole queries (0.005 each), so 4 of them. The
				 * 2-byte PQ codes here (PQ4x4 for dim 16) make ip show it
				 * most. With every candidate re-ranked exactly, a superset
				 * cannot lose a neighbour (but for a distance within float
				 * rounding of the threshold: one hit). */
				double tol = rf < 400 ? (f == 1 ? 0.02 : 0.005)
				                      : 1.0
				        / (NQ
				            * (f == 1        ? 1
				                    : f == 0 ? 10
				                             : 100));
				if (num(b, fields[f]) >= num(a, fields[f]) - tol - 1e-12)
					continue;
				/* cos included: it is indexed as L2 over unit vectors;
				 * as inner product (before 2026-11-28) its PQ scores
				 * favoured large reconstructions and recall fell here */
				fail_msg("%s: %s falls from %.4f (nprobe %g) to %.4f (nprobe %g), refine %g",
				    coll, fields[f], num(a, fields[f]), num(a, "nprobe"), num(b, fields[f]),
				    num(b, "nprobe"), rf);
			}
	for (int f = 0; f < 3; f++) {
		double v = num(row_at(root, 64, 400), fields[f]);
		if (v != 1.0)
			fail_msg(
			    "%s: %s is %.6f at nprobe = nlist with every item re-ranked", coll, fields[f], v);
	}
	/* and more probes must help at all */
	assert_true(
	    num(row_at(root, 64, 400), "recall_at_k") > num(row_at(root, 1, 400), "recall_at_k") + 0.1);
	json_decref(root);
}

static void
test_monotonic_all_metrics(void **state)
{
	(void) state;
	check_monotonic("l2", 21);
	check_monotonic("ip", 22);
	check_monotonic("cos", 23);
}

static void
test_targets_and_save(void **state)
{
	(void) state;
	int status;
	char *out = NULL;
	json_t *root = run_recall(&out, &status,
	    "--index %s/index/l2r --queries %s --base %s --nprobe 1,2,4,8,16,32 --refine 0,4 "
	    "--latency-queries 20 "
	    "--target 0.6,0.9 --target 0.99999 --save",
	    dir, qpath, bpath_l2);
	/* 0.99999 is out of reach of this sweep: exit 1, the others saved */
	assert_int_equal(status, 1);
	assert_non_null(strstr(out, "target 0.9999"));
	assert_non_null(strstr(out, "not reached"));
	free(out);
	assert_non_null(root);
	json_t *pts = json_object_get(root, "operating_points");
	assert_int_equal(json_array_size(pts), 3);
	json_t *rows = json_object_get(root, "results");
	for (int i = 0; i < 2; i++) {
		json_t *p = json_array_get(pts, (size_t) i);
		assert_true(json_is_true(json_object_get(p, "reached")));
		double target = num(p, "recall_target");
		/* the cheapest: no row reaching the target with 95% confidence
		 * (recall - 1.645 standard errors) has a higher QPS */
		for (size_t j = 0; j < json_array_size(rows); j++) {
			json_t *r = json_array_get(rows, j);
			if (num(r, "recall_at_k") - 1.645 * num(r, "recall_at_k_stderr") >= target)
				assert_true(num(r, "qps") <= num(p, "qps"));
		}
		assert_true(num(p, "recall") >= target);
	}
	assert_true(json_is_false(json_object_get(json_array_get(pts, 2), "reached")));

	struct cdx_manifest *m = NULL;
	char vdir[4096], path[4200];
	snprintf(path, sizeof(path), "%s/index/l2r", dir);
	assert_int_equal(cdx_version_path_resolve(path, vdir), CDX_OK);
	assert_int_equal(cdx_manifest_load(&m, vdir), CDX_OK);
	assert_int_equal(m->npoints, 2);
	for (uint32_t i = 0; i < 2; i++) {
		json_t *p = json_array_get(pts, i);
		assert_true(fabs(m->points[i].recall_target - num(p, "recall_target")) < 1e-9);
		assert_int_equal(m->points[i].nprobe, (uint32_t) num(p, "nprobe"));
		assert_int_equal(m->points[i].k, 10);
		assert_true(fabs(m->points[i].p99_ms - num(p, "p99_ms")) < 1e-3);
		/* "none" is stored as a factor below 1 that search treats as none */
		if (num(p, "refine_factor") == 0)
			assert_true(m->points[i].refine_factor > 0 && m->points[i].refine_factor < 1);
		else
			assert_true(m->points[i].refine_factor == (float) num(p, "refine_factor"));
	}
	/* the collection still loads and verifies after the manifest rewrite */
	cdx_collection *c = NULL;
	assert_int_equal(cdx_collection_load(&c, path), CDX_OK);
	cdx_collection_unref(c);

	/* saving again merges: a point of the same k and target is replaced,
	 * the others are kept, a point for another k is added beside them;
	 * the table stays sorted by k, then target */
	struct cdx_operating_point kept = m->points[1]; /* 0.9 */
	cdx_manifest_free(m);
	json_t *again = run_recall(NULL, NULL,
	    "--index %s/index/l2r --queries %s --base %s --nprobe 64 --refine 8 --latency-queries 20 "
	    "--target 0.5,0.6 --save",
	    dir, qpath, bpath_l2);
	assert_non_null(again);
	json_t *k20 = run_recall(NULL, NULL,
	    "--index %s/index/l2r --queries %s --base %s --nprobe 4,16 --refine 4 --latency-queries 20 "
	    "-k 20 --target 0.6 --save",
	    dir, qpath, bpath_l2);
	assert_non_null(k20);
	assert_int_equal(cdx_manifest_load(&m, vdir), CDX_OK);
	assert_int_equal(m->npoints, 4);
	double want_t[4] = { 0.5, 0.6, 0.9, 0.6 };
	uint32_t want_k[4] = { 10, 10, 10, 20 };
	for (uint32_t i = 0; i < 4; i++) {
		assert_true(fabs(m->points[i].recall_target - want_t[i]) < 1e-9);
		assert_int_equal(m->points[i].k, want_k[i]);
	}
	for (uint32_t i = 0; i < 2; i++) { /* the second run's only setting (the first swept 1..32) */
		assert_int_equal(m->points[i].nprobe, 64);
		assert_true(m->points[i].refine_factor == 8);
	}
	assert_int_equal(m->points[2].nprobe, kept.nprobe);
	assert_true(m->points[2].refine_factor == kept.refine_factor);
	assert_true(m->points[2].p99_ms == kept.p99_ms);
	json_t *p20 = json_array_get(json_object_get(k20, "operating_points"), 0);
	assert_int_equal(m->points[3].nprobe, (uint32_t) num(p20, "nprobe"));
	assert_true(m->points[3].refine_factor == 4);
	cdx_manifest_free(m);
	json_decref(again);
	json_decref(k20);
	json_decref(root);
}

static void
write_ivecs(const char *path, const int32_t *rows, size_t n, uint32_t k)
{
	FILE *f = fopen(path, "wb");
	assert_non_null(f);
	for (size_t i = 0; i < n; i++) {
		int32_t kk = (int32_t) k;
		fwrite(&kk, 4, 1, f);
		fwrite(rows + i * k, 4, k, f);
	}
	fclose(f);
}

/* exact top-100 rows of every query, as an .ivecs file of nq rows x k */
static void
make_gt(const char *path, size_t nq, uint32_t k)
{
	int32_t *rows = malloc(nq * k * sizeof(int32_t));
	int64_t *t = malloc(k * sizeof(int64_t));
	for (size_t i = 0; i < nq; i++) {
		tu_exact_knn(base_l2, N, DIM, queries + (i % NQ) * DIM, k, 0, t);
		for (uint32_t j = 0; j < k; j++)
			rows[i * k + j] = (int32_t) t[j];
	}
	write_ivecs(path, rows, nq, k);
	free(rows);
	free(t);
}

static void
test_ground_truth_file(void **state)
{
	(void) state;
	char gt[4200];
	snprintf(gt, sizeof(gt), "%s/gt100.ivecs", dir);
	make_gt(gt, NQ, 100);
	/* rows only (no --base): recall by id; with base: by distance */
	json_t *a = run_recall(
	    NULL, NULL, "--index %s/index/l2r --queries %s --gt %s --nprobe 2,16 --refine 0", dir, qpath, gt);
	json_t *b = run_recall(NULL, NULL,
	    "--index %s/index/l2r --queries %s --gt %s --base %s --nprobe 2,16 "
	    "--refine 0",
	    dir, qpath, gt, bpath_l2);
	json_t *c = run_recall(NULL, NULL,
	    "--index %s/index/l2r --queries %s --base %s --nprobe 2,16 --refine 0 "
	    "--baseline",
	    dir, qpath, bpath_l2);
	assert_non_null(a);
	assert_non_null(b);
	assert_non_null(c);
	assert_string_equal(json_string_value(json_object_get(a, "truth")), "ivecs");
	/* --baseline: exact search timed, each setting as a speed-up over it */
	double exact = json_number_value(json_object_get(c, "exact_search_qps"));
	assert_true(exact > 0);
	double ratio = num(row_at(c, 2, 0), "qps") / exact; /* JSON keeps 6 digits */
	assert_true(fabs(num(row_at(c, 2, 0), "speedup_vs_exact") - ratio) < 1e-4 * ratio);
	assert_null(json_object_get(a, "exact_search_qps"));
	for (uint32_t np = 2; np <= 16; np *= 8) {
		double ra = num(row_at(a, np, 0), "recall_at_k"), rb = num(row_at(b, np, 0), "recall_at_k"),
		       rc = num(row_at(c, np, 0), "recall_at_k");
		/* truth rows from the file judged by our distances = computed truth;
		 * by row only, the tie rule's near-ties (within epsilon) are not
		 * credited: at most a hit or two in 2000 */
		assert_true(fabs(rb - rc) < 1e-9);
		assert_true(ra <= rb && rb - ra <= 0.002);
		assert_true(fabs(num(row_at(b, np, 0), "recall_100_at_100")
		                - num(row_at(c, np, 0), "recall_100_at_100"))
		    < 1e-9);
	}
	json_decref(a);
	json_decref(b);
	json_decref(c);
}

static void
test_truth_cache(void **state)
{
	(void) state;
	char *out = NULL;
	int status;
	char cache[4200], js[4200];
	double first = -1;
	snprintf(cache, sizeof(cache), "%s/cache2", dir);
	snprintf(js, sizeof(js), "%s/cache2.json", dir);
	/* computed, then read back; damaged, it is recomputed (and said so),
	 * rewritten, and read back again; every run gives the same figures */
	for (int i = 0; i < 4; i++) {
		if (i == 2) {
			DIR *d = opendir(cache);
			assert_non_null(d);
			struct dirent *e;
			int files = 0;
			char path[8400];
			while ((e = readdir(d)) != NULL) {
				if (e->d_name[0] == '.')
					continue;
				files++;
				snprintf(path, sizeof(path), "%s/%s", cache, e->d_name);
			}
			closedir(d);
			assert_int_equal(files, 1);
			FILE *f = fopen(path, "r+b");
			assert_non_null(f);
			assert_int_equal(fseek(f, 200, SEEK_SET), 0);
			int c = fgetc(f);
			assert_int_equal(fseek(f, 200, SEEK_SET), 0);
			fputc(c ^ 0x10, f);
			fclose(f);
		}
		status = tu_run(&out,
		    "%s recall --index %s/index/ip --queries %s --base %s --nprobe 4 --min-time 0.01 "
		    "--cache-dir %s --json %s",
		    CANDEX_BIN, dir, qpath, bpath_ip, cache, js);
		assert_int_equal(status, 0);
		assert_non_null(strstr(out, i == 0 || i == 2 ? "truth computed" : "truth cache"));
		if (i == 2) {
			assert_non_null(strstr(out, "ignoring truth cache"));
			assert_non_null(strstr(out, "checksum"));
		}
		free(out);
		json_error_t jerr;
		json_t *root = json_load_file(js, 0, &jerr);
		assert_non_null(root);
		double r = num(json_array_get(json_object_get(root, "results"), 0), "recall_at_k");
		if (first < 0)
			first = r;
		assert_true(r == first);
		json_decref(root);
	}
}

static void
test_outputs(void **state)
{
	(void) state;
	char *out = NULL;
	char csv[4200], png[4200];
	snprintf(csv, sizeof(csv), "%s/r.csv", dir);
	snprintf(png, sizeof(png), "%s/r.png", dir);
	int status = tu_run(&out,
	    "%s recall --index %s/index/cos --queries %s --base %s --nprobe 1,8,64 --refine 0,2 "
	    "--min-time 0.01 --csv %s --plot %s --cache-dir %s/cache -k 20",
	    CANDEX_BIN, dir, qpath, bpath_cos, csv, png, dir);
	assert_int_equal(status, 0);
	/* the table: header with the primary k's columns and one row a setting */
	assert_non_null(strstr(out, "R20@20"));
	assert_non_null(strstr(out, "R10@10"));
	assert_non_null(strstr(out, "B/vec"));
	free(out);
	char *text;
	size_t len;
	assert_int_equal(cdx_read_file(csv, &text, &len), CDX_OK);
	int lines = 0;
	for (size_t i = 0; i < len; i++)
		lines += text[i] == '\n';
	assert_int_equal(lines, 1 + 6);
	assert_non_null(strstr(text, "\n64,2,20,"));
	free(text);
	assert_int_equal(cdx_read_file(png, &text, &len), CDX_OK);
	assert_memory_equal(text, "\x89PNG", 4);
	free(text);
}

/* run_on_tty runs a command line with its stdout and stderr on a
 * pseudo-terminal, as at a user's terminal; returns all it printed. */
static char *
run_on_tty(const char *cmd, int *status)
{
	int master;
	pid_t pid = forkpty(&master, NULL, NULL, NULL);
	assert_true(pid >= 0);
	if (pid == 0) {
		execl("/bin/sh", "sh", "-c", cmd, (char *) NULL);
		_exit(127);
	}
	cdx_buf b = { 0 };
	char chunk[4096];
	for (;;) {
		ssize_t n = read(master, chunk, sizeof(chunk));
		if (n > 0)
			assert_int_equal(cdx_buf_append(&b, chunk, (size_t) n), CDX_OK);
		else if (n < 0 && errno == EINTR)
			continue;
		else
			break; /* EIO once the child has closed the terminal */
	}
	close(master);
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	*status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
	assert_int_equal(cdx_buf_append(&b, "", 1), CDX_OK);
	return b.data;
}

/* On a terminal the tool shows its progress on stderr (ground truth, then
 * "[i/n] what" for the setting being measured, each erased by the next) and
 * the table rows as they are measured; into a pipe it writes no progress. */
static void
test_progress(void **state)
{
	(void) state;
	char *cmd = NULL;
	assert_true(asprintf(&cmd,
	                "%s recall --index %s/index/l2r --queries %s --base %s --nprobe 1,8 --refine 0 "
	                "--min-time 0.01 --cache-dir %s/cache-tty",
	                CANDEX_BIN, dir, qpath, bpath_l2, dir)
	    > 0);
	int status;
	char *out = run_on_tty(cmd, &status);
	assert_int_equal(status, 0);
	assert_non_null(strstr(out, "ground truth: 200/200 queries"));
	assert_non_null(strstr(out, "[1/2] "));
	assert_non_null(strstr(out, "[2/2] "));
	assert_non_null(strstr(out, "\r\033[K"));
	/* both rows of the table, the first before the second is measured */
	const char *r1 = strstr(out, "      1   none "), *p2 = strstr(out, "[2/2] ");
	assert_non_null(r1);
	assert_non_null(strstr(out, "      8   none "));
	assert_true(r1 < p2);
	free(out);

	out = NULL;
	assert_true(tu_run(&out, "%s", cmd) == 0);
	assert_null(strstr(out, "\033[K"));
	assert_null(strstr(out, "[1/2] "));
	assert_non_null(strstr(out, "      8   none "));
	free(out);
	free(cmd);
}

static void
test_bad_input(void **state)
{
	(void) state;
	char *out = NULL;
	char path[4200];
	/* queries of another dimension */
	float q16[10 * 16] = { 0 };
	snprintf(path, sizeof(path), "%s/q16.fvecs", dir);
	assert_int_equal(tu_write_fvecs(path, q16, 10, 16), 0);
	int status = tu_run(
	    &out, "%s recall --index %s/index/l2r --queries %s --base %s", CANDEX_BIN, dir, path, bpath_l2);
	assert_int_equal(status, 1);
	assert_non_null(strstr(out, "dimension 16"));
	assert_non_null(strstr(out, "dimension 32"));
	free(out);

	/* ground-truth rows shorter than k */
	snprintf(path, sizeof(path), "%s/gt5.ivecs", dir);
	make_gt(path, NQ, 5);
	status = tu_run(
	    &out, "%s recall --index %s/index/l2r --queries %s --gt %s -k 10", CANDEX_BIN, dir, qpath, path);
	assert_int_equal(status, 1);
	assert_non_null(strstr(out, "fewer than k = 10"));
	free(out);

	/* ground truth for another number of queries */
	snprintf(path, sizeof(path), "%s/gt-short.ivecs", dir);
	make_gt(path, NQ - 1, 10);
	status = tu_run(
	    &out, "%s recall --index %s/index/l2r --queries %s --gt %s", CANDEX_BIN, dir, qpath, path);
	assert_int_equal(status, 1);
	assert_non_null(strstr(out, "199 rows"));
	assert_non_null(strstr(out, "200 queries"));
	free(out);

	/* base vectors that are not the index's input: one row short */
	snprintf(path, sizeof(path), "%s/base-short.fvecs", dir);
	assert_int_equal(tu_write_fvecs(path, base_l2, N - 1, DIM), 0);
	status = tu_run(
	    &out, "%s recall --index %s/index/l2r --queries %s --base %s", CANDEX_BIN, dir, qpath, path);
	assert_int_equal(status, 1);
	assert_non_null(strstr(out, "9999 rows"));
	assert_non_null(strstr(out, "10000 items"));
	free(out);

	/* an ids file with another count than the base rows */
	snprintf(path, sizeof(path), "%s/ids-short.txt", dir);
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	for (int i = 0; i < N - 2; i++)
		fprintf(f, "%d\n", i);
	fclose(f);
	status = tu_run(&out, "%s recall --index %s/index/l2r --queries %s --base %s --ids %s", CANDEX_BIN,
	    dir, qpath, bpath_l2, path);
	assert_int_equal(status, 1);
	assert_non_null(strstr(out, "9998 ids"));
	free(out);

	/* a server that is not there */
	uint64_t t0 = cdx_now_us();
	status = tu_run(&out,
	    "%s recall --url ipc://%s/nobody.ipc --collection l2r --queries %s --base %s "
	    "--timeout-ms 300",
	    CANDEX_BIN, dir, qpath, bpath_l2);
	assert_int_equal(status, 1);
	assert_non_null(strstr(out, "not reachable"));
	assert_true(cdx_now_us() - t0 < 10 * 1000000);
	free(out);

	/* usage errors */
	status = tu_run(&out, "%s recall --index %s/index/l2r --base %s", CANDEX_BIN, dir, bpath_l2);
	assert_int_equal(status, 2);
	free(out);
	status = tu_run(&out, "%s recall --index %s/index/ip --queries %s --base %s --refine 2", CANDEX_BIN,
	    dir, qpath, bpath_ip);
	assert_int_equal(status, 1);
	assert_non_null(strstr(out, "no refine store"));
	free(out);
}

static void
test_server(void **state)
{
	(void) state;
	struct st_server s;
	assert_int_equal(st_start(&s, dir, "recall", "--threads 2"), 0);
	json_t *remote = run_recall(NULL, NULL,
	    "--url %s --collection cos --queries %s --base %s --nprobe 2,16 --refine 0,4 --latency-queries "
	    "30",
	    s.url, qpath, bpath_cos);
	json_t *local = run_recall(NULL, NULL,
	    "--index %s/index/cos --queries %s --base %s --nprobe 2,16 --refine 0,4 --latency-queries 30",
	    dir, qpath, bpath_cos);
	assert_non_null(remote);
	assert_non_null(local);
	assert_string_equal(json_string_value(json_object_get(remote, "source")), s.url);
	for (uint32_t np = 2; np <= 16; np *= 8)
		for (int rf = 0; rf <= 4; rf += 4) {
			double a = num(row_at(remote, np, rf), "recall_at_k"),
			       b = num(row_at(local, np, rf), "recall_at_k");
			assert_true(fabs(a - b) < 1e-9);
			assert_true(num(row_at(remote, np, rf), "qps") > 0);
		}
	json_decref(local);

	/* --save through the server: points go to the served version's manifest,
	 * and a server started on it answers recall_target with them (a reload
	 * of an unchanged version keeps the loaded manifest) */
	int status;
	json_t *saved = run_recall(NULL, &status,
	    "--url %s --collection cos --index %s/index/cos --queries %s --base %s --nprobe 1,4,16,64 "
	    "--refine 0,8 "
	    "--latency-queries 20 --target 0.8 --save",
	    s.url, dir, qpath, bpath_cos);
	assert_int_equal(status, 0);
	json_t *pt = json_array_get(json_object_get(saved, "operating_points"), 0);
	uint32_t want = (uint32_t) num(pt, "nprobe");
	double want_rf = num(pt, "refine_factor");
	/* memory per vector of a server: unknown without --index, else the
	 * version's shard files over its items */
	assert_true(json_is_null(
	    json_object_get(json_array_get(json_object_get(remote, "results"), 0), "bytes_per_vector")));
	struct cdx_manifest *m = NULL;
	char vdir[4096], path[4200];
	snprintf(path, sizeof(path), "%s/index/cos", dir);
	assert_int_equal(cdx_version_path_resolve(path, vdir), CDX_OK);
	assert_int_equal(cdx_manifest_load(&m, vdir), CDX_OK);
	uint64_t bytes = 0;
	for (uint32_t i = 0; i < m->nshards; i++)
		bytes += m->shards[i].bytes;
	double bpv = num(json_array_get(json_object_get(saved, "results"), 0), "bytes_per_vector");
	assert_true(fabs(bpv - (double) bytes / (double) m->items) < 0.01);
	cdx_manifest_free(m);
	json_decref(remote);
	json_decref(saved);
	assert_int_equal(st_stop(&s, SIGTERM), 0);

	assert_int_equal(st_start(&s, dir, "recall2", "--threads 2"), 0);
	cdx_client *cl = st_client(s.url, 5000, 0);
	struct cdx_client_error err;
	struct cdx_query q = { .collection = "cos",
		.vectors = queries,
		.nvectors = 1,
		.dim = DIM,
		.k = 10,
		.recall_target = 0.8f };
	struct cdx_result *r = NULL;
	assert_int_equal(cdx_client_search(cl, &q, &r, &err), CDX_OK);
	assert_int_equal(r->nprobe, want);
	assert_true(fabs(r->recall_target - 0.8f) < 1e-6);
	assert_true(fabs(r->refine_factor - want_rf) < 1e-6);
	cdx_result_free(r);
	cdx_client_close(cl);
	assert_int_equal(st_stop(&s, SIGTERM), 0);
}

/* --- online recall ------------------------------------------------------- */

static cdx_collection *
load(const char *coll)
{
	char path[4200];
	snprintf(path, sizeof(path), "%s/index/%s", dir, coll);
	cdx_collection *c = NULL;
	assert_int_equal(cdx_collection_load(&c, path), CDX_OK);
	return c;
}

/* searches every query at nprobe, offers it, returns the hits' ids */
static int64_t *
search_and_offer(cdx_online_recall *o, cdx_collection *c, uint32_t nprobe, uint32_t k)
{
	struct cdx_hit *hits = malloc(NQ * k * sizeof(*hits));
	int64_t *ids = malloc(NQ * k * sizeof(int64_t));
	struct cdx_search_params p = { .k = k, .nprobe = nprobe, .refine_factor = CDX_RECALL_REFINE_NONE };
	assert_int_equal(cdx_collection_search(c, &p, queries, NQ, hits), CDX_OK);
	for (size_t i = 0; i < NQ; i++) {
		cdx_online_recall_offer(o, c, queries + i * DIM, k, hits + i * k, k);
		for (uint32_t j = 0; j < k; j++)
			ids[i * k + j] = hits[i * k + j].id;
	}
	free(hits);
	return ids;
}

static void
test_online_matches_offline(void **state)
{
	(void) state;
	struct cdx_online_recall_config cfg = { .sample_fraction = 1, .cpu_budget = 1, .queue_max = 4096 };
	cdx_online_recall *o = NULL;
	assert_int_equal(cdx_online_recall_start(&o, &cfg), CDX_OK);
	const char *colls[] = { "l2r", "cos" };
	const float *bases[] = { base_l2, base_cos };
	int metrics[] = { CDX_METRIC_L2, CDX_METRIC_COS };
	for (int m = 0; m < 2; m++) {
		cdx_collection *c = load(colls[m]);
		int64_t *ids = search_and_offer(o, c, 4, 10);
		assert_int_equal(cdx_online_recall_flush(o, 20000), CDX_OK);
		struct cdx_online_recall_stats st;
		assert_int_equal(cdx_online_recall_get(o, colls[m], 10, &st), CDX_OK);
		assert_int_equal(st.checked, NQ);
		assert_int_equal(st.exact, 1);

		/* the same hits judged offline against truth from the base vectors */
		float *x = malloc(N * DIM * sizeof(float)), *q = malloc(NQ * DIM * sizeof(float));
		memcpy(x, bases[m], N * DIM * sizeof(float));
		memcpy(q, queries, NQ * DIM * sizeof(float));
		if (metrics[m] == CDX_METRIC_COS) {
			cdx_normalize_rows(x, N, DIM);
			cdx_normalize_rows(q, NQ, DIM);
		}
		struct cdx_recall_space sp = { .metric = metrics[m], .dim = DIM, .nb = N, .base = x };
		struct cdx_truth t;
		assert_int_equal(cdx_truth_compute(&t, &sp, q, NQ, 10, NULL, NULL), CDX_OK);
		double offline = cdx_recall_mean(&t, &sp, q, ids, NQ, 10, 10, 10, CDX_RECALL_EPSILON_DEFAULT);
		/* fp32 refine store: identical; fp16 (cos): within rounding */
		double tol = metrics[m] == CDX_METRIC_L2 ? 1e-9 : 0.01;
		if (fabs(st.recall - offline) > tol)
			fprintf(stderr, "%s: online %.4f offline %.4f\n", colls[m], st.recall, offline);
		assert_true(fabs(st.recall - offline) <= tol);
		assert_true(st.recall > 0.2 && st.recall < 1.0);
		cdx_truth_fini(&t);
		free(x);
		free(q);
		free(ids);
		cdx_collection_unref(c); /* the checker's references keep nothing alive past flush */
	}
	cdx_buf b = { 0 };
	assert_int_equal(cdx_online_recall_render(o, &b), CDX_OK);
	assert_int_equal(cdx_buf_append(&b, "", 1), CDX_OK);
	assert_non_null(strstr(b.data, "candex_online_recall{collection=\"l2r\",k=\"10\"} 0."));
	assert_non_null(
	    strstr(b.data, "candex_online_recall_queries_total{collection=\"cos\",k=\"10\"} 200"));
	assert_non_null(strstr(b.data, "candex_online_recall_truth_exact{collection=\"l2r\"} 1"));
	assert_non_null(strstr(b.data, "# TYPE candex_online_recall gauge"));
	assert_non_null(strstr(b.data, "PQ-reconstructed"));
	cdx_buf_fini(&b);
	cdx_online_recall_stop(o);
}

static void
test_online_sampling_and_queue(void **state)
{
	(void) state;
	cdx_collection *c = load("l2r");
	/* a quarter of the queries, exactly and evenly */
	struct cdx_online_recall_config cfg = { .sample_fraction = 0.25, .cpu_budget = 1, .queue_max = 4096 };
	cdx_online_recall *o = NULL;
	assert_int_equal(cdx_online_recall_start(&o, &cfg), CDX_OK);
	free(search_and_offer(o, c, 8, 10));
	assert_int_equal(cdx_online_recall_flush(o, 20000), CDX_OK);
	struct cdx_online_recall_stats st;
	assert_int_equal(cdx_online_recall_get(o, "l2r", 10, &st), CDX_OK);
	assert_int_equal(st.offered, NQ);
	assert_int_equal(st.sampled, NQ / 4);
	assert_int_equal(st.checked, NQ / 4);
	assert_int_equal(st.dropped, 0);
	cdx_online_recall_stop(o);

	/* a tiny queue behind a slow checker drops, never blocks */
	struct cdx_online_recall_config small = { .sample_fraction = 1, .cpu_budget = 0.01, .queue_max = 4 };
	assert_int_equal(cdx_online_recall_start(&o, &small), CDX_OK);
	uint64_t t0 = cdx_now_us();
	free(search_and_offer(o, c, 8, 10));
	assert_true(cdx_now_us() - t0 < 2000000);
	assert_int_equal(cdx_online_recall_get(o, NULL, 0, &st), CDX_OK);
	assert_true(st.dropped > 0);
	assert_true(st.dropped <= NQ - 4);
	cdx_online_recall_stop(o); /* with samples still queued: frees them */
	cdx_collection_unref(c);
}

static void
test_online_cpu_budget(void **state)
{
	(void) state;
	cdx_collection *c = load("l2r");
	struct cdx_online_recall_config cfg
	    = { .sample_fraction = 1, .cpu_budget = 0.1, .queue_max = 100000 };
	cdx_online_recall *o = NULL;
	assert_int_equal(cdx_online_recall_start(&o, &cfg), CDX_OK);
	/* far more work than 10% of a core can do in the time we watch */
	for (int rep = 0; rep < 50; rep++)
		free(search_and_offer(o, c, 1, 100));
	st_sleep_ms(1500);
	struct cdx_online_recall_stats st;
	assert_int_equal(cdx_online_recall_get(o, NULL, 0, &st), CDX_OK);
	fprintf(stderr, "online budget 0.1: busy %.3f s of %.3f s wall, %llu of %llu checked\n",
	    st.busy_seconds, st.wall_seconds, (unsigned long long) st.checked,
	    (unsigned long long) st.sampled);
	assert_true(st.checked > 0);
	assert_true(st.checked < st.sampled); /* throttled */
	assert_true(st.busy_seconds <= 0.1 * st.wall_seconds * 1.15 + 0.01);
	cdx_online_recall_stop(o);
	cdx_collection_unref(c);
}

static void
test_online_without_refine_and_reload(void **state)
{
	(void) state;
	struct cdx_online_recall_config cfg = { .sample_fraction = 1, .cpu_budget = 1, .queue_max = 4096 };
	cdx_online_recall *o = NULL;
	assert_int_equal(cdx_online_recall_start(&o, &cfg), CDX_OK);
	/* no refine store: the "exact" scan is over PQ reconstructions, which is
	 * what IVF-PQ scores against, so probing every list looks perfect */
	cdx_collection *c = load("ip");
	uint32_t nlist = cdx_collection_manifest(c)->nlist;
	free(search_and_offer(o, c, nlist, 10));
	assert_int_equal(cdx_online_recall_flush(o, 20000), CDX_OK);
	struct cdx_online_recall_stats st;
	assert_int_equal(cdx_online_recall_get(o, "ip", 10, &st), CDX_OK);
	assert_int_equal(st.exact, 0);
	assert_true(st.recall >= 0.99);
	assert_int_equal(st.flat_builds, 1);
	/* the same collection again: the flat copy is reused */
	free(search_and_offer(o, c, 2, 10));
	assert_int_equal(cdx_online_recall_flush(o, 20000), CDX_OK);
	assert_int_equal(cdx_online_recall_get(o, "ip", 10, &st), CDX_OK);
	assert_int_equal(st.flat_builds, 1);
	assert_int_equal(st.checked, 2 * NQ);
	/* a reloaded collection (a new object) gets a fresh copy */
	cdx_collection *c2 = load("ip");
	free(search_and_offer(o, c2, 2, 10));
	assert_int_equal(cdx_online_recall_flush(o, 20000), CDX_OK);
	assert_int_equal(cdx_online_recall_get(o, "ip", 10, &st), CDX_OK);
	assert_int_equal(st.flat_builds, 2);
	cdx_buf b = { 0 };
	assert_int_equal(cdx_online_recall_render(o, &b), CDX_OK);
	assert_int_equal(cdx_buf_append(&b, "", 1), CDX_OK);
	assert_non_null(strstr(b.data, "candex_online_recall_truth_exact{collection=\"ip\"} 0"));
	cdx_buf_fini(&b);
	cdx_online_recall_stop(o);
	cdx_collection_unref(c);
	cdx_collection_unref(c2);
}

/* metric_value returns the value of the /metrics line starting with name
 * (with its labels), or NAN if there is none. */
static double
metric_value(const char *body, const char *name)
{
	size_t n = strlen(name);
	for (const char *p = body; p != NULL && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
		if (strncmp(p, name, n) == 0 && p[n] == ' ')
			return strtod(p + n + 1, NULL);
	return NAN;
}

/* the server's online recall, read from /metrics once q queries are checked */
static char *
metrics_after(int port, double checked)
{
	char *body = NULL;
	for (int i = 0; i < 2000; i++) {
		assert_int_equal(st_http_get(port, "/metrics", &body), 200);
		if (metric_value(body, "candex_online_recall_queries_total{collection=\"l2r\",k=\"10\"}")
		    >= checked)
			return body;
		free(body);
		st_sleep_ms(10);
	}
	fail_msg("the online checker did not check %g queries", checked);
	return NULL;
}

/* Online recall in a real server: every query re-run, and the gauge in
 * /metrics equals the offline figure for the very hits the server returned
 * (fp32 refine store: the truth is exact); then, with a CPU budget of 0.1
 * of a core and far more work than that, the checker's busy time in
 * /metrics stays within the budget of the server's lifetime. */
static void
test_online_server(void **state)
{
	(void) state;
	struct st_server srv;
	int port = st_free_port();
	char extra[256];
	snprintf(extra, sizeof(extra),
	    "--threads 2 --online-recall-fraction 1 --online-recall-cpu 1 --http-listen 127.0.0.1:%d", port);
	assert_int_equal(st_start(&srv, dir, "online", extra), 0);
	cdx_client *cl = st_client(srv.url, 10000, 0);
	struct cdx_query q = { .collection = "l2r",
		.vectors = queries,
		.nvectors = NQ,
		.dim = DIM,
		.k = 10,
		.nprobe = 2,
		.refine_factor = CDX_RECALL_REFINE_NONE };
	struct cdx_result *r = st_search(cl, &q);
	assert_int_equal(r->nqueries, NQ);
	int64_t *ids = malloc(NQ * 10 * sizeof(int64_t));
	for (size_t i = 0; i < NQ; i++)
		for (uint32_t j = 0; j < 10; j++)
			ids[i * 10 + j] = j < r->queries[i].nhits ? r->queries[i].hits[j].id : -1;
	cdx_result_free(r);
	char *body = metrics_after(port, NQ);
	double online = metric_value(body, "candex_online_recall{collection=\"l2r\",k=\"10\"}");
	assert_true(metric_value(body, "candex_online_recall_truth_exact{collection=\"l2r\"}") == 1);
	assert_true(metric_value(body, "candex_online_recall_dropped_total") == 0);
	free(body);

	struct cdx_recall_space sp = { .metric = CDX_METRIC_L2, .dim = DIM, .nb = N, .base = base_l2 };
	struct cdx_truth t;
	assert_int_equal(cdx_truth_compute(&t, &sp, queries, NQ, 10, NULL, NULL), CDX_OK);
	double offline = cdx_recall_mean(&t, &sp, queries, ids, NQ, 10, 10, 10, CDX_RECALL_EPSILON_DEFAULT);
	cdx_truth_fini(&t);
	free(ids);
	if (fabs(online - offline) > 1e-6)
		fprintf(stderr, "online %.6f, offline %.6f\n", online, offline);
	assert_true(fabs(online - offline) <= 1e-6);
	assert_true(online > 0.2 && online < 0.95); /* nprobe 2 misses some */
	cdx_client_close(cl);
	assert_int_equal(st_stop(&srv, SIGTERM), 0);

	/* the budget */
	snprintf(extra, sizeof(extra),
	    "--threads 2 --online-recall-fraction 1 --online-recall-cpu 0.1 --http-listen 127.0.0.1:%d",
	    port = st_free_port());
	uint64_t t0 = cdx_now_us();
	assert_int_equal(st_start(&srv, dir, "online-budget", extra), 0);
	cl = st_client(srv.url, 10000, 0);
	q.k = 100;
	q.nprobe = 1;
	/* traffic for 1.5 s: the checker could be busy all along without its
	 * budget, and the queue (256) must overflow rather than block */
	int requests = 0;
	while (cdx_now_us() - t0 < 1500000 || requests < 10) {
		cdx_result_free(st_search(cl, &q));
		requests++;
	}
	assert_int_equal(st_http_get(port, "/metrics", &body), 200);
	double wall = (double) (cdx_now_us() - t0) / 1e6;
	double busy = metric_value(body, "candex_online_recall_busy_seconds_total");
	double sampled = metric_value(body, "candex_online_recall_sampled_total");
	double dropped = metric_value(body, "candex_online_recall_dropped_total");
	double depth = metric_value(body, "candex_online_recall_queue_depth");
	double checked
	    = metric_value(body, "candex_online_recall_queries_total{collection=\"l2r\",k=\"100\"}");
	fprintf(stderr,
	    "server online recall, budget 0.1: busy %.3f s of at most %.3f s wall; %g sampled, %g "
	    "dropped, %g checked, %g waiting\n",
	    busy, wall, sampled, dropped, checked, depth);
	free(body);
	assert_true(sampled == (double) requests * NQ);
	assert_true(dropped > 0); /* dropped, never blocked */
	assert_true(depth > 0);   /* work left: the budget, not the traffic, bounds it */
	assert_true(checked > 0);
	assert_true(busy <= 0.1 * wall * 1.15 + 0.01);
	cdx_client_close(cl);
	assert_int_equal(st_stop(&srv, SIGTERM), 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_flat_is_exact),
		cmocka_unit_test(test_sweep_l2),
		cmocka_unit_test(test_sweep_cos),
		cmocka_unit_test(test_sweep_ip),
		cmocka_unit_test(test_monotonic_all_metrics),
		cmocka_unit_test(test_targets_and_save),
		cmocka_unit_test(test_ground_truth_file),
		cmocka_unit_test(test_truth_cache),
		cmocka_unit_test(test_outputs),
		cmocka_unit_test(test_progress),
		cmocka_unit_test(test_bad_input),
		cmocka_unit_test(test_server),
		cmocka_unit_test(test_online_matches_offline),
		cmocka_unit_test(test_online_sampling_and_queue),
		cmocka_unit_test(test_online_cpu_budget),
		cmocka_unit_test(test_online_without_refine_and_reload),
		cmocka_unit_test(test_online_server),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
