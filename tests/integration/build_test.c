/*
 * build_test.c — `candex build` end to end through the real CLI: every
 * metric and refine kind, keys and ids, shards, small-N fallbacks,
 * determinism, each bad input (clear error, nothing published), disk
 * full, interrupted and killed builds, gc, and the distributed steps.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/capability.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/index_io_c.h>

#include "builder/build.h"
#include "search/search.h"

static char *root;

static int
setup(void **state)
{
	(void) state;
	root = tu_tmpdir("build");
	return root ? 0 : -1;
}

static int
teardown(void **state)
{
	(void) state;
	tu_rmdir(root);
	return 0;
}

static char *pathf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static char *
pathf(const char *fmt, ...)
{
	char *p = NULL;
	va_list ap;
	va_start(ap, fmt);
	assert_true(vasprintf(&p, fmt, ap) >= 0);
	va_end(ap);
	return p;
}

/* gen writes n x dim clustered vectors to root/name and returns them. */
static float *
gen(const char *name, size_t n, size_t dim, uint64_t seed)
{
	float *x = malloc(n * dim * sizeof(float));
	assert_non_null(x);
	tu_clustered(x, n, dim, 20, seed);
	char *p = pathf("%s/%s", root, name);
	assert_int_equal(tu_write_fvecs(p, x, n, dim), 0);
	free(p);
	return x;
}

/* build runs `candex build <args>`, returns its exit status; output kept in *out. */
static int build(char **out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int
build(char **out, const char *fmt, ...)
{
	char *args = NULL;
	va_list ap;
	va_start(ap, fmt);
	assert_true(vasprintf(&args, fmt, ap) >= 0);
	va_end(ap);
	char *o = NULL;
	int rc = tu_run(&o, "%s build %s", CANDEX_BIN, args);
	if (getenv("CANDEX_TEST_VERBOSE"))
		fprintf(stderr, "build %s -> %d\n%s\n", args, rc, o);
	free(args);
	if (out)
		*out = o;
	else
		free(o);
	return rc;
}

static void build_ok(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void
build_ok(const char *fmt, ...)
{
	char *args = NULL;
	va_list ap;
	va_start(ap, fmt);
	assert_true(vasprintf(&args, fmt, ap) >= 0);
	va_end(ap);
	char *o = NULL;
	int rc = build(&o, "%s", args);
	if (rc != 0)
		fprintf(stderr, "candex build %s failed (%d):\n%s\n", args, rc, o);
	assert_int_equal(rc, 0);
	free(o);
	free(args);
}

/* self_hits: how many of the first nq base rows find themselves at rank 0. */
static int
self_hits(cdx_collection *c, const float *x, size_t dim, size_t nq)
{
	const struct cdx_manifest *m = cdx_collection_manifest(c);
	struct cdx_search_params sp
	    = { .k = 10, .nprobe = m->nlist ? m->nlist : 1, .refine_factor = m->refine ? 10 : 0 };
	struct cdx_hit *hits = calloc(nq * 10, sizeof(*hits));
	assert_int_equal(cdx_collection_search(c, &sp, x, nq, hits), CDX_OK);
	int n = 0;
	for (size_t i = 0; i < nq; i++)
		n += hits[i * 10].id == (int64_t) i;
	free(hits);
	(void) dim;
	return n;
}

static void
test_metrics_and_refine(void **state)
{
	(void) state;
	const size_t n = 4000, dim = 16;
	float *x = gen("m.fvecs", n, dim, 1);
	static const struct {
		const char *metric, *refine;
	} cases[] = { { "l2", "fp32" }, { "ip", "fp16" }, { "cos", "sq8" }, { "l2", "none" } };
	for (size_t i = 0; i < CDX_ARRAY_LEN(cases); i++) {
		char *out = NULL;
		int rc = build(&out,
		    "--input %s/m.fvecs --collection m%zu --metric %s --refine %s --no-tune --out %s/idx",
		    root, i, cases[i].metric, cases[i].refine, root);
		assert_int_equal(rc, 0);
		char *coll = pathf("%s/idx/m%zu", root, i);
		char *cur = tu_current(coll);
		assert_non_null(cur);
		assert_non_null(strstr(out, cur)); /* the version dir is printed */
		cdx_collection *c = NULL;
		assert_int_equal(cdx_collection_load(&c, coll), CDX_OK);
		const struct cdx_manifest *m = cdx_collection_manifest(c);
		assert_string_equal(cdx_metric_name(m->metric), cases[i].metric);
		assert_string_equal(cdx_refine_name(m->refine), cases[i].refine);
		assert_int_equal(m->items, n);
		assert_int_equal(m->dim, dim);
		assert_string_equal(m->factory, "IVF64,PQ4x4np"); /* 4000 rows: nlist <= 4000/39, 4-bit */
		assert_int_equal(m->default_nprobe, 2);
		assert_true(m->default_refine_factor == (strcmp(cases[i].refine, "none") ? 4.0f : 0.0f));
		assert_int_equal(m->seed, 1234);
		assert_int_equal(m->train_sample, n);
		if (strcmp(cases[i].metric, "ip") == 0) {
			/* MIPS: compare with exact top-10 by inner product */
			struct cdx_search_params sp = { .k = 10, .nprobe = 64, .refine_factor = 20 };
			struct cdx_hit hits[10];
			int64_t truth[10];
			int found = 0;
			for (int q = 0; q < 20; q++) {
				assert_int_equal(
				    cdx_collection_search(c, &sp, x + (size_t) q * 97 * dim, 1, hits),
				    CDX_OK);
				tu_exact_knn(x, n, dim, x + (size_t) q * 97 * dim, 10, 1, truth);
				for (int a = 0; a < 10; a++)
					for (int b = 0; b < 10; b++)
						found += hits[a].id == truth[b];
			}
			assert_true(found >= 180); /* recall@10 >= 0.9 with exact re-ranking */
		} else if (strcmp(cases[i].refine, "none") != 0) {
			assert_true(self_hits(c, x, dim, 20) >= 19);
		}
		cdx_collection_unref(c);
		char *insp = NULL;
		assert_int_equal(tu_run(&insp, "%s inspect %s", CANDEX_BIN, coll), 0);
		assert_non_null(strstr(insp, "verify: OK"));
		free(insp);
		free(cur);
		free(coll);
		free(out);
	}
	free(x);
}

/* The same vectors as .fvecs, .npy (float32) and raw float32 build
 * byte-identical shards: the fingerprint is over the float32 values as
 * read, whatever the container. float16 .npy builds too. */
/* write_npy writes a 2-D .npy of rows x dim with bytes of data. */
static void
write_npy(const char *path, const char *descr, size_t rows, size_t dim, const void *data, size_t bytes)
{
	char shape[64];
	snprintf(shape, sizeof(shape), "(%zu, %zu)", rows, dim);
	assert_int_equal(tu_write_npy(path, descr, 0, shape, data, bytes), 0);
}

static void
test_input_formats(void **state)
{
	(void) state;
	const size_t n = 2500, dim = 12;
	float *x = gen("fmt.fvecs", n, dim, 13);
	char *raw = pathf("%s/fmt.f32", root), *npy = pathf("%s/fmt.npy", root),
	     *npy16 = pathf("%s/fmt16.npy", root);
	FILE *f = fopen(raw, "wb");
	fwrite(x, sizeof(float), n * dim, f);
	fclose(f);
	write_npy(npy, "<f4", n, dim, x, n * dim * sizeof(float));
	uint16_t *h16 = malloc(n * dim * sizeof(uint16_t));
	assert_non_null(h16);
	for (size_t i = 0; i < n * dim; i++)
		h16[i] = cdx_f32_to_f16(x[i]);
	write_npy(npy16, "<f2", n, dim, h16, n * dim * sizeof(uint16_t));
	free(h16);
	build_ok("--input %s/fmt.fvecs --collection fmt --metric l2 --refine fp32 --out %s/fmt-fvecs --quiet",
	    root, root);
	build_ok("--input %s --collection fmt --metric l2 --refine fp32 --out %s/fmt-npy --quiet", npy, root);
	build_ok(
	    "--input %s --format raw --dim %zu --collection fmt --metric l2 --refine fp32 --out %s/fmt-raw "
	    "--quiet",
	    raw, dim, root);
	build_ok(
	    "--input %s --collection fmt --metric l2 --refine fp32 --out %s/fmt-npy16 --quiet", npy16, root);
	const char *outs[4] = { "fmt-fvecs", "fmt-npy", "fmt-raw", "fmt-npy16" };
	uint64_t fp[4];
	char *shard0 = NULL;
	for (int i = 0; i < 4; i++) {
		char *coll = pathf("%s/%s/fmt", root, outs[i]), *cur = tu_current(coll);
		char *vd = pathf("%s/%s", coll, cur), *sh = pathf("%s/shard-0000-of-0001.cdx", vd);
		struct cdx_manifest *m = NULL;
		assert_int_equal(cdx_manifest_load(&m, vd), CDX_OK);
		assert_int_equal(m->items, n);
		assert_int_equal(m->dim, dim);
		fp[i] = m->input_fingerprint;
		cdx_manifest_free(m);
		if (i == 0)
			shard0 = strdup(sh);
		else if (i < 3)
			assert_true(tu_files_equal(shard0, sh));
		free(sh);
		free(vd);
		free(cur);
		free(coll);
	}
	assert_true(fp[0] == fp[1] && fp[1] == fp[2]);
	assert_true(fp[3] != fp[0]); /* float16 rounds the values */
	free(shard0);
	free(raw);
	free(npy);
	free(npy16);
	free(x);
}

static void
test_keys_ids_shards(void **state)
{
	(void) state;
	const size_t n = 3000, dim = 16;
	float *x = gen("k.fvecs", n, dim, 2);
	char *keys = pathf("%s/k.keys", root), *ids = pathf("%s/k.ids", root);
	assert_int_equal(tu_write_keys(keys, "spotify:track:", n), 0);
	FILE *f = fopen(ids, "w");
	for (size_t i = 0; i < n; i++)
		fprintf(f, "%lld\n", 5000000LL + (long long) i * 13);
	fclose(f);
	build_ok("--input %s/k.fvecs --collection k --metric l2 --keys %s --ids %s --shards 3 --refine fp16 "
	         "--no-tune "
	         "--model-version emb-v7 --out %s/idx --quiet",
	    root, keys, ids, root);
	char *coll = pathf("%s/idx/k", root);
	cdx_collection *c = NULL;
	assert_int_equal(cdx_collection_load(&c, coll), CDX_OK);
	const struct cdx_manifest *m = cdx_collection_manifest(c);
	assert_int_equal(m->nshards, 3);
	assert_string_equal(m->model_version, "emb-v7");
	/* the rest of the manifest: what was built, from what, when, by which candex */
	assert_int_equal(m->format_version, CDX_MANIFEST_FORMAT_VERSION);
	assert_string_equal(m->collection, "k");
	assert_int_equal(m->metric, CDX_METRIC_L2);
	assert_int_equal(m->dim, dim);
	assert_int_equal(m->items, n);
	assert_string_equal(m->factory, "IVF64,PQ4x4np");
	assert_int_equal(m->nlist, 64);
	assert_int_equal(m->pq_m, 4);
	assert_int_equal(m->pq_nbits, 4);
	assert_int_equal(m->refine, CDX_REFINE_FP16);
	assert_int_equal(m->seed, CDX_BUILD_DEFAULT_SEED);
	assert_int_equal(m->train_sample, n);
	assert_non_null(strstr(m->input_path, "k.fvecs"));
	assert_int_equal(m->input_bytes, n * (4 + dim * 4));
	assert_true(m->input_fingerprint != 0);
	assert_int_equal(strlen(m->created), 24); /* 2026-11-28T16:35:22.123Z */
	assert_int_equal(m->created[10], 'T');
	assert_string_equal(m->candex_version, CANDEX_VERSION);
	for (uint32_t s = 0; s < 3; s++) {
		char *sp = pathf("%s/%s/%s", coll, m->version, m->shards[s].file);
		uint64_t bytes, h;
		assert_int_equal(cdx_file_xxh64(sp, &bytes, &h), CDX_OK);
		assert_int_equal(bytes, m->shards[s].bytes);
		assert_true(h == m->shards[s].xxh64);
		free(sp);
	}
	char *mtext = NULL;
	size_t mlen = 0;
	char *mpath = pathf("%s/%s/manifest.json", coll, m->version);
	assert_int_equal(cdx_read_file(mpath, &mtext, &mlen), CDX_OK);
	assert_non_null(strstr(mtext, "\n  \"model_version\": \"emb-v7\"")); /* human-readable JSON */
	free(mtext);
	free(mpath);
	uint64_t sum = 0;
	for (uint32_t s = 0; s < 3; s++) {
		char name[CDX_NAME_MAX];
		cdx_build_shard_name(name, s, 3);
		assert_string_equal(m->shards[s].file, name);
		assert_true(m->shards[s].rows > 800); /* spread by hash */
		sum += m->shards[s].rows;
	}
	assert_int_equal(sum, n);
	/* one trained quantizer and codebook shared by all shards: emptied of
	 * their vectors, the three Faiss indexes serialise to the same bytes */
	char *empty[3];
	size_t empty_len[3];
	for (uint32_t s = 0; s < 3; s++) {
		char *sp = pathf("%s/%s/%s", coll, m->version, m->shards[s].file);
		cdx_shard *sh = NULL;
		assert_int_equal(cdx_shard_open(&sh, sp), CDX_OK);
		FILE *pf = NULL;
		assert_int_equal(cdx_shard_open_part_stream(sh, CDX_PART_FAISS, &pf), CDX_OK);
		FaissIndex *fi = NULL;
		assert_int_equal(faiss_read_index(pf, 0, &fi), 0);
		fclose(pf);
		cdx_shard_close(sh);
		assert_int_equal(faiss_Index_ntotal(fi), m->shards[s].rows);
		assert_int_equal(faiss_Index_reset(fi), 0);
		FILE *mf = open_memstream(&empty[s], &empty_len[s]);
		assert_int_equal(faiss_write_index(fi, mf), 0);
		fclose(mf);
		faiss_Index_free(fi);
		free(sp);
		if (s > 0) {
			assert_int_equal(empty_len[s], empty_len[0]);
			assert_memory_equal(empty[s], empty[0], empty_len[0]);
		}
	}
	for (int s = 0; s < 3; s++)
		free(empty[s]);
	for (int i = 0; i < (int) n; i += 97) {
		char key[64];
		snprintf(key, sizeof(key), "spotify:track:%d", i);
		uint32_t shard, row, shard2, row2;
		int64_t id;
		assert_int_equal(cdx_collection_find_key(c, key, &shard, &row, &id), CDX_OK);
		assert_int_equal(id, 5000000LL + i * 13);
		assert_int_equal(shard, cdx_build_shard_of(id, 3));
		assert_string_equal(cdx_collection_key(c, shard, row), key);
		assert_int_equal(cdx_collection_find_id(c, id, &shard2, &row2), CDX_OK);
		assert_int_equal(shard2, shard);
		assert_int_equal(row2, row);
	}
	/* a base vector finds its own id, wherever its shard */
	struct cdx_search_params sp = { .k = 5, .nprobe = 64, .refine_factor = 10 };
	struct cdx_hit hits[5];
	int good = 0;
	for (int q = 0; q < 20; q++) {
		assert_int_equal(cdx_collection_search(c, &sp, x + (size_t) q * 31 * dim, 1, hits), CDX_OK);
		good += hits[0].id == 5000000LL + q * 31 * 13;
	}
	assert_true(good >= 19);
	cdx_collection_unref(c);
	free(coll);
	free(keys);
	free(ids);
	free(x);
}

static void
test_small_and_factories(void **state)
{
	(void) state;
	float *x = gen("s500.fvecs", 500, 24, 3);
	char *out = NULL;
	assert_int_equal(
	    build(&out, "--input %s/s500.fvecs --collection tiny --metric cos --out %s/idx", root, root), 0);
	assert_non_null(strstr(out, "Flat")); /* it says what it did and why */
	assert_non_null(strstr(out, "500 items < 1000"));
	free(out);
	char *coll = pathf("%s/idx/tiny", root);
	cdx_collection *c = NULL;
	assert_int_equal(cdx_collection_load(&c, coll), CDX_OK);
	assert_string_equal(cdx_collection_manifest(c)->factory, "Flat");
	assert_int_equal(cdx_collection_manifest(c)->nlist, 0);
	assert_int_equal(self_hits(c, x, 24, 30), 30); /* exact */
	cdx_collection_unref(c);
	free(coll);
	free(x);

	/* the Last.fm case: 6,453 x 64 builds with 4-bit codebooks */
	x = gen("s6453.fvecs", 6453, 64, 4);
	assert_int_equal(
	    build(&out, "--input %s/s6453.fvecs --collection lfm --metric ip --no-tune --out %s/idx", root,
	        root),
	    0);
	assert_non_null(strstr(out, "4-bit"));
	free(out);
	coll = pathf("%s/idx/lfm", root);
	assert_int_equal(cdx_collection_load(&c, coll), CDX_OK);
	assert_string_equal(cdx_collection_manifest(c)->factory, "IVF128,PQ16x4np");
	cdx_collection_unref(c);
	free(coll);

	/* a user factory gets np; L2norm and wrapped IVF are refused */
	build_ok(
	    "--input %s/s6453.fvecs --collection fac --metric l2 --factory IVF32,PQ8 --out %s/idx --quiet",
	    root, root);
	coll = pathf("%s/idx/fac", root);
	assert_int_equal(cdx_collection_load(&c, coll), CDX_OK);
	assert_string_equal(cdx_collection_manifest(c)->factory, "IVF32,PQ8np");
	assert_int_equal(cdx_collection_manifest(c)->nlist, 32);
	assert_int_equal(cdx_collection_manifest(c)->pq_m, 8);
	assert_int_equal(cdx_collection_manifest(c)->pq_nbits, 8);
	cdx_collection_unref(c);
	free(coll);
	/* fast-scan builds (Faiss cannot clone it: encode copies it through its
	 * serialised form) and is searched through views: exact with a refine
	 * store and every list probed */
	build_ok("--input %s/s6453.fvecs --collection fs --metric l2 --factory IVF32,PQ32x4fs --refine fp32 "
	         "--out %s/idx --quiet",
	    root, root);
	coll = pathf("%s/idx/fs", root);
	assert_int_equal(cdx_collection_load(&c, coll), CDX_OK);
	assert_string_equal(cdx_collection_manifest(c)->factory, "IVF32,PQ32x4fs");
	assert_int_equal(cdx_collection_manifest(c)->pq_nbits, 4);
	assert_int_equal(self_hits(c, x, 64, 50), 50);
	cdx_collection_unref(c);
	free(coll);
	free(x);
	assert_int_equal(build(&out,
	                     "--input %s/s6453.fvecs --collection fac2 --metric l2 --factory OPQ8,IVF32,PQ8 "
	                     "--out %s/idx",
	                     root, root),
	    1);
	assert_non_null(strstr(out, "wrapped"));
	free(out);
	assert_int_equal(
	    build(&out,
	        "--input %s/s6453.fvecs --collection fac2 --metric l2 --factory L2norm,Flat --out "
	        "%s/idx",
	        root, root),
	    1);
	free(out);
	assert_int_equal(
	    build(&out, "--input %s/s6453.fvecs --collection fac2 --metric l2 --factory Bogus42 --out %s/idx",
	        root, root),
	    1);
	assert_non_null(strstr(out, "Bogus42"));
	free(out);
	/* usage errors exit 2 */
	assert_int_equal(build(&out, "--input %s/s6453.fvecs --collection fac2 --out %s/idx", root, root), 2);
	free(out);
	assert_int_equal(build(&out, "--input x --collection .bad --metric l2 --out %s/idx", root), 2);
	free(out);
	assert_int_equal(build(&out, "--input x --collection c --metric hamming --out %s/idx", root), 2);
	free(out);
	assert_int_equal(build(&out, "--help"), 0);
	assert_non_null(strstr(out, "4*sqrt(N)"));
	free(out);
}

static void
test_determinism(void **state)
{
	(void) state;
	float *x = gen("d.fvecs", 12000, 32, 5); /* 8-bit codebooks */
	char *keys = pathf("%s/d.keys", root);
	assert_int_equal(tu_write_keys(keys, "k", 12000), 0);
	for (int r = 0; r < 2; r++)
		build_ok("--input %s/d.fvecs --keys %s --collection d --metric l2 --shards 2 --refine sq8 "
		         "--seed 77 --no-tune "
		         "--train-sample 4000 --out %s/det%d --quiet",
		    root, keys, root, r);
	char *c0 = pathf("%s/det0/d", root), *c1 = pathf("%s/det1/d", root);
	char *v0 = tu_current(c0), *v1 = tu_current(c1);
	for (uint32_t s = 0; s < 2; s++) {
		char name[CDX_NAME_MAX];
		cdx_build_shard_name(name, s, 2);
		char *a = pathf("%s/%s/%s", c0, v0, name), *b = pathf("%s/%s/%s", c1, v1, name);
		assert_true(tu_files_equal(a, b));
		free(a);
		free(b);
	}
	struct cdx_manifest *m0 = NULL, *m1 = NULL;
	char *d0 = pathf("%s/%s", c0, v0), *d1 = pathf("%s/%s", c1, v1);
	assert_int_equal(cdx_manifest_load(&m0, d0), CDX_OK);
	assert_int_equal(cdx_manifest_load(&m1, d1), CDX_OK);
	assert_true(m0->input_fingerprint == m1->input_fingerprint);
	assert_true(m0->input_fingerprint != 0);
	assert_string_equal(m0->factory, "IVF256,PQ8x8np");
	assert_int_equal(m0->train_sample, 4000);
	assert_int_equal(m0->seed, 77);
	cdx_manifest_free(m0);
	cdx_manifest_free(m1);
	/* another seed trains on another sample: different shards */
	build_ok("--input %s/d.fvecs --keys %s --collection d --metric l2 --shards 2 --refine sq8 --seed 78 "
	         "--no-tune "
	         "--train-sample 4000 --out %s/det2 --quiet",
	    root, keys, root);
	char *c2 = pathf("%s/det2/d", root), *v2 = tu_current(c2);
	char *a = pathf("%s/%s/shard-0000-of-0002.cdx", c0, v0),
	     *b = pathf("%s/%s/shard-0000-of-0002.cdx", c2, v2);
	assert_false(tu_files_equal(a, b));
	free(a);
	free(b);
	free(c2);
	free(v2);
	free(d0);
	free(d1);
	free(v0);
	free(v1);
	free(c0);
	free(c1);
	free(keys);
	free(x);
}

/* expect_rejected runs a bad build into the "good" collection and checks
 * the error and that nothing changed. */
static void expect_rejected(const char *coll_dir, const char *cur, const char *needle, const char *needle2,
    const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static void
expect_rejected(
    const char *coll_dir, const char *cur, const char *needle, const char *needle2, const char *fmt, ...)
{
	char *args = NULL;
	va_list ap;
	va_start(ap, fmt);
	assert_true(vasprintf(&args, fmt, ap) >= 0);
	va_end(ap);
	char *out = NULL;
	int rc = build(&out, "%s --collection good --out %s/idx", args, root);
	if (rc != 1 || strstr(out, needle) == NULL || (needle2 && strstr(out, needle2) == NULL))
		fprintf(stderr, "build %s: rc %d, expected 1 and '%s' '%s' in:\n%s\n", args, rc, needle,
		    needle2 ? needle2 : "", out);
	assert_int_equal(rc, 1);
	assert_non_null(strstr(out, needle));
	if (needle2)
		assert_non_null(strstr(out, needle2));
	char *now = tu_current(coll_dir);
	assert_non_null(now);
	assert_string_equal(now, cur);
	int versions, staging;
	tu_count_dirs(coll_dir, &versions, &staging);
	assert_int_equal(versions, 1);
	assert_int_equal(staging, 0);
	free(now);
	free(out);
	free(args);
}

/* drop_dac_override runs in the child before exec: root reads any file
 * whatever its mode, unless CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH are
 * gone from the bounding set (then exec does not grant them). 125: cannot. */
static void
drop_dac_override(void *arg)
{
	(void) arg;
	if (geteuid() != 0)
		return;
	if (prctl(PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, 0, 0, 0) != 0
	    || prctl(PR_CAPBSET_DROP, CAP_DAC_READ_SEARCH, 0, 0, 0) != 0)
		_exit(125);
}

static void
test_bad_inputs(void **state)
{
	(void) state;
	const size_t n = 3000, dim = 16;
	float *x = gen("good.fvecs", n, dim, 6);
	char *keys = pathf("%s/good.keys", root);
	assert_int_equal(tu_write_keys(keys, "item", n), 0);
	build_ok("--input %s/good.fvecs --collection good --metric l2 --out %s/idx --quiet", root, root);
	char *coll = pathf("%s/idx/good", root);
	char *cur = tu_current(coll);
	assert_non_null(cur);
	char *p;

	/* a row of another dimension (fvecs) */
	p = pathf("%s/dimrow.fvecs", root);
	FILE *f = fopen(p, "wb");
	for (size_t i = 0; i < n; i++) {
		int32_t d = i == 1500 ? 15 : 16;
		fwrite(&d, 4, 1, f);
		fwrite(x + i * dim, 4, (size_t) d, f);
	}
	fclose(f);
	expect_rejected(coll, cur, "dimrow.fvecs: row 1500 has dimension 15, expected 16", NULL,
	    "--input %s --metric l2", p);
	free(p);
	/* dimension mismatch between the flags/files */
	expect_rejected(coll, cur, "good.fvecs: dimension 16, but 32 was expected", NULL,
	    "--input %s/good.fvecs --dim 32 --metric l2", root);
	/* rows mismatch between files */
	p = pathf("%s/short.keys", root);
	assert_int_equal(tu_write_keys(p, "item", n - 1), 0);
	expect_rejected(coll, cur, "short.keys: 2999 keys, but the input has 3000 rows", NULL,
	    "--input %s/good.fvecs --keys %s --metric l2", root, p);
	free(p);
	/* NaN where only the encode pass sees it (not in the 500-row sample):
	 * the staging directory exists by then and must go */
	uint64_t sample[500];
	cdx_build_sample(n, 500, CDX_BUILD_DEFAULT_SEED, sample);
	size_t bad = n - 1;
	for (int i = 499; i >= 0 && sample[i] >= bad; i--)
		if (sample[i] == bad)
			bad--;
	float keep = x[bad * dim + 3];
	x[bad * dim + 3] = NAN;
	p = pathf("%s/nan.fvecs", root);
	assert_int_equal(tu_write_fvecs(p, x, n, dim), 0);
	char needle[128];
	snprintf(needle, sizeof(needle), "nan.fvecs: row %zu, column 3: NaN", bad);
	expect_rejected(coll, cur, needle, NULL, "--input %s --metric l2 --train-sample 500", p);
	/* NaN in the sample: caught before training */
	expect_rejected(coll, cur, needle, NULL, "--input %s --metric cos", p);
	free(p);
	x[bad * dim + 3] = keep;
	/* Inf */
	x[10 * dim] = INFINITY;
	p = pathf("%s/inf.fvecs", root);
	assert_int_equal(tu_write_fvecs(p, x, n, dim), 0);
	expect_rejected(coll, cur, "inf.fvecs: row 10, column 0: Inf", NULL, "--input %s --metric ip", p);
	free(p);
	x[10 * dim] = 0;
	/* empty */
	p = pathf("%s/empty.fvecs", root);
	fclose(fopen(p, "w"));
	expect_rejected(coll, cur, "empty.fvecs: empty input", NULL, "--input %s --metric l2", p);
	free(p);
	/* duplicate ids */
	p = pathf("%s/dup.ids", root);
	f = fopen(p, "w");
	for (size_t i = 0; i < n; i++)
		fprintf(f, "%zu\n", i == 2000 ? (size_t) 17 : i);
	fclose(f);
	expect_rejected(coll, cur, "dup.ids: duplicate id 17 at line 2001 (first at line 18)", NULL,
	    "--input %s/good.fvecs --ids %s --metric l2", root, p);
	free(p);
	/* duplicate keys */
	p = pathf("%s/dup.keys", root);
	f = fopen(p, "w");
	for (size_t i = 0; i < n; i++)
		fprintf(f, "spotify:track:%zu\n", i == 2500 ? (size_t) 3 : i);
	fclose(f);
	expect_rejected(coll, cur, "dup.keys: duplicate key 'spotify:track:3' at line 2501 (first at line 4)",
	    NULL, "--input %s/good.fvecs --keys %s --metric l2", root, p);
	free(p);
	/* truncated */
	p = pathf("%s/trunc.fvecs", root);
	assert_int_equal(tu_write_fvecs(p, x, n, dim), 0);
	assert_int_equal(truncate(p, (off_t) (n * 68 - 10)), 0);
	expect_rejected(coll, cur, "trunc.fvecs: truncated", "row 2999", "--input %s --metric l2", p);
	free(p);
	/* unreadable paths */
	expect_rejected(coll, cur, "cannot read input", "nonexistent.fvecs",
	    "--input %s/nonexistent.fvecs --metric l2", root);
	expect_rejected(coll, cur, "cannot read", "nokeys.txt",
	    "--input %s/good.fvecs --keys %s/nokeys.txt --metric l2", root, root);
	p = pathf("%s/adir.fvecs", root);
	assert_int_equal(mkdir(p, 0755), 0);
	expect_rejected(coll, cur, "adir.fvecs: not a regular file", NULL, "--input %s --metric l2", p);
	free(p);
	/* unknown format: a text file, even with a dimension that divides its size */
	expect_rejected(coll, cur, "good.keys: unknown vector format (it looks like a text file: CSV?)", NULL,
	    "--input %s --metric l2", keys);
	p = pathf("%s/good.csv", root);
	f = fopen(p, "w");
	for (size_t i = 0; i < n; i++)
		for (size_t j = 0; j < dim; j++)
			fprintf(f, "%.5f%s", (double) x[i * dim + j], j + 1 < dim ? "," : "\n");
	fclose(f);
	expect_rejected(coll, cur, "good.csv: unknown vector format (it looks like a text file: CSV?)",
	    "--format raw", "--input %s --dim 16 --metric l2", p);
	free(p);

	/* .npy: truncated, float16 NaN, another dimension than --dim */
	p = pathf("%s/trunc.npy", root);
	write_npy(p, "<f4", n, dim, x, (n - 1) * dim * sizeof(float) + 7);
	expect_rejected(
	    coll, cur, "trunc.npy: truncated", "ends inside row 2999", "--input %s --metric l2", p);
	free(p);
	uint16_t *h = malloc(n * dim * sizeof(uint16_t));
	for (size_t i = 0; i < n * dim; i++)
		h[i] = cdx_f32_to_f16(x[i]);
	h[2100 * dim + 5] = 0x7e00; /* a float16 NaN */
	p = pathf("%s/nan16.npy", root);
	write_npy(p, "<f2", n, dim, h, n * dim * sizeof(uint16_t));
	free(h);
	expect_rejected(coll, cur, "nan16.npy: row 2100, column 5: NaN", NULL, "--input %s --metric ip", p);
	expect_rejected(coll, cur, "nan16.npy: dimension 16, but 8 was expected", NULL,
	    "--input %s --dim 8 --metric ip", p);
	free(p);
	/* raw float32 whose size is not whole rows of --dim */
	p = pathf("%s/raw.f32", root);
	f = fopen(p, "wb");
	fwrite(x, sizeof(float), n * dim, f);
	fwrite(x, sizeof(float), 3, f); /* 3 floats of a row 3000 that never ends */
	fclose(f);
	expect_rejected(
	    coll, cur, "raw.f32: truncated", "row 3000", "--input %s --format raw --dim 16 --metric l2", p);
	free(p);
	/* ids: a count that does not match the rows, a line that is not an id */
	p = pathf("%s/short.ids", root);
	f = fopen(p, "w");
	for (size_t i = 0; i < n - 1; i++)
		fprintf(f, "%zu\n", i);
	fclose(f);
	expect_rejected(coll, cur, "short.ids: 2999 ids, but the input has 3000 rows", NULL,
	    "--input %s/good.fvecs --ids %s --metric l2", root, p);
	f = fopen(p, "w");
	for (size_t i = 0; i < n; i++)
		fprintf(f, i == 41 ? "4x1\n" : "%zu\n", i);
	fclose(f);
	expect_rejected(coll, cur, "short.ids: line 42", "not an int64 id",
	    "--input %s/good.fvecs --ids %s --metric l2", root, p);
	free(p);
	/* keys: empty file, an empty line */
	p = pathf("%s/empty.keys", root);
	fclose(fopen(p, "w"));
	expect_rejected(coll, cur, "empty.keys: 0 keys, but the input has 3000 rows", NULL,
	    "--input %s/good.fvecs --keys %s --metric l2", root, p);
	f = fopen(p, "w");
	for (size_t i = 0; i < n; i++)
		fprintf(f, i == 7 ? "\n" : "k%zu\n", i);
	fclose(f);
	expect_rejected(coll, cur, "empty.keys: line 8: empty key", NULL,
	    "--input %s/good.fvecs --keys %s --metric l2", root, p);
	free(p);
	/* an output directory that cannot be made */
	p = pathf("%s/good.fvecs/idx", root);
	char *o = NULL;
	assert_int_equal(
	    build(&o, "--input %s/good.fvecs --collection good --metric l2 --out %s", root, p), 1);
	assert_non_null(strstr(o, "good.fvecs/idx"));
	free(o);
	free(p);
	/* a file we may not read (mode 000; as root, without CAP_DAC_OVERRIDE) */
	p = pathf("%s/secret.fvecs", root);
	assert_int_equal(tu_write_fvecs(p, x, n, dim), 0);
	assert_int_equal(chmod(p, 0), 0);
	char *out_dir = pathf("%s/idx", root);
	const char *argv[] = { CANDEX_BIN, "build", "--input", p, "--collection", "good", "--metric", "l2",
		"--out", out_dir, NULL };
	struct tu_exec_opts eo = { .child_setup = drop_dac_override };
	int rc = tu_exec(&o, &eo, NULL, NULL, argv);
	if (rc == 125) {
		print_message("cannot drop CAP_DAC_OVERRIDE here: skipping the permission check\n");
	} else {
		if (rc != 1 || strstr(o, "secret.fvecs") == NULL || strstr(o, "Permission denied") == NULL)
			fprintf(stderr, "rc %d:\n%s\n", rc, o);
		assert_int_equal(rc, 1);
		assert_non_null(strstr(o, "secret.fvecs"));
		assert_non_null(strstr(o, "Permission denied"));
	}
	free(o);
	free(out_dir);
	free(p);
	char *now = tu_current(coll);
	assert_string_equal(now, cur);
	free(now);
	int versions, staging;
	tu_count_dirs(coll, &versions, &staging);
	assert_int_equal(versions, 1);
	assert_int_equal(staging, 0);

	/* and the old version still loads */
	cdx_collection *c = NULL;
	assert_int_equal(cdx_collection_load(&c, coll), CDX_OK);
	cdx_collection_unref(c);
	free(cur);
	free(coll);
	free(keys);
	free(x);
}

/* expect_full runs argv under a file size limit (RLIMIT_FSIZE: a write past
 * it fails with EFBIG, as a write to a full disk fails with ENOSPC) and
 * checks the error: exit 1, the file being written named, ENOSPC. */
static void
expect_full(long long limit, const char *file, const char *const argv[])
{
	struct tu_exec_opts eo = { .fsize_limit = limit };
	char *out = NULL;
	int rc = tu_exec(&out, &eo, NULL, NULL, argv);
	if (rc != 1 || strstr(out, file) == NULL || strstr(out, "File too large") == NULL)
		fprintf(stderr, "%s %s: rc %d, expected 1, '%s' and 'File too large' in:\n%s\n", argv[1],
		    argv[2], rc, file, out);
	assert_int_equal(rc, 1);
	assert_non_null(strstr(out, file));
	assert_non_null(strstr(out, "File too large"));
	assert_non_null(strstr(out, "(ENOSPC)"));
	free(out);
}

/* The disk fills up while a version is written: unprivileged, through
 * RLIMIT_FSIZE (test_disk_full_tmpfs does the same on a real full file
 * system when it may mount one). */
static void
test_disk_full_rlimit(void **state)
{
	(void) state;
	free(gen("rl-big.fvecs", 6000, 64, 7));
	free(gen("rl-small.fvecs", 400, 64, 8));
	char *out = pathf("%s/rl", root), *coll = pathf("%s/rl/full", root);
	char *big = pathf("%s/rl-big.fvecs", root), *work = pathf("%s/rl-work", root);
	build_ok("--input %s/rl-small.fvecs --collection full --metric l2 --out %s --quiet", root, out);
	char *cur = tu_current(coll);
	assert_non_null(cur);
	/* one-shot: the 6000 x 64 fp32 refine store (1.5 MB) does not fit in 256 KiB */
	const char *oneshot[] = { CANDEX_BIN, "build", "--input", big, "--collection", "full", "--metric",
		"l2", "--refine", "fp32", "--out", out, NULL };
	expect_full(256 << 10, "shard-0000-of-0001.cdx", oneshot);
	char *now = tu_current(coll);
	assert_string_equal(now, cur);
	free(now);
	int versions, staging;
	tu_count_dirs(coll, &versions, &staging);
	assert_int_equal(versions, 1);
	assert_int_equal(staging, 0);
	/* the same command without the limit works: the limit was the only problem */
	const char *ok[] = { CANDEX_BIN, "build", "--input", big, "--collection", "full2", "--metric", "l2",
		"--refine", "fp32", "--quiet", "--out", out, NULL };
	assert_int_equal(tu_exec(NULL, NULL, NULL, NULL, ok), 0);

	/* distributed: train cannot save the trained index (IVF128 x 64 floats
	 * of centroids alone are 32 KiB; without --no-tune this small a set
	 * would be searched exactly, by a Flat index of a few bytes) */
	const char *train[] = { CANDEX_BIN, "build", "train", "--input", big, "--collection", "full",
		"--metric", "l2", "--shards", "2", "--refine", "fp32", "--no-tune", "--out", out, "--work",
		work, "--quiet", NULL };
	expect_full(8 << 10, "trained.faissindex", train);
	assert_int_equal(tu_exec(NULL, NULL, NULL, NULL, train), 0);
	const char *enc0[]
	    = { CANDEX_BIN, "build", "encode", "--work", work, "--shard", "0", "--of", "2", "--quiet", NULL };
	assert_int_equal(tu_exec(NULL, NULL, NULL, NULL, enc0), 0);
	/* an encode job runs out of space: no shard output, no sidecar, no temp dir */
	const char *enc[]
	    = { CANDEX_BIN, "build", "encode", "--work", work, "--shard", "1", "--of", "2", "--quiet", NULL };
	expect_full(256 << 10, "shard-0001-of-0002.cdx", enc);
	char *p = pathf("%s/shard-0001-of-0002.cdx", work);
	assert_int_equal(access(p, F_OK), -1);
	free(p);
	p = pathf("%s/shard-0001-of-0002.cdx.json", work);
	assert_int_equal(access(p, F_OK), -1);
	free(p);
	assert_int_equal(tu_run(NULL, "ls -a %s | grep -q '^.encode-'", work), 1);
	const char *pub[] = { CANDEX_BIN, "build", "publish", "--work", work, NULL };
	char *o = NULL;
	assert_int_equal(tu_exec(&o, NULL, NULL, NULL, pub), 1);
	assert_non_null(strstr(o, "shard 1 of 2 has not been encoded"));
	free(o);
	now = tu_current(coll);
	assert_string_equal(now, cur);
	free(now);
	/* retried without the limit, the job finishes */
	assert_int_equal(tu_exec(NULL, NULL, NULL, NULL, enc), 0);
	/* publish hard-links the shards (no bytes written) but cannot write the manifest */
	expect_full(64, "manifest.json", pub);
	now = tu_current(coll);
	assert_string_equal(now, cur);
	free(now);
	tu_count_dirs(coll, &versions, &staging);
	assert_int_equal(versions, 1);
	assert_int_equal(staging, 0);
	/* the work directory is intact: publish again, without the limit */
	assert_int_equal(tu_exec(NULL, NULL, NULL, NULL, pub), 0);
	now = tu_current(coll);
	assert_string_not_equal(now, cur);
	free(now);
	assert_int_equal(tu_run(NULL, "%s inspect %s", CANDEX_BIN, coll), 0);
	free(cur);
	free(big);
	free(work);
	free(coll);
	free(out);
}

static void
test_disk_full_tmpfs(void **state)
{
	(void) state;
	char *mnt = pathf("%s/full", root);
	assert_int_equal(mkdir(mnt, 0755), 0);
	if (mount("tmpfs", mnt, "tmpfs", 0, "size=1m") != 0) {
		fprintf(stderr,
		    "skipping the disk-full test: cannot mount a tmpfs (%s); needs root or CAP_SYS_ADMIN\n",
		    strerror(errno));
		rmdir(mnt);
		free(mnt);
		skip();
	}
	float *x = gen("big.fvecs", 6000, 64, 7);
	free(gen("small.fvecs", 400, 64, 8));
	/* a small version fits (400 x 64 Flat ~ 100 kB) ... */
	build_ok("--input %s/small.fvecs --collection full --metric l2 --out %s --quiet", root, mnt);
	char *coll = pathf("%s/full", mnt);
	char *cur = tu_current(coll);
	assert_non_null(cur);
	/* ... a 6000 x 64 fp32 refine store (1.5 MB) does not */
	char *out = NULL;
	int rc = build(
	    &out, "--input %s/big.fvecs --collection full --metric l2 --refine fp32 --out %s", root, mnt);
	if (rc != 1 || strstr(out, "No space left on device") == NULL)
		fprintf(stderr, "%s\n", out);
	assert_int_equal(rc, 1);
	assert_non_null(strstr(out, "No space left on device"));
	assert_non_null(strstr(out, "ENOSPC"));
	assert_non_null(strstr(out, "shard-0000-of-0001.cdx"));
	char *now = tu_current(coll);
	assert_string_equal(now, cur);
	int versions, staging;
	tu_count_dirs(coll, &versions, &staging);
	assert_int_equal(versions, 1);
	assert_int_equal(staging, 0);
	assert_int_equal(tu_run(NULL, "%s inspect %s", CANDEX_BIN, coll), 0);
	free(out);
	free(now);
	free(cur);
	free(coll);
	free(x);
	assert_int_equal(umount(mnt), 0);
	rmdir(mnt);
	free(mnt);
}

/* A staging directory of coll whose shard file has grown past min_bytes:
 * the build is inside its encode pass, with the file half-written. */
struct midway {
	const char *coll;
	const char *shard; /* file name inside the staging directory */
	long long min_bytes;
	char found[4096]; /* path of that shard file, once seen */
};

static int
encode_midway(void *arg)
{
	struct midway *mw = arg;
	DIR *d = opendir(mw->coll);
	if (d == NULL)
		return 0;
	struct dirent *e;
	int ready = 0;
	while (!ready && (e = readdir(d)) != NULL) {
		if (strncmp(e->d_name, ".staging-", 9) != 0 && strncmp(e->d_name, ".encode-", 8) != 0)
			continue;
		struct stat st;
		snprintf(mw->found, sizeof(mw->found), "%s/%s/%s", mw->coll, e->d_name, mw->shard);
		ready = stat(mw->found, &st) == 0 && st.st_size >= mw->min_bytes;
	}
	closedir(d);
	return ready;
}

/* run_interrupted runs a one-shot build of input into out/intr that gets
 * sig once encode has written part of its shard file. */
static int
run_interrupted(const char *input, const char *out, int sig, struct midway *mw)
{
	const char *argv[]
	    = { CANDEX_BIN, "build", "--input", input, "--collection", "intr", "--metric", "l2", "--factory",
		      "IVF64,PQ4", "--train-sample", "3000", "--refine", "fp32", "--out", out, NULL };
	struct tu_exec_opts eo = { .ready = encode_midway, .arg = mw, .signal_when_ready = sig };
	int was_ready = 0;
	char *o = NULL;
	int rc = tu_exec(&o, &eo, NULL, &was_ready, argv);
	if (!was_ready)
		fprintf(stderr, "the build ended (%d) before its shard file reached %lld bytes:\n%s\n", rc,
		    mw->min_bytes, o);
	assert_true(was_ready);
	free(o);
	return rc;
}

/* serve_and_query starts `candex serve` on index_dir, asks it for the
 * nearest neighbour of row 5 of int-small.fvecs and checks that version
 * answers with id 5; then stops the server. */
static void
serve_and_query(const char *index_dir, const char *version)
{
	char *url = pathf("ipc://%s/serve.ipc", root);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		int fd = open("/dev/null", O_WRONLY);
		dup2(fd, 1);
		dup2(fd, 2);
		execl(CANDEX_BIN, "candex", "serve", "--index-dir", index_dir, "--listen", url, "--threads",
		    "1", (char *) NULL);
		_exit(127);
	}
	char *out = NULL;
	int rc = -1;
	for (int tries = 0; tries < 100 && rc != 0; tries++) {
		free(out);
		out = NULL;
		rc = tu_run(&out,
		    "%s query --url %s --collection intr --vector-file %s/int-small.fvecs --row 5 -k 1 "
		    "--refine 4 --json --timeout 2000 --retries 0",
		    CANDEX_BIN, url, root);
		if (rc != 0)
			usleep(100000);
	}
	if (rc != 0 || strstr(out, version) == NULL)
		fprintf(stderr, "query: %d\n%s\n", rc, out);
	assert_int_equal(rc, 0);
	assert_non_null(strstr(out, version));
	assert_true(strstr(out, "\"id\":5,") != NULL || strstr(out, "\"id\": 5,") != NULL);
	free(out);
	kill(pid, SIGTERM);
	int status;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	free(url);
}

static void
test_interrupted(void **state)
{
	(void) state;
	float *x = gen("int-small.fvecs", 3000, 16, 9);
	free(x);
	x = gen("int-big.fvecs", 200000, 16, 10); /* 13 MB, 12.8 MB of fp32 refine store */
	free(x);
	build_ok("--input %s/int-small.fvecs --collection intr --metric l2 --refine fp32 --out %s/intr-idx "
	         "--quiet",
	    root, root);
	char *coll = pathf("%s/intr-idx/intr", root);
	char *cur = tu_current(coll);
	char *big = pathf("%s/int-big.fvecs", root), *out = pathf("%s/intr-idx", root);
	int versions, staging;
	/* 256 KiB input chunks: the refine part grows step by step */
	setenv("CANDEX_BUILD_CHUNK_BYTES", "262144", 1);
	struct midway mw = { .coll = coll, .shard = "shard-0000-of-0001.cdx", .min_bytes = 1 << 20 };

	/* SIGTERM mid-encode: staging removed, exit 128+15, old CURRENT kept */
	assert_int_equal(run_interrupted(big, out, SIGTERM, &mw), 128 + SIGTERM);
	tu_count_dirs(coll, &versions, &staging);
	assert_int_equal(staging, 0);
	assert_int_equal(versions, 1);
	char *now = tu_current(coll);
	assert_string_equal(now, cur);
	free(now);

	/* SIGKILL mid-encode: a half-written shard is left in a staging directory */
	assert_int_equal(run_interrupted(big, out, SIGKILL, &mw), -SIGKILL);
	unsetenv("CANDEX_BUILD_CHUNK_BYTES");
	tu_count_dirs(coll, &versions, &staging);
	assert_int_equal(staging, 1);
	assert_int_equal(versions, 1);
	struct stat st;
	assert_int_equal(stat(mw.found, &st), 0);
	assert_true(st.st_size >= (1 << 20));
	cdx_shard *half = NULL;
	assert_int_not_equal(cdx_shard_open(&half, mw.found), CDX_OK); /* no header yet */
	assert_null(half);
	/* ... which no reader takes for a version: CURRENT, resolve, load,
	 * search and inspect all see the previous version */
	now = tu_current(coll);
	assert_string_equal(now, cur);
	free(now);
	char resolved[CDX_NAME_MAX];
	assert_int_equal(cdx_version_resolve(coll, resolved), CDX_OK);
	assert_string_equal(resolved, cur);
	char *insp = NULL;
	assert_int_equal(tu_run(&insp, "%s inspect %s", CANDEX_BIN, coll), 0);
	assert_non_null(strstr(insp, "verify: OK"));
	assert_non_null(strstr(insp, cur));
	free(insp);
	cdx_collection *c = NULL;
	assert_int_equal(cdx_collection_load(&c, coll), CDX_OK);
	assert_int_equal(cdx_collection_manifest(c)->items, 3000);
	assert_string_equal(cdx_collection_manifest(c)->version, cur);
	x = malloc(3000 * 16 * sizeof(float));
	tu_clustered(x, 3000, 16, 20, 9);
	assert_true(self_hits(c, x, 16, 20) >= 19);
	free(x);
	cdx_collection_unref(c);
	/* a server started now serves the previous version */
	serve_and_query(out, cur);
	/* the next build succeeds, and its gc removes the dead builder's staging directory */
	build_ok(
	    "--input %s/int-small.fvecs --collection intr --metric l2 --out %s/intr-idx --quiet", root, root);
	tu_count_dirs(coll, &versions, &staging);
	assert_int_equal(staging, 0);
	assert_int_equal(versions, 2);
	now = tu_current(coll);
	assert_string_not_equal(now, cur);
	free(now);
	assert_int_equal(tu_run(NULL, "%s inspect %s", CANDEX_BIN, coll), 0);
	free(big);
	free(out);
	free(cur);
	free(coll);
}

/* line_index returns the index of the first line of log (an array of
 * n lines) equal to want, or -1. */
static int
line_index(char **log, int n, const char *want)
{
	for (int i = 0; i < n; i++)
		if (strcmp(log[i], want) == 0)
			return i;
	return -1;
}

/* Publishing is durable before it is visible: with every fsync, rename and
 * symlink of a real build logged (LD_PRELOAD), each shard file, the
 * manifest and the staging directory are fsynced before the rename that
 * makes the version visible, the collection directory after it, and
 * CURRENT is swapped last, by renaming a new symlink over it. */
static void
test_publish_durability(void **state)
{
	(void) state;
	free(gen("dur.fvecs", 3000, 16, 14));
	char *logp = pathf("%s/fsync.log", root), *out = pathf("%s/dur", root);
	char *coll = pathf("%s/dur/dur", root), *in = pathf("%s/dur.fvecs", root);
	setenv("CANDEX_FSYNC_LOG", logp, 1);
	tu_preload_begin(CANDEX_FSYNC_LOG_LIB);
	const char *argv[] = { CANDEX_BIN, "build", "--input", in, "--collection", "dur", "--metric", "l2",
		"--shards", "2", "--refine", "sq8", "--quiet", "--out", out, NULL };
	char *o = NULL;
	int rc = tu_exec(&o, NULL, NULL, NULL, argv);
	tu_preload_end();
	unsetenv("CANDEX_FSYNC_LOG");
	if (rc != 0)
		fprintf(stderr, "%s\n", o);
	assert_int_equal(rc, 0);
	free(o);

	char *text = NULL;
	size_t len = 0;
	assert_int_equal(cdx_read_file(logp, &text, &len), CDX_OK);
	char *lines[4096];
	int n = 0;
	for (char *save = NULL, *l = strtok_r(text, "\n", &save); l && n < 4096;
	     l = strtok_r(NULL, "\n", &save))
		lines[n++] = l;
	char *cur = tu_current(coll);
	assert_non_null(cur);
	char *final = NULL, *staging = NULL, *want = NULL;
	char *rc_coll = realpath(coll, NULL);
	assert_non_null(rc_coll);
	assert_true(asprintf(&final, "%s/%s", rc_coll, cur) >= 0);
	/* the staging directory is what was renamed to the version */
	int publish = -1;
	for (int i = 0; i < n; i++) {
		char *sp = strchr(lines[i], ' ');
		if (strncmp(lines[i], "rename ", 7) == 0 && sp && strstr(lines[i], "/.staging-")
		    && strcmp(strrchr(lines[i], ' ') + 1, final) == 0) {
			publish = i;
			staging = strndup(lines[i] + 7, (size_t) (strrchr(lines[i], ' ') - (lines[i] + 7)));
		}
	}
	if (publish < 0)
		fprintf(stderr, "no rename of a staging directory to %s in:\n%s\n", final, text);
	assert_true(publish >= 0);
	for (int s = 0; s < 2; s++) {
		assert_true(asprintf(&want, "fsync %s/shard-000%d-of-0002.cdx", staging, s) >= 0);
		int i = line_index(lines, n, want);
		assert_true(i >= 0 && i < publish);
		free(want);
	}
	int mf = -1;
	for (int i = 0; i < publish; i++)
		if (strncmp(lines[i], "rename ", 7) == 0 && strstr(lines[i], "/manifest.json")
		    && strstr(lines[i], staging))
			mf = i;
	assert_true(mf >= 0);
	/* the manifest's temporary file was fsynced before it was renamed into place */
	char *tmp = strndup(lines[mf] + 7, (size_t) (strchr(lines[mf] + 7, ' ') - (lines[mf] + 7)));
	assert_true(asprintf(&want, "fsync %s", tmp) >= 0);
	int mfs = line_index(lines, n, want);
	assert_true(mfs >= 0 && mfs < mf);
	free(want);
	free(tmp);
	assert_true(asprintf(&want, "fsync %s", staging) >= 0);
	int sd = -1;
	for (int i = mf; i < publish; i++)
		if (strcmp(lines[i], want) == 0)
			sd = i;
	assert_true(sd > mf); /* the directory entries (shards, manifest) are durable */
	free(want);
	assert_true(asprintf(&want, "fsync %s", rc_coll) >= 0);
	int cd = -1;
	for (int i = publish; i < n && cd < 0; i++)
		if (strcmp(lines[i], want) == 0)
			cd = i;
	assert_true(cd > publish);
	free(want);
	/* CURRENT: a new symlink to the version, renamed over CURRENT, then the directory fsynced */
	int swap = -1, link = -1;
	for (int i = 0; i < n; i++) {
		char *last = strrchr(lines[i], ' ');
		if (strncmp(lines[i], "symlink ", 8) == 0 && strncmp(lines[i] + 8, cur, strlen(cur)) == 0)
			link = i;
		if (strncmp(lines[i], "rename ", 7) == 0 && last && strlen(last + 1) >= 8
		    && strcmp(last + 1 + strlen(last + 1) - 8, "/CURRENT") == 0)
			swap = i;
	}
	assert_true(link > cd);
	assert_true(swap > link);
	assert_true(asprintf(&want, "fsync %s", rc_coll) >= 0);
	int after = -1;
	for (int i = swap; i < n && after < 0; i++)
		if (strcmp(lines[i], want) == 0)
			after = i;
	assert_true(after > swap);
	free(want);
	free(rc_coll);
	free(final);
	free(staging);
	free(cur);
	free(text);
	free(in);
	free(coll);
	free(out);
	free(logp);
}

static void
test_gc_keep(void **state)
{
	(void) state;
	float *x = gen("gc.fvecs", 1200, 8, 11);
	free(x);
	char *coll = pathf("%s/idx/gc", root);
	char *names[4];
	for (int i = 0; i < 4; i++) {
		build_ok("--input %s/gc.fvecs --collection gc --metric l2 --keep 2 --out %s/idx --quiet",
		    root, root);
		names[i] = tu_current(coll);
		if (i > 0)
			assert_true(strcmp(names[i], names[i - 1]) > 0); /* names sort by time */
	}
	int versions, staging;
	tu_count_dirs(coll, &versions, &staging);
	assert_int_equal(versions, 2);
	struct stat st;
	for (int i = 0; i < 4; i++) {
		char *d = pathf("%s/%s", coll, names[i]);
		assert_int_equal(stat(d, &st) == 0, i >= 2);
		free(d);
		free(names[i]);
	}
	free(coll);
}

/* leave_killed_attempt runs in the encode job's process before exec: it
 * leaves what a killed earlier attempt with the same pid would have left. */
static void
leave_killed_attempt(void *arg)
{
	char dir[4096], file[4200];
	snprintf(dir, sizeof(dir), "%s/.encode-0-%d", (const char *) arg, (int) getpid());
	snprintf(file, sizeof(file), "%s/shard-0000-of-0003.cdx", dir);
	mkdir(dir, 0755);
	FILE *f = fopen(file, "w");
	if (f != NULL) {
		fputs("half-written", f);
		fclose(f);
	}
}

static void
test_distributed(void **state)
{
	(void) state;
	float *x = gen("dist.fvecs", 5000, 16, 12);
	free(x);
	char *keys = pathf("%s/dist.keys", root), *work = pathf("%s/work", root);
	assert_int_equal(tu_write_keys(keys, "spotify:episode:", 5000), 0);
	const char *common = "--collection dist --metric cos --shards 3 --refine sq8 --seed 5";
	build_ok("--input %s/dist.fvecs --keys %s %s --out %s/one --quiet", root, keys, common, root);
	build_ok("train --input %s/dist.fvecs --keys %s %s --out %s/two --work %s --quiet", root, keys,
	    common, root, work);
	char *out = NULL;
	/* publish before every shard is encoded */
	assert_int_equal(build(&out, "publish --work %s", work), 1);
	assert_non_null(strstr(out, "has not been encoded"));
	free(out);
	assert_int_equal(build(&out, "encode --work %s --shard 0 --of 4", work), 1);
	assert_non_null(strstr(out, "does not match"));
	free(out);
	/* an input of another dimension (here mounted at another path) is refused */
	free(gen("dist12.fvecs", 5000, 12, 12));
	assert_int_equal(
	    build(&out, "encode --work %s --shard 0 --of 3 --input %s/dist12.fvecs", work, root), 1);
	if (strstr(out, "dist12.fvecs") == NULL || strstr(out, "changed since training") == NULL)
		fprintf(stderr, "%s\n", out);
	assert_non_null(strstr(out, "dist12.fvecs"));
	assert_non_null(strstr(out, "changed since training"));
	free(out);
	/* any order, as parallel jobs would finish */
	build_ok("encode --work %s --shard 2 --of 3 --quiet", work);
	/* a retry of a killed job with the same pid (pods are all pid 1) does not
	 * trip over the half-written output the killed attempt left */
	const char *enc0[]
	    = { CANDEX_BIN, "build", "encode", "--work", work, "--shard", "0", "--of", "3", "--quiet", NULL };
	struct tu_exec_opts eo = { .child_setup = leave_killed_attempt, .arg = work };
	char *o = NULL;
	int rc = tu_exec(&o, &eo, NULL, NULL, enc0);
	if (rc != 0)
		fprintf(stderr, "%s\n", o);
	assert_int_equal(rc, 0);
	free(o);
	build_ok("encode --work %s --shard 1 --of 3 --quiet", work);
	build_ok("encode --work %s --shard 1 --of 3 --quiet", work); /* a retried job is harmless */
	/* publish re-verifies every shard: a bit flipped in a work shard after its
	 * job finished is caught, and nothing is published */
	char *w1 = pathf("%s/shard-0001-of-0003.cdx", work), *w1copy = pathf("%s/w1.copy", root);
	assert_int_equal(tu_run(NULL, "cp %s %s", w1, w1copy), 0);
	struct stat st;
	assert_int_equal(stat(w1, &st), 0);
	FILE *f = fopen(w1, "r+b");
	assert_non_null(f);
	fseek(f, st.st_size - 100, SEEK_SET);
	int ch = fgetc(f);
	fseek(f, st.st_size - 100, SEEK_SET);
	fputc(ch ^ 0x10, f);
	fclose(f);
	char *c2 = pathf("%s/two/dist", root);
	assert_int_equal(build(&out, "publish --work %s", work), 1);
	if (strstr(out, "shard-0001-of-0003.cdx") == NULL || strstr(out, "checksum") == NULL)
		fprintf(stderr, "%s\n", out);
	assert_non_null(strstr(out, "shard-0001-of-0003.cdx"));
	assert_non_null(strstr(out, "checksum"));
	free(out);
	int versions, staging;
	tu_count_dirs(c2, &versions, &staging);
	assert_int_equal(versions, 0);
	assert_int_equal(staging, 0);
	assert_null(tu_current(c2));
	assert_int_equal(rename(w1copy, w1), 0);
	free(w1);
	free(w1copy);
	assert_int_equal(build(&out, "publish --work %s", work), 0);
	char *c1 = pathf("%s/one/dist", root);
	char *v1 = tu_current(c1), *v2 = tu_current(c2);
	assert_non_null(strstr(out, v2));
	free(out);
	for (uint32_t s = 0; s < 3; s++) {
		char name[CDX_NAME_MAX];
		cdx_build_shard_name(name, s, 3);
		char *a = pathf("%s/%s/%s", c1, v1, name), *b = pathf("%s/%s/%s", c2, v2, name);
		assert_true(tu_files_equal(a, b));
		free(a);
		free(b);
	}
	struct cdx_manifest *m1 = NULL, *m2 = NULL;
	char *d1 = pathf("%s/%s", c1, v1), *d2 = pathf("%s/%s", c2, v2);
	assert_int_equal(cdx_manifest_load(&m1, d1), CDX_OK);
	assert_int_equal(cdx_manifest_load(&m2, d2), CDX_OK);
	assert_true(m1->input_fingerprint == m2->input_fingerprint);
	for (uint32_t s = 0; s < 3; s++)
		assert_true(m1->shards[s].xxh64 == m2->shards[s].xxh64);
	cdx_manifest_free(m1);
	cdx_manifest_free(m2);
	/* publishing again makes another version from the same work */
	build_ok("publish --work %s --quiet", work);
	tu_count_dirs(c2, &versions, &staging);
	assert_int_equal(versions, 2);
	/* an input that changed since train is refused by encode */
	x = gen("dist.fvecs", 5001, 16, 12);
	free(x);
	assert_int_equal(build(&out, "encode --work %s --shard 0 --of 3", work), 1);
	assert_non_null(strstr(out, "changed since training"));
	free(out);
	free(d1);
	free(d2);
	free(v1);
	free(v2);
	free(c1);
	free(c2);
	free(keys);
	free(work);
}

int
main(void)
{
	/* The candex children share two cores with other test processes:
	 * OpenMP's default spin-waiting then makes Faiss's many short parallel
	 * regions 10x slower (measured 9 s vs 0.7 s for one build). */
	setenv("OMP_WAIT_POLICY", "passive", 0);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_metrics_and_refine),
		cmocka_unit_test(test_input_formats),
		cmocka_unit_test(test_keys_ids_shards),
		cmocka_unit_test(test_small_and_factories),
		cmocka_unit_test(test_determinism),
		cmocka_unit_test(test_bad_inputs),
		cmocka_unit_test(test_disk_full_rlimit),
		cmocka_unit_test(test_disk_full_tmpfs),
		cmocka_unit_test(test_interrupted),
		cmocka_unit_test(test_publish_durability),
		cmocka_unit_test(test_gc_keep),
		cmocka_unit_test(test_distributed),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
