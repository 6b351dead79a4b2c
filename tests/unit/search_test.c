/*
 * search_test.c — loading and searching versions written directly with the
 * shard writer and the Faiss C API (independent of the builder), checked
 * against brute force: exactness of flat and full-probe IVF paths, per-request
 * nprobe equal to Faiss's own nprobe search, concurrency with mixed nprobe,
 * multi-shard merge, exclusions, refine, cosine, keys, corruption.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/IndexIVF_c.h>
#include <faiss/c_api/clone_index_c.h>
#include <faiss/c_api/index_factory_c.h>
#include <faiss/c_api/index_io_c.h>

#include "faissx/faissx.h"
#include "search/search.h"
#include "shard/manifest.h"
#include "shard/refine.h"
#include "shard/transform.h"

#define DIM 16
#define N   4000
#define NQ  50

static float base[N * DIM], queries[NQ * DIM];

struct fixture {
	const char *factory;
	int metric;
	uint32_t nshards;
	int refine;
	int keys;
	int mips; /* ip: index the vectors reduced to L2 (shard/transform.h) */
};

#define MIPS_DIM (DIM + 8) /* DIM + 1, padded to a multiple of 8 */

/* Writes a version "v1" of collection "c" under root and publishes it. */
static void
write_version(const char *root, const struct fixture *fx)
{
	char cdir[4096], vdir[4096], path[4200];
	assert_int_equal(cdx_pathf(cdir, sizeof(cdir), "%s/c", root), CDX_OK);
	assert_int_equal(cdx_pathf(vdir, sizeof(vdir), "%s/v1", cdir), CDX_OK);
	assert_int_equal(cdx_mkdir_p(vdir, 0755), CDX_OK);

	float *x = malloc(sizeof(base));
	memcpy(x, base, sizeof(base));
	if (fx->metric == CDX_METRIC_COS)
		cdx_normalize_rows(x, N, DIM);
	/* what Faiss indexes: x itself, or x reduced to L2 */
	struct cdx_vector_map vm = { fx->metric, CDX_TRANSFORM_NONE, DIM, DIM, 0 };
	if (fx->mips) {
		vm.transform = CDX_TRANSFORM_MIPS_L2;
		vm.index_dim = MIPS_DIM;
		for (size_t i = 0; i < N; i++) {
			double s = 0;
			for (size_t j = 0; j < DIM; j++)
				s += (double) x[i * DIM + j] * x[i * DIM + j];
			if (s > vm.max_norm2)
				vm.max_norm2 = s;
		}
	}
	float *xi = malloc((size_t) N * vm.index_dim * sizeof(float));
	cdx_map_items(&vm, x, N, xi);
	FaissIndex *trained;
	assert_int_equal(faiss_index_factory(&trained, (int) vm.index_dim, fx->factory,
	                     fx->metric == CDX_METRIC_L2 || fx->mips ? METRIC_L2 : METRIC_INNER_PRODUCT),
	    0);
	assert_int_equal(faiss_Index_train(trained, N, xi), 0);

	struct cdx_manifest m = { .format_version = CDX_MANIFEST_FORMAT_VERSION,
		.metric = fx->metric,
		.dim = DIM,
		.items = N,
		.nshards = fx->nshards,
		.refine = fx->refine };
	snprintf(m.collection, sizeof(m.collection), "c");
	snprintf(m.version, sizeof(m.version), "v1");
	snprintf(m.factory, sizeof(m.factory), "%s", fx->factory);
	snprintf(m.model_version, sizeof(m.model_version), "test-model");
	m.transform = vm.transform;
	m.index_dim = vm.index_dim;
	m.max_norm2 = vm.max_norm2;
	m.default_nprobe = 4;
	FaissIndexIVF *tivf = faiss_IndexIVF_cast(trained);
	m.nlist = tivf ? (uint32_t) faiss_IndexIVF_nlist(tivf) : 0;
	m.shards = calloc(fx->nshards, sizeof(*m.shards));
	float vmin[DIM], vdiff[DIM];
	cdx_sq8_train(x, N, DIM, vmin, vdiff);

	for (uint32_t s = 0; s < fx->nshards; s++) {
		/* rows of this shard, in input order; ids = input row numbers */
		int64_t *ids = malloc(N * sizeof(int64_t));
		float *rows = malloc(sizeof(base)),
		      *irows = malloc((size_t) N * vm.index_dim * sizeof(float));
		size_t n = 0;
		for (size_t i = 0; i < N; i++) {
			if (cdx_mix64(i) % fx->nshards != s)
				continue;
			ids[n] = (int64_t) i;
			memcpy(rows + n * DIM, x + i * DIM, DIM * sizeof(float));
			memcpy(irows + n * vm.index_dim, xi + i * vm.index_dim, vm.index_dim * sizeof(float));
			n++;
		}
		FaissIndex *idx;
		assert_int_equal(cdx_fx_clone(trained, &idx), 0); /* Faiss cannot clone fast-scan */
		assert_int_equal(faiss_Index_add(idx, (idx_t) n, irows), 0);
		free(irows);

		struct cdx_shard_info info = { .metric = (uint32_t) fx->metric,
			.dim = DIM,
			.shard_index = s,
			.shard_count = fx->nshards,
			.rows = n };
		snprintf(info.collection, sizeof(info.collection), "c");
		snprintf(m.shards[s].file, sizeof(m.shards[s].file), "shard-%u.cdx", s);
		assert_int_equal(cdx_pathf(path, sizeof(path), "%s/%s", vdir, m.shards[s].file), CDX_OK);
		cdx_shard_writer *w;
		assert_int_equal(cdx_shard_writer_open(&w, path, &info), CDX_OK);

		char *blob;
		size_t bloblen;
		FILE *mf = open_memstream(&blob, &bloblen);
		assert_int_equal(faiss_write_index(idx, mf), 0);
		fclose(mf);
		assert_int_equal(
		    cdx_shard_writer_begin_part(w, CDX_PART_FAISS, CDX_PART_FLAG_REQUIRED), CDX_OK);
		assert_int_equal(cdx_shard_writer_write(w, blob, bloblen), CDX_OK);
		assert_int_equal(cdx_shard_writer_end_part(w), CDX_OK);
		free(blob);

		cdx_buf b = { 0 };
		assert_int_equal(cdx_ids_encode(ids, n, &b), CDX_OK);
		assert_int_equal(
		    cdx_shard_writer_begin_part(w, CDX_PART_IDS, CDX_PART_FLAG_REQUIRED), CDX_OK);
		assert_int_equal(cdx_shard_writer_write(w, b.data, b.len), CDX_OK);
		assert_int_equal(cdx_shard_writer_end_part(w), CDX_OK);
		b.len = 0;
		if (fx->keys) {
			for (size_t i = 0; i < n; i++) {
				char key[64];
				int kl = snprintf(key, sizeof(key), "spotify:track:%lld", (long long) ids[i]);
				assert_int_equal(cdx_keys_encode_one(key, (size_t) kl, &b), CDX_OK);
			}
			assert_int_equal(cdx_shard_writer_begin_part(w, CDX_PART_KEYS, 0), CDX_OK);
			assert_int_equal(cdx_shard_writer_write(w, b.data, b.len), CDX_OK);
			assert_int_equal(cdx_shard_writer_end_part(w), CDX_OK);
			b.len = 0;
		}
		if (fx->refine != CDX_REFINE_NONE) {
			assert_int_equal(
			    cdx_refine_header_write(&b, fx->refine, DIM, n, vmin, vdiff), CDX_OK);
			struct cdx_refine_store st = { .kind = fx->refine,
				.dim = DIM,
				.rows = n,
				.vmin = vmin,
				.vdiff = vdiff,
				.bytes_per_vector = cdx_refine_bytes_per_vector(fx->refine, DIM) };
			size_t off = b.len;
			assert_int_equal(cdx_buf_reserve(&b, n * st.bytes_per_vector), CDX_OK);
			cdx_refine_encode(&st, rows, n, (uint8_t *) b.data + off);
			b.len += n * st.bytes_per_vector;
			assert_int_equal(cdx_shard_writer_begin_part(w, CDX_PART_REFINE, 0), CDX_OK);
			assert_int_equal(cdx_shard_writer_write(w, b.data, b.len), CDX_OK);
			assert_int_equal(cdx_shard_writer_end_part(w), CDX_OK);
		}
		cdx_buf_fini(&b);
		assert_int_equal(cdx_shard_writer_commit(w, NULL), CDX_OK);

		char *data;
		size_t len;
		assert_int_equal(cdx_read_file(path, &data, &len), CDX_OK);
		m.shards[s].bytes = len;
		m.shards[s].rows = n;
		m.shards[s].xxh64 = cdx_xxh64(data, len, 0);
		free(data);
		faiss_Index_free(idx);
		free(ids);
		free(rows);
	}
	assert_int_equal(cdx_manifest_save(&m, vdir), CDX_OK);
	assert_int_equal(cdx_version_publish(cdir, "v1"), CDX_OK);
	free(m.shards);
	faiss_Index_free(trained);
	free(x);
	free(xi);
}

static cdx_collection *
load_fixture(char **dir, const struct fixture *fx)
{
	*dir = tu_tmpdir("search");
	write_version(*dir, fx);
	char path[4096];
	snprintf(path, sizeof(path), "%s/c", *dir);
	cdx_collection *c = NULL;
	int rc = cdx_collection_load(&c, path);
	if (rc != CDX_OK)
		fprintf(stderr, "load: %s\n", cdx_last_error());
	assert_int_equal(rc, CDX_OK);
	return c;
}

/* fraction of exact top-k ids found in hits (k per query) */
static double
recall_vs_exact(const struct cdx_hit *hits, size_t k, int metric)
{
	float *x = malloc(sizeof(base)), *q = malloc(sizeof(queries));
	memcpy(x, base, sizeof(base));
	memcpy(q, queries, sizeof(queries));
	if (metric == CDX_METRIC_COS) {
		cdx_normalize_rows(x, N, DIM);
		cdx_normalize_rows(q, NQ, DIM);
	}
	size_t found = 0;
	int64_t *truth = malloc(k * sizeof(int64_t));
	for (size_t i = 0; i < NQ; i++) {
		tu_exact_knn(x, N, DIM, q + i * DIM, k, metric != CDX_METRIC_L2, truth);
		for (size_t a = 0; a < k; a++)
			for (size_t b = 0; b < k; b++)
				if (hits[i * k + a].id == truth[b])
					found++;
	}
	free(truth);
	free(x);
	free(q);
	return (double) found / (double) (NQ * k);
}

static void
run_search(cdx_collection *c, uint32_t k, uint32_t nprobe, float refine, struct cdx_hit *hits)
{
	struct cdx_search_params p = { .k = k, .nprobe = nprobe, .refine_factor = refine };
	int rc = cdx_collection_search(c, &p, queries, NQ, hits);
	if (rc != CDX_OK)
		fprintf(stderr, "search: %s\n", cdx_last_error());
	assert_int_equal(rc, CDX_OK);
}

static void
test_exact_paths(void **state)
{
	(void) state;
	/* Flat, and IVF,Flat probing every list, are exact: recall 1.0 for each
	 * metric, across 3 shards (so the merge is exercised too). */
	const struct fixture fxs[] = {
		{ "Flat", CDX_METRIC_L2, 3, 0, 0, 0 },
		{ "IVF16,Flat", CDX_METRIC_L2, 3, 0, 0, 0 },
		{ "IVF16,Flat", CDX_METRIC_IP, 3, 0, 0, 0 },
		{ "IVF16,Flat", CDX_METRIC_COS, 1, 0, 0, 0 },
	};
	struct cdx_hit hits[NQ * 10];
	for (size_t i = 0; i < CDX_ARRAY_LEN(fxs); i++) {
		char *dir;
		cdx_collection *c = load_fixture(&dir, &fxs[i]);
		run_search(c, 10, 16, 0, hits);
		double r = recall_vs_exact(hits, 10, fxs[i].metric);
		if (r < 0.999)
			fprintf(stderr, "%s %s: recall %.4f\n", fxs[i].factory,
			    cdx_metric_name(fxs[i].metric), r);
		assert_true(r >= 0.999);
		/* scores ordered best first */
		for (size_t q = 0; q < NQ; q++)
			for (size_t j = 1; j < 10; j++) {
				if (fxs[i].metric == CDX_METRIC_L2)
					assert_true(hits[q * 10 + j - 1].score <= hits[q * 10 + j].score);
				else
					assert_true(hits[q * 10 + j - 1].score >= hits[q * 10 + j].score);
			}
		cdx_collection_unref(c);
		tu_rmdir(dir);
	}
}

/* Our per-request nprobe path must return what Faiss's own search returns
 * with the index-wide nprobe set to the same value: through
 * search_preassigned, and through fast-scan views (plain and by residual). */
static void
test_nprobe_matches_faiss(void **state)
{
	(void) state;
	static const char *factories[] = { "IVF32,PQ4x6np", "IVF32,PQ8x4fs", "IVF32,PQ8x4fsr" };
	for (size_t fi = 0; fi < CDX_ARRAY_LEN(factories); fi++) {
		const struct fixture fx = { factories[fi], CDX_METRIC_L2, 1, 0, 0, 0 };
		char *dir;
		cdx_collection *c = load_fixture(&dir, &fx);
		char shard[4200];
		snprintf(shard, sizeof(shard), "%s/shard-0.cdx", cdx_collection_dir(c));
		cdx_shard *s;
		assert_int_equal(cdx_shard_open(&s, shard), CDX_OK);
		FILE *f;
		assert_int_equal(cdx_shard_open_part_stream(s, CDX_PART_FAISS, &f), CDX_OK);
		FaissIndex *ref;
		assert_int_equal(faiss_read_index(f, 0, &ref), 0);
		fclose(f);
		cdx_shard_close(s);

		uint32_t probes[] = { 1, 3, 8, 32 };
		struct cdx_hit hits[NQ * 10];
		float D[NQ * 10];
		idx_t I[NQ * 10];
		for (size_t pi = 0; pi < CDX_ARRAY_LEN(probes); pi++) {
			run_search(c, 10, probes[pi], 0, hits);
			faiss_IndexIVF_set_nprobe(faiss_IndexIVF_cast(ref), probes[pi]);
			assert_int_equal(faiss_Index_search(ref, NQ, queries, 10, D, I), 0);
			/* the same ids (1 shard: row == id), or a tie: the same
			 * distance (fast-scan's 16-bit distances tie often, and
			 * the scan candex uses breaks ties in another order) */
			size_t same = 0;
			for (size_t i = 0; i < NQ * 10; i++)
				same += hits[i].id == I[i]
				    || fabsf(hits[i].score - D[i]) <= 1e-5f * (1.0f + fabsf(D[i]));
			if (same < NQ * 10 * 99 / 100)
				fprintf(stderr, "%s nprobe %u: %zu of %d the same\n", factories[fi],
				    probes[pi], same, NQ * 10);
			assert_true(same >= NQ * 10 * 99 / 100);
		}
		faiss_Index_free(ref);
		cdx_collection_unref(c);
		tu_rmdir(dir);
	}
}

struct worker_arg {
	cdx_collection *c;
	uint32_t nprobe;
	const struct cdx_hit *expect;
	int mismatches;
};

/* Same ids in the same order; scores equal up to float rounding (BLAS may
 * block the coarse quantizer's product differently on another thread, and
 * IVF-PQ adds the coarse distance into each score). Interference between
 * requests would change which lists are scanned, hence the ids. */
static int
same_results(const struct cdx_hit *a, const struct cdx_hit *b, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (a[i].id != b[i].id || fabsf(a[i].score - b[i].score) > 1e-4f * (1.0f + fabsf(a[i].score)))
			return 0;
	return 1;
}

static void *
worker(void *p)
{
	struct worker_arg *a = p;
	struct cdx_hit hits[NQ * 10];
	for (int iter = 0; iter < 30; iter++) {
		struct cdx_search_params sp = { .k = 10, .nprobe = a->nprobe };
		if (cdx_collection_search(a->c, &sp, queries, NQ, hits) != CDX_OK
		    || !same_results(hits, a->expect, NQ * 10))
			a->mismatches++;
	}
	return NULL;
}

/* Concurrent searches with different nprobe each get their serial answer:
 * search_preassigned shares nothing mutable; fast-scan searches each use
 * their own view of the shared index. */
static void
test_concurrent_nprobe(void **state)
{
	(void) state;
	static const char *factories[] = { "IVF32,PQ4x6np", "IVF32,PQ8x4fs" };
	for (size_t fi = 0; fi < CDX_ARRAY_LEN(factories); fi++) {
		const struct fixture fx = { factories[fi], CDX_METRIC_IP, 2, 0, 0, 0 };
		char *dir;
		cdx_collection *c = load_fixture(&dir, &fx);
		enum { NT = 4 };
		static struct cdx_hit expect[NT][NQ * 10];
		uint32_t probes[NT] = { 1, 2, 7, 32 };
		for (int t = 0; t < NT; t++)
			run_search(c, 10, probes[t], 0, expect[t]);
		/* different nprobe give different answers, or the test proves nothing */
		assert_true(memcmp(expect[0], expect[3], sizeof(expect[0])) != 0);
		pthread_t th[NT];
		struct worker_arg args[NT];
		for (int t = 0; t < NT; t++) {
			args[t] = (struct worker_arg) { c, probes[t], expect[t], 0 };
			pthread_create(&th[t], NULL, worker, &args[t]);
		}
		/* join every thread before asserting: they read this frame's arrays */
		for (int t = 0; t < NT; t++)
			pthread_join(th[t], NULL);
		for (int t = 0; t < NT; t++)
			assert_int_equal(args[t].mismatches, 0);
		cdx_collection_unref(c);
		tu_rmdir(dir);
	}
}

static void
test_parallel_batch_equals_serial(void **state)
{
	(void) state;
	const struct fixture fx = { "IVF32,PQ4x6np", CDX_METRIC_L2, 3, 0, 0, 0 };
	char *dir;
	cdx_collection *c = load_fixture(&dir, &fx);
	static struct cdx_hit a[NQ * 10], b[NQ * 10];
	struct cdx_search_params p = { .k = 10, .nprobe = 5 };
	assert_int_equal(cdx_collection_search(c, &p, queries, NQ, a), CDX_OK);
	p.parallel = 1;
	assert_int_equal(cdx_collection_search(c, &p, queries, NQ, b), CDX_OK);
	assert_true(same_results(a, b, NQ * 10));
	cdx_collection_unref(c);
	tu_rmdir(dir);
}

static void
test_refine_raises_recall(void **state)
{
	(void) state;
	const int kinds[] = { CDX_REFINE_FP32, CDX_REFINE_FP16, CDX_REFINE_SQ8 };
	for (size_t i = 0; i < CDX_ARRAY_LEN(kinds); i++) {
		const struct fixture fx = { "IVF16,PQ2x4np", CDX_METRIC_L2, 2, kinds[i], 0, 0 };
		char *dir;
		cdx_collection *c = load_fixture(&dir, &fx);
		static struct cdx_hit hits[NQ * 10];
		run_search(c, 10, 16, 0, hits);
		double plain = recall_vs_exact(hits, 10, CDX_METRIC_L2);
		run_search(c, 10, 16, 16, hits);
		double refined = recall_vs_exact(hits, 10, CDX_METRIC_L2);
		assert_true(refined > plain + 0.1);
		assert_true(refined >= (kinds[i] == CDX_REFINE_SQ8 ? 0.85 : 0.95));
		cdx_collection_unref(c);
		tu_rmdir(dir);
	}
}

/* run_k searches every query at k with explicit settings (or the
 * collection's defaults when nprobe is 0) into hits (NQ x k). */
static void
run_k(cdx_collection *c, uint32_t k, uint32_t nprobe, float refine, struct cdx_hit *hits)
{
	run_search(c, k, nprobe, refine, hits);
}

static void
test_same_answer_at_every_k(void **state)
{
	(void) state;
	/* Coarse PQ codes re-ranked exactly (fp32) and with fp16: within one k
	 * tier (1..10, 11..100), the top j of a request for k equals the answer
	 * for j, ids and scores, at explicit settings and at the collection's
	 * defaults. Before the k tier fixed the candidates, k = 1 re-ranked 2
	 * candidates and k = 10 re-ranked 20, and the answers differed. */
	const int kinds[] = { CDX_REFINE_FP32, CDX_REFINE_FP16 };
	for (size_t kind = 0; kind < CDX_ARRAY_LEN(kinds); kind++) {
		const struct fixture fx = { "IVF16,PQ2x4np", CDX_METRIC_L2, 2, kinds[kind], 0, 0 };
		char *dir;
		cdx_collection *c = load_fixture(&dir, &fx);
		static struct cdx_hit big[NQ * 100], small[NQ * 100];
		const uint32_t tiers[][2] = { { 1, 10 }, { 11, 100 } };
		for (int defaults = 0; defaults < 2; defaults++) {
			uint32_t nprobe = defaults ? 0 : 8;
			float refine = defaults ? 0 : 2;
			size_t differ = 0;
			for (size_t t = 0; t < CDX_ARRAY_LEN(tiers); t++) {
				uint32_t lo = tiers[t][0], hi = tiers[t][1];
				run_k(c, hi, nprobe, refine, big);
				for (uint32_t j = lo; j < hi; j += (hi - lo) / 4 + 1) {
					run_k(c, j, nprobe, refine, small);
					for (size_t q = 0; q < NQ; q++)
						for (size_t r = 0; r < j; r++) {
							const struct cdx_hit *a = &big[q * hi + r],
							                     *b = &small[q * j + r];
							differ += a->id != b->id || a->score != b->score;
						}
				}
			}
			if (differ > 0)
				fprintf(stderr, "refine %s, %s settings: %zu hits differ across k\n",
				    cdx_refine_name(kinds[kind]), defaults ? "default" : "explicit", differ);
			assert_int_equal(differ, 0);
		}
		cdx_collection_unref(c);
		tu_rmdir(dir);
	}
}

static void
test_ip_reduced_to_l2(void **state)
{
	(void) state;
	/* Inner product indexed as L2 over [x, sqrt(max - |x|^2)]: with every
	 * list probed (IVF,Flat) the answers are exact, and every score is the
	 * true inner product, from the index's distance (no refine) and from
	 * the refine store, across shards. */
	const int refines[] = { CDX_REFINE_NONE, CDX_REFINE_FP32 };
	for (size_t r = 0; r < CDX_ARRAY_LEN(refines); r++) {
		const struct fixture fx = { "IVF16,Flat", CDX_METRIC_IP, 2, refines[r], 0, 1 };
		char *dir;
		cdx_collection *c = load_fixture(&dir, &fx);
		assert_int_equal(cdx_collection_manifest(c)->transform, CDX_TRANSFORM_MIPS_L2);
		static struct cdx_hit hits[NQ * 10];
		run_search(c, 10, 16, refines[r] ? 2 : 0, hits);
		double rec = recall_vs_exact(hits, 10, CDX_METRIC_IP);
		assert_true(rec >= 0.999);
		double worst = 0;
		for (size_t q = 0; q < NQ; q++)
			for (size_t j = 0; j < 10; j++) {
				const float *v = base + hits[q * 10 + j].id * DIM;
				double ip = 0;
				for (size_t d = 0; d < DIM; d++)
					ip += (double) v[d] * queries[q * DIM + d];
				double err = fabs(hits[q * 10 + j].score - ip) / (1 + fabs(ip));
				if (err > worst)
					worst = err;
			}
		print_message("ip as L2, refine %s: recall %.4f, worst score error %.2g\n",
		    cdx_refine_name(refines[r]), rec, worst);
		assert_true(worst < 1e-4);
		cdx_collection_unref(c);
		tu_rmdir(dir);
	}
}

static void
test_keys_exclusions_and_errors(void **state)
{
	(void) state;
	const struct fixture fx = { "IVF16,Flat", CDX_METRIC_COS, 3, CDX_REFINE_NONE, 1, 0 };
	char *dir;
	cdx_collection *c = load_fixture(&dir, &fx);
	uint32_t shard, row;
	int64_t id;
	assert_int_equal(cdx_collection_find_key(c, "spotify:track:123", &shard, &row, &id), CDX_OK);
	assert_int_equal(id, 123);
	assert_string_equal(cdx_collection_key(c, shard, row), "spotify:track:123");
	assert_int_equal(cdx_collection_find_key(c, "spotify:track:nope", &shard, &row, &id), CDX_ENOTFOUND);
	uint32_t s2, r2;
	assert_int_equal(cdx_collection_find_id(c, 123, &s2, &r2), CDX_OK);
	assert_true(s2 == shard && r2 == row);

	/* an item's own vector finds the item first (cosine) */
	float v[DIM];
	assert_int_equal(cdx_collection_vector(c, shard, row, v), CDX_OK);
	struct cdx_hit hits[10];
	struct cdx_search_params p = { .k = 10, .nprobe = 16 };
	assert_int_equal(cdx_collection_search(c, &p, v, 1, hits), CDX_OK);
	assert_int_equal(hits[0].id, 123);
	assert_true(fabsf(hits[0].score - 1.0f) < 0.02f);

	/* excluding it (by key and by id) still returns k results */
	const char *ek[] = { "spotify:track:123" };
	int64_t eid[] = { hits[1].id };
	int64_t second = hits[1].id;
	p.exclude_keys = ek;
	p.n_exclude_keys = 1;
	p.exclude_ids = eid;
	p.n_exclude_ids = 1;
	assert_int_equal(cdx_collection_search(c, &p, v, 1, hits), CDX_OK);
	for (int j = 0; j < 10; j++) {
		assert_true(hits[j].id >= 0);
		assert_true(hits[j].id != 123 && hits[j].id != second);
	}

	/* bad input */
	struct cdx_search_params bad = { .k = 0 };
	assert_int_equal(cdx_collection_search(c, &bad, v, 1, hits), CDX_EINVAL);
	v[3] = NAN;
	p = (struct cdx_search_params) { .k = 10 };
	assert_int_equal(cdx_collection_search(c, &p, v, 1, hits), CDX_ENONFINITE);
	p.refine_factor = 4;
	v[3] = 0;
	assert_int_equal(cdx_collection_search(c, &p, v, 1, hits), CDX_EINVAL); /* no refine store */
	/* k larger than the collection: padded with -1 */
	static struct cdx_hit many[N + 10];
	p = (struct cdx_search_params) { .k = N + 10, .nprobe = 16 };
	assert_int_equal(cdx_collection_search(c, &p, v, 1, many), CDX_OK);
	assert_true(many[N - 1].id >= 0);
	assert_int_equal(many[N].id, -1);
	cdx_collection_unref(c);
	tu_rmdir(dir);
}

static void
test_corrupt_shard_refused(void **state)
{
	(void) state;
	const struct fixture fx = { "IVF16,Flat", CDX_METRIC_L2, 2, 0, 0, 0 };
	char *dir = tu_tmpdir("search");
	write_version(dir, &fx);
	char shard[4200], cdir[4200];
	snprintf(shard, sizeof(shard), "%s/c/v1/shard-1.cdx", dir);
	snprintf(cdir, sizeof(cdir), "%s/c", dir);
	FILE *f = fopen(shard, "r+b");
	assert_non_null(f);
	fseek(f, 5000, SEEK_SET);
	int ch = fgetc(f);
	fseek(f, 5000, SEEK_SET);
	fputc(ch ^ 0x40, f);
	fclose(f);
	cdx_collection *c = NULL;
	assert_int_equal(cdx_collection_load(&c, cdir), CDX_ECORRUPT);
	assert_null(c);
	assert_non_null(strstr(cdx_last_error(), "shard-1.cdx"));
	tu_rmdir(dir);
}

static int
setup(void **state)
{
	(void) state;
	tu_clustered(base, N, DIM, 20, 7);
	tu_clustered(queries, NQ, DIM, 20, 7); /* same centres, other points */
	cdx_rng r;
	cdx_rng_seed(&r, 99);
	for (size_t i = 0; i < NQ * DIM; i++)
		queries[i] += (float) cdx_rng_normal(&r) * 0.5f;
	return 0;
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_exact_paths),
		cmocka_unit_test(test_nprobe_matches_faiss),
		cmocka_unit_test(test_concurrent_nprobe),
		cmocka_unit_test(test_parallel_batch_equals_serial),
		cmocka_unit_test(test_refine_raises_recall),
		cmocka_unit_test(test_same_answer_at_every_k),
		cmocka_unit_test(test_ip_reduced_to_l2),
		cmocka_unit_test(test_keys_exclusions_and_errors),
		cmocka_unit_test(test_corrupt_shard_refused),
	};
	return cmocka_run_group_tests(tests, setup, NULL);
}
