/* params_test.c — the builder's default parameters, factory checks and sampling. */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

#include "builder/build.h"

static void
test_default_nlist(void **state)
{
	(void) state;
	/* power of two nearest 4*sqrt(N) */
	assert_int_equal(cdx_build_default_nlist(140283), 1024);    /* 4*sqrt = 1498 */
	assert_int_equal(cdx_build_default_nlist(340479), 2048);    /* 2334 */
	assert_int_equal(cdx_build_default_nlist(1000000), 4096);   /* 4000 */
	assert_int_equal(cdx_build_default_nlist(10000000), 16384); /* 12649: nearer 16384 */
	assert_int_equal(cdx_build_default_nlist(50000000), 32768); /* 28284 */
	/* clamped to [16, 65536] */
	assert_int_equal(cdx_build_default_nlist(1000000000000ULL), 65536);
	/* and to N/39: Last.fm 6453 -> 256 would leave 25 points per centroid */
	assert_int_equal(cdx_build_default_nlist(6453), 128);
	assert_int_equal(cdx_build_default_nlist(1000), 16);
	for (uint64_t n = 1000; n < 5000000; n = n * 3 + 7) {
		uint32_t nl = cdx_build_default_nlist(n);
		assert_true((nl & (nl - 1)) == 0);
		assert_true((uint64_t) nl * 39 <= n);
		assert_true(nl >= 16);
	}
}

static void
test_default_pq_m(void **state)
{
	(void) state;
	assert_int_equal(cdx_build_default_pq_m(128), 32);
	assert_int_equal(cdx_build_default_pq_m(100), 25);
	assert_int_equal(cdx_build_default_pq_m(64), 16);
	assert_int_equal(cdx_build_default_pq_m(96), 24);
	assert_int_equal(cdx_build_default_pq_m(768), 192);
	assert_int_equal(cdx_build_default_pq_m(30), 6); /* 30/4 = 7 does not divide; 6 does */
	assert_int_equal(cdx_build_default_pq_m(97), 1); /* prime */
	assert_int_equal(cdx_build_default_pq_m(3), 1);
	for (uint32_t d = 1; d < 300; d++) {
		uint32_t m = cdx_build_default_pq_m(d);
		assert_int_equal(d % m, 0);
		assert_true(m == 1 || m <= d / 4);
	}
}

static void
test_choose_defaults(void **state)
{
	(void) state;
	struct cdx_build_params p;
	/* tiny: exact Flat, and it says why */
	assert_int_equal(cdx_build_params_choose(&p, 500, 32, NULL, 0, 0), CDX_OK);
	assert_string_equal(p.factory, "Flat");
	assert_true(p.flat);
	assert_int_equal(p.nlist, 0);
	assert_non_null(strstr(p.note, "Flat"));
	assert_int_equal(p.default_nprobe, 1);
	/* Last.fm: 4-bit codebooks */
	assert_int_equal(cdx_build_params_choose(&p, 6453, 64, NULL, 0, 0), CDX_OK);
	assert_string_equal(p.factory, "IVF128,PQ16x4np");
	assert_int_equal(p.nlist, 128);
	assert_int_equal(p.pq_m, 16);
	assert_int_equal(p.pq_nbits, 4);
	assert_int_equal(p.train_sample, 6453);
	assert_int_equal(p.default_nprobe, 4);
	assert_non_null(strstr(p.note, "4-bit"));
	/* SIFT-like */
	assert_int_equal(cdx_build_params_choose(&p, 140283, 128, NULL, 0, 0), CDX_OK);
	assert_string_equal(p.factory, "IVF1024,PQ32x8np");
	assert_int_equal(p.train_sample, 100000);
	assert_int_equal(p.default_nprobe, 32);
	assert_string_equal(p.note, "");
	/* 1M: sample = 64 * nlist */
	assert_int_equal(cdx_build_params_choose(&p, 1000000, 128, NULL, 0, 0), CDX_OK);
	assert_string_equal(p.factory, "IVF4096,PQ32x8np");
	assert_int_equal(p.train_sample, 262144);
	assert_int_equal(p.default_nprobe, 128);
	/* 50M: nprobe capped */
	assert_int_equal(cdx_build_params_choose(&p, 50000000, 100, NULL, 0, 0), CDX_OK);
	assert_string_equal(p.factory, "IVF32768,PQ25x8np");
	assert_int_equal(p.default_nprobe, 256);
	/* explicit sample size, capped at N */
	assert_int_equal(cdx_build_params_choose(&p, 20000, 16, NULL, 0, 5000), CDX_OK);
	assert_int_equal(p.train_sample, 5000);
	assert_int_equal(cdx_build_params_choose(&p, 20000, 16, NULL, 0, 50000), CDX_OK);
	assert_int_equal(p.train_sample, 20000);
	/* nothing to index */
	assert_int_equal(cdx_build_params_choose(&p, 0, 16, NULL, 0, 0), CDX_EEMPTY);
}

/* Every example in docs/builder.md's "Default parameters" table. */
static void
test_documented_examples(void **state)
{
	(void) state;
	struct cdx_build_params p;
	static const struct {
		uint64_t n;
		uint32_t dim;
		const char *factory;
		uint64_t sample;
		uint32_t nprobe;
	} rows[] = {
		{ 500, 64, "Flat", 500, 1 },
		{ 6453, 64, "IVF128,PQ16x4np", 6453, 4 },
		{ 140000, 128, "IVF1024,PQ32x8np", 100000, 32 },
		{ 340000, 100, "IVF2048,PQ25x8np", 131072, 64 },
		{ 1000000, 128, "IVF4096,PQ32x8np", 262144, 128 },
		{ 10000000, 128, "IVF16384,PQ32x8np", 1048576, 256 },
		{ 50000000, 96, "IVF32768,PQ24x8np", 2097152, 256 },
	};
	for (size_t i = 0; i < CDX_ARRAY_LEN(rows); i++) {
		assert_int_equal(cdx_build_params_choose(&p, rows[i].n, rows[i].dim, NULL, 0, 0), CDX_OK);
		assert_string_equal(p.factory, rows[i].factory);
		assert_int_equal(p.train_sample, rows[i].sample);
		assert_int_equal(p.default_nprobe, rows[i].nprobe);
	}
	struct cdx_build_opts o;
	cdx_build_opts_init(&o);
	assert_int_equal(o.seed, CDX_BUILD_DEFAULT_SEED);
	assert_int_equal(CDX_BUILD_DEFAULT_SEED, 1234);
	assert_int_equal(o.keep, 3);
	assert_int_equal(o.nshards, 1);
	assert_int_equal(o.refine, CDX_REFINE_NONE);
	assert_int_equal(o.threads, 0);
	assert_int_equal(o.polysemous, 0);
	unsetenv("CANDEX_BUILD_CHUNK_BYTES");
	assert_int_equal(cdx_build_chunk_bytes(), 64u << 20);
	setenv("CANDEX_BUILD_CHUNK_BYTES", "65536", 1);
	assert_int_equal(cdx_build_chunk_bytes(), 65536);
	setenv("CANDEX_BUILD_CHUNK_BYTES", "12", 1); /* out of range: ignored */
	assert_int_equal(cdx_build_chunk_bytes(), 64u << 20);
	unsetenv("CANDEX_BUILD_CHUNK_BYTES");
}

static void
test_choose_factory(void **state)
{
	(void) state;
	struct cdx_build_params p;
	assert_int_equal(cdx_build_params_choose(&p, 100000, 64, "IVF256,PQ8x4", 0, 0), CDX_OK);
	assert_string_equal(p.factory, "IVF256,PQ8x4np");
	assert_int_equal(p.nlist, 256);
	assert_int_equal(p.pq_m, 8);
	assert_int_equal(p.pq_nbits, 4);
	assert_int_equal(p.default_nprobe, 8);
	/* too many lists for the data: allowed, with a note */
	assert_int_equal(cdx_build_params_choose(&p, 2000, 64, "IVF1024,Flat", 0, 0), CDX_OK);
	assert_int_equal(p.nlist, 1024);
	assert_int_equal(p.pq_m, 0);
	assert_non_null(strstr(p.note, "39"));
	assert_int_equal(cdx_build_params_choose(&p, 2000, 64, "Flat", 0, 0), CDX_OK);
	assert_true(p.flat);
}

static void
test_factory_rewrite(void **state)
{
	(void) state;
	char out[256];
	assert_int_equal(cdx_build_factory_rewrite("IVF1024,PQ32", 0, out, sizeof(out)), CDX_OK);
	assert_string_equal(out, "IVF1024,PQ32np");
	assert_int_equal(cdx_build_factory_rewrite("IVF1024,PQ32x4", 0, out, sizeof(out)), CDX_OK);
	assert_string_equal(out, "IVF1024,PQ32x4np");
	assert_int_equal(cdx_build_factory_rewrite("IVF1024,PQ32x8np", 0, out, sizeof(out)), CDX_OK);
	assert_string_equal(out, "IVF1024,PQ32x8np");
	assert_int_equal(cdx_build_factory_rewrite("PQ16", 0, out, sizeof(out)), CDX_OK);
	assert_string_equal(out, "PQ16np");
	assert_int_equal(cdx_build_factory_rewrite("IVF4096_HNSW32,PQ32", 0, out, sizeof(out)), CDX_OK);
	assert_string_equal(out, "IVF4096_HNSW32,PQ32np");
	assert_int_equal(cdx_build_factory_rewrite("IVF256,SQ8", 0, out, sizeof(out)), CDX_OK);
	assert_string_equal(out, "IVF256,SQ8");
	/* --polysemous keeps it */
	assert_int_equal(cdx_build_factory_rewrite("IVF1024,PQ32", 1, out, sizeof(out)), CDX_OK);
	assert_string_equal(out, "IVF1024,PQ32");
	/* fast-scan has no polysemous training: kept as given */
	assert_int_equal(cdx_build_factory_rewrite("IVF1024,PQ32x4fs", 0, out, sizeof(out)), CDX_OK);
	assert_string_equal(out, "IVF1024,PQ32x4fs");
	assert_int_equal(cdx_build_factory_rewrite("IVF1024,PQ32x4fsr", 0, out, sizeof(out)), CDX_OK);
	assert_string_equal(out, "IVF1024,PQ32x4fsr");
	/* refused, saying why */
	assert_int_equal(cdx_build_factory_rewrite("L2norm,IVF1024,PQ32", 0, out, sizeof(out)), CDX_EINVAL);
	assert_non_null(strstr(cdx_last_error(), "--metric cos"));
	assert_int_equal(cdx_build_factory_rewrite("IVF1024,,PQ32", 0, out, sizeof(out)), CDX_EINVAL);
	assert_int_equal(cdx_build_factory_rewrite("", 0, out, sizeof(out)), CDX_EINVAL);
	char small[8];
	assert_int_equal(cdx_build_factory_rewrite("IVF1024,PQ32", 0, small, sizeof(small)), CDX_EINVAL);
}

static void
test_sample(void **state)
{
	(void) state;
	const uint64_t n = 100000, k = 5000;
	uint64_t *a = malloc(k * sizeof(uint64_t)), *b = malloc(k * sizeof(uint64_t)),
	         *c = malloc(k * sizeof(uint64_t));
	cdx_build_sample(n, k, 1234, a);
	cdx_build_sample(n, k, 1234, b);
	cdx_build_sample(n, k, 99, c);
	assert_memory_equal(a, b, k * sizeof(uint64_t));
	assert_true(memcmp(a, c, k * sizeof(uint64_t)) != 0);
	double sum = 0;
	for (uint64_t i = 0; i < k; i++) {
		assert_true(a[i] < n);
		if (i > 0)
			assert_true(a[i] > a[i - 1]); /* ascending, distinct */
		sum += (double) a[i];
	}
	/* uniform: the mean is near n/2 (sd of the mean ~ n/sqrt(12k) ~ 400) */
	assert_true(sum / (double) k > n / 2.0 - 3000 && sum / (double) k < n / 2.0 + 3000);
	/* k >= n: every row */
	uint64_t all[10];
	cdx_build_sample(10, 10, 5, all);
	for (int i = 0; i < 10; i++)
		assert_int_equal(all[i], i);
	/* exactly k even when k is close to n */
	cdx_build_sample(1000, 999, 7, a);
	assert_true(a[998] < 1000);
	for (int i = 1; i < 999; i++)
		assert_true(a[i] > a[i - 1]);
	free(a);
	free(b);
	free(c);
}

static void
test_shards(void **state)
{
	(void) state;
	char name[CDX_NAME_MAX];
	cdx_build_shard_name(name, 3, 16);
	assert_string_equal(name, "shard-0003-of-0016.cdx");
	assert_int_equal(cdx_build_shard_of(12345, 1), 0);
	uint64_t count[4] = { 0 };
	for (int64_t id = 0; id < 40000; id++) {
		uint32_t s = cdx_build_shard_of(id, 4);
		assert_true(s < 4);
		assert_int_equal(s, (uint32_t) (cdx_mix64((uint64_t) id) % 4));
		count[s]++;
	}
	for (int s = 0; s < 4; s++)
		assert_true(count[s] > 9500 && count[s] < 10500);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_default_nlist),
		cmocka_unit_test(test_default_pq_m),
		cmocka_unit_test(test_choose_defaults),
		cmocka_unit_test(test_documented_examples),
		cmocka_unit_test(test_choose_factory),
		cmocka_unit_test(test_factory_rewrite),
		cmocka_unit_test(test_sample),
		cmocka_unit_test(test_shards),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
