/* manifest_test.c — manifest.json round trips (unknown fields kept), strict
 * validation naming the bad field, and the version directory: names,
 * publish/resolve, path resolution, gc of old versions and stale staging. */
#define _GNU_SOURCE
#include "testutil.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "shard/manifest.h"

static struct cdx_manifest *
sample_manifest(const char *version)
{
	struct cdx_manifest *m = calloc(1, sizeof(*m));
	m->format_version = CDX_MANIFEST_FORMAT_VERSION;
	snprintf(m->collection, sizeof(m->collection), "tracks");
	snprintf(m->version, sizeof(m->version), "%s", version);
	snprintf(m->model_version, sizeof(m->model_version), "two-tower-v7");
	snprintf(m->factory, sizeof(m->factory), "IVF256,PQ16x8np");
	m->metric = CDX_METRIC_COS;
	m->dim = 64;
	m->items = 30;
	m->nlist = 256;
	m->pq_m = 16;
	m->pq_nbits = 8;
	m->default_nprobe = 24;
	m->refine = CDX_REFINE_SQ8;
	m->default_refine_factor = 1.1f; /* not exact in binary: written as 1.1 */
	m->nshards = 2;
	m->shards = calloc(2, sizeof(*m->shards));
	snprintf(m->shards[0].file, sizeof(m->shards[0].file), "shard-000.cdx");
	m->shards[0].bytes = 123456;
	m->shards[0].rows = 10;
	m->shards[0].xxh64 = 0xfedcba9876543210ULL;
	snprintf(m->shards[1].file, sizeof(m->shards[1].file), "shard-001.cdx");
	m->shards[1].bytes = 5000000000ULL;
	m->shards[1].rows = 20;
	m->shards[1].xxh64 = 0x1ULL;
	m->npoints = 2;
	m->points = calloc(2, sizeof(*m->points));
	m->points[0] = (struct cdx_operating_point) { .recall_target = 0.9,
		.recall = 0.9213,
		.k = 100,
		.nprobe = 16,
		.refine_factor = 1.0f,
		.p99_ms = 3.25 };
	m->points[1] = (struct cdx_operating_point) { .recall_target = 0.95,
		.recall = 0.9571,
		.k = 100,
		.nprobe = 48,
		.refine_factor = 2.0f,
		.p99_ms = 7.5 };
	m->seed = 0xffffffffffffff01ULL; /* above INT64_MAX: stored as a string */
	m->train_sample = 100000;
	snprintf(m->input_path, sizeof(m->input_path), "/data/tracks.fvecs");
	m->input_bytes = 7700000000ULL;
	m->input_fingerprint = 0x0123456789abcdefULL;
	snprintf(m->created, sizeof(m->created), "2024-05-01T12:00:00.000Z");
	snprintf(m->candex_version, sizeof(m->candex_version), "0.1.0");
	return m;
}

static void
assert_manifest_equal(const struct cdx_manifest *a, const struct cdx_manifest *b)
{
	assert_int_equal(a->format_version, b->format_version);
	assert_string_equal(a->collection, b->collection);
	assert_string_equal(a->version, b->version);
	assert_string_equal(a->model_version, b->model_version);
	assert_string_equal(a->factory, b->factory);
	assert_int_equal(a->metric, b->metric);
	assert_int_equal(a->dim, b->dim);
	assert_int_equal(a->items, b->items);
	assert_int_equal(a->nlist, b->nlist);
	assert_int_equal(a->pq_m, b->pq_m);
	assert_int_equal(a->pq_nbits, b->pq_nbits);
	assert_int_equal(a->default_nprobe, b->default_nprobe);
	assert_int_equal(a->refine, b->refine);
	assert_true(a->default_refine_factor == b->default_refine_factor);
	assert_int_equal(a->nshards, b->nshards);
	for (uint32_t i = 0; i < a->nshards; i++) {
		assert_string_equal(a->shards[i].file, b->shards[i].file);
		assert_int_equal(a->shards[i].bytes, b->shards[i].bytes);
		assert_int_equal(a->shards[i].rows, b->shards[i].rows);
		assert_true(a->shards[i].xxh64 == b->shards[i].xxh64);
	}
	assert_int_equal(a->npoints, b->npoints);
	for (uint32_t i = 0; i < a->npoints; i++) {
		assert_true(a->points[i].recall_target == b->points[i].recall_target);
		assert_true(a->points[i].recall == b->points[i].recall);
		assert_int_equal(a->points[i].k, b->points[i].k);
		assert_int_equal(a->points[i].nprobe, b->points[i].nprobe);
		assert_true(a->points[i].refine_factor == b->points[i].refine_factor);
		assert_true(a->points[i].p99_ms == b->points[i].p99_ms);
	}
	assert_true(a->seed == b->seed);
	assert_int_equal(a->train_sample, b->train_sample);
	assert_string_equal(a->input_path, b->input_path);
	assert_int_equal(a->input_bytes, b->input_bytes);
	assert_true(a->input_fingerprint == b->input_fingerprint);
	assert_string_equal(a->created, b->created);
	assert_string_equal(a->candex_version, b->candex_version);
}

static void
test_round_trip_and_extra(void **state)
{
	(void) state;
	char *dir = tu_tmpdir("manifest");
	struct cdx_manifest *m = sample_manifest("20240501T120000Z"), *back;
	assert_int_equal(cdx_manifest_save(m, dir), CDX_OK);
	assert_int_equal(cdx_manifest_load(&back, dir), CDX_OK);
	assert_manifest_equal(m, back);
	cdx_manifest_free(back);

	/* human-readable: sorted keys, 2-space indent, hex checksums */
	char *path = tu_path(dir, CDX_MANIFEST_FILE), *text;
	assert_int_equal(cdx_read_file(path, &text, NULL), CDX_OK);
	assert_non_null(strstr(text, "\n  \"build\": {"));
	assert_true(strstr(text, "\"build\"") < strstr(text, "\"collection\""));
	assert_true(strstr(text, "\"collection\"") < strstr(text, "\"shards\""));
	assert_non_null(strstr(text, "\"xxh64\": \"fedcba9876543210\""));
	assert_non_null(strstr(text, "\"fingerprint\": \"0123456789abcdef\""));
	assert_non_null(strstr(text, "\"metric\": \"cos\""));
	assert_non_null(strstr(text, "\"refine\": \"sq8\""));
	assert_non_null(strstr(text, "\"operating_points\": ["));
	assert_non_null(strstr(text, "\"default_refine_factor\": 1.1,"));
	free(text);

	/* a later tool added sections: they survive a load/save by this one */
	json_t *root = json_load_file(path, 0, NULL);
	assert_non_null(root);
	json_object_set_new(
	    root, "propensity", json_pack("{s:s, s:[i,i]}", "model", "ips-v2", "buckets", 3, 4));
	json_object_set_new(root, "zz_note", json_string("hello"));
	assert_int_equal(json_dump_file(root, path, JSON_INDENT(2)), 0);
	json_decref(root);
	assert_int_equal(cdx_manifest_load(&back, dir), CDX_OK);
	assert_manifest_equal(m, back);
	back->default_nprobe = 99;
	assert_int_equal(cdx_manifest_save(back, dir), CDX_OK);
	cdx_manifest_free(back);
	assert_int_equal(cdx_manifest_load(&back, dir), CDX_OK);
	assert_int_equal(back->default_nprobe, 99);
	json_t *extra = back->extra;
	assert_non_null(extra);
	assert_int_equal(json_object_size(extra), 2);
	assert_string_equal(
	    json_string_value(json_object_get(json_object_get(extra, "propensity"), "model")), "ips-v2");
	assert_string_equal(json_string_value(json_object_get(extra, "zz_note")), "hello");
	char *js = cdx_manifest_to_json(back);
	assert_non_null(strstr(js, "\"propensity\""));
	free(js);
	cdx_manifest_free(back);
	cdx_manifest_free(NULL);

	/* optional sections may be absent */
	root = json_load_file(path, 0, NULL);
	json_object_del(root, "operating_points");
	json_object_del(root, "build");
	assert_int_equal(json_dump_file(root, path, 0), 0);
	json_decref(root);
	assert_int_equal(cdx_manifest_load(&back, dir), CDX_OK);
	assert_int_equal(back->npoints, 0);
	assert_int_equal(back->seed, 0);
	cdx_manifest_free(back);

	cdx_manifest_free(m);
	free(path);
	tu_rmdir(dir);
}

/* expect_bad edits a valid manifest with fn and checks the load error. */
static void
expect_bad(const char *dir, const char *jpath_desc, int want, const char *needle, void (*fn)(json_t *))
{
	struct cdx_manifest *m = sample_manifest("v1");
	assert_int_equal(cdx_manifest_save(m, dir), CDX_OK);
	cdx_manifest_free(m);
	char *path = tu_path(dir, CDX_MANIFEST_FILE);
	json_t *root = json_load_file(path, 0, NULL);
	fn(root);
	assert_int_equal(json_dump_file(root, path, 0), 0);
	json_decref(root);
	struct cdx_manifest *back = (struct cdx_manifest *) 1;
	int rc = cdx_manifest_load(&back, dir);
	if (rc != want || strstr(cdx_last_error(), needle) == NULL)
		fail_msg("%s: got %s (%s), want %s mentioning '%s'", jpath_desc, cdx_errname(rc),
		    cdx_last_error(), cdx_errname(want), needle);
	assert_null(back);
	free(path);
}

static void
del_dim(json_t *r)
{
	json_object_del(r, "dim");
}
static void
str_dim(json_t *r)
{
	json_object_set_new(r, "dim", json_string("64"));
}
static void
neg_items(json_t *r)
{
	json_object_set_new(r, "items", json_integer(-1));
}
static void
bad_metric(json_t *r)
{
	json_object_set_new(r, "metric", json_string("cosine"));
}
static void
bad_refine(json_t *r)
{
	json_object_set_new(r, "refine", json_integer(3));
}
static void
bad_hex(json_t *r)
{
	json_object_set_new(json_array_get(json_object_get(r, "shards"), 1), "xxh64", json_string("12345"));
}
static void
bad_file(json_t *r)
{
	json_object_set_new(
	    json_array_get(json_object_get(r, "shards"), 0), "file", json_string("../etc/passwd"));
}
static void
no_rows(json_t *r)
{
	json_object_del(json_array_get(json_object_get(r, "shards"), 0), "rows");
}
static void
rows_mismatch(json_t *r)
{
	json_object_set_new(r, "items", json_integer(31));
}
static void
empty_shards(json_t *r)
{
	json_object_set_new(r, "shards", json_array());
}
static void
bad_point(json_t *r)
{
	json_object_set_new(
	    json_array_get(json_object_get(r, "operating_points"), 1), "nprobe", json_real(1.5));
}
static void
bad_input(json_t *r)
{
	json_object_del(json_object_get(json_object_get(r, "build"), "input"), "fingerprint");
}
static void
newer(json_t *r)
{
	json_object_set_new(r, "format_version", json_integer(CDX_MANIFEST_FORMAT_VERSION + 1));
}
static void
bad_collection(json_t *r)
{
	json_object_set_new(r, "collection", json_string(".hidden"));
}
static void
huge_factor(json_t *r)
{
	/* fuzz_manifest's crash: a float cast made it inf, which no JSON holds */
	json_object_set_new(r, "default_refine_factor", json_real(7.7e78));
}
static void
negative_point_factor(json_t *r)
{
	json_object_set_new(
	    json_array_get(json_object_get(r, "operating_points"), 0), "refine_factor", json_real(-1));
}
static void
not_object(json_t *r)
{
	json_object_clear(r);
}

static void
test_validation(void **state)
{
	(void) state;
	char *dir = tu_tmpdir("manifest");
	expect_bad(dir, "missing dim", CDX_ECORRUPT, "dim is missing", del_dim);
	expect_bad(dir, "string dim", CDX_ECORRUPT, "dim has the wrong type", str_dim);
	expect_bad(dir, "negative items", CDX_ECORRUPT, "items", neg_items);
	expect_bad(dir, "metric", CDX_ECORRUPT, "metric", bad_metric);
	expect_bad(dir, "refine", CDX_ECORRUPT, "refine", bad_refine);
	expect_bad(dir, "huge refine factor", CDX_ECORRUPT, "default_refine_factor", huge_factor);
	expect_bad(dir, "negative point refine factor", CDX_ECORRUPT, "refine_factor", negative_point_factor);
	expect_bad(dir, "hex", CDX_ECORRUPT, "shards[1].xxh64", bad_hex);
	expect_bad(dir, "file", CDX_ECORRUPT, "shards[0].file", bad_file);
	expect_bad(dir, "rows", CDX_ECORRUPT, "shards[0].rows is missing", no_rows);
	expect_bad(dir, "rows sum", CDX_ECORRUPT, "items", rows_mismatch);
	expect_bad(dir, "no shards", CDX_ECORRUPT, "shards", empty_shards);
	expect_bad(dir, "point", CDX_ECORRUPT, "operating_points[1].nprobe", bad_point);
	expect_bad(dir, "input", CDX_ECORRUPT, "build.input.fingerprint", bad_input);
	expect_bad(dir, "newer", CDX_EVERSION, "newer", newer);
	expect_bad(dir, "collection", CDX_ECORRUPT, "collection", bad_collection);
	expect_bad(dir, "empty object", CDX_ECORRUPT, "format_version is missing", not_object);

	char *path = tu_path(dir, CDX_MANIFEST_FILE);
	struct cdx_manifest *m;
	assert_int_equal(cdx_write_file_atomic(path, "{\"dim\": 3,", 10), CDX_OK);
	assert_int_equal(cdx_manifest_load(&m, dir), CDX_ECORRUPT);
	assert_non_null(strstr(cdx_last_error(), path));
	assert_int_equal(cdx_write_file_atomic(path, "[1]", 3), CDX_OK);
	assert_int_equal(cdx_manifest_load(&m, dir), CDX_ECORRUPT);
	unlink(path);
	assert_int_equal(cdx_manifest_load(&m, dir), CDX_ENOTFOUND);
	free(path);
	tu_rmdir(dir);
}

/* --- version directories ------------------------------------------------- */

static void
make_version(const char *coll, const char *version)
{
	char *d = tu_path(coll, version);
	assert_int_equal(cdx_mkdir_p(d, 0755), CDX_OK);
	struct cdx_manifest *m = sample_manifest(version);
	assert_int_equal(cdx_manifest_save(m, d), CDX_OK);
	cdx_manifest_free(m);
	free(d);
}

static int
exists(const char *coll, const char *name)
{
	char *p = tu_path(coll, name);
	struct stat st;
	int r = lstat(p, &st) == 0;
	free(p);
	return r;
}

static void
test_names(void **state)
{
	(void) state;
	assert_true(cdx_name_valid("tracks"));
	assert_true(cdx_name_valid("20240501T120000Z-a1.b_c"));
	assert_false(cdx_name_valid(""));
	assert_false(cdx_name_valid(NULL));
	assert_false(cdx_name_valid(".staging"));
	assert_false(cdx_name_valid(".."));
	assert_false(cdx_name_valid("a/b"));
	assert_false(cdx_name_valid("a b"));
	char n63[64], n64[65];
	memset(n63, 'x', 63);
	n63[63] = 0;
	memset(n64, 'x', 64);
	n64[64] = 0;
	assert_true(cdx_name_valid(n63));
	assert_false(cdx_name_valid(n64));
}

static void
test_publish_resolve(void **state)
{
	(void) state;
	char *dir = tu_tmpdir("versions");
	char *coll = tu_path(dir, "tracks");
	assert_int_equal(cdx_mkdir_p(coll, 0755), CDX_OK);
	char v[CDX_NAME_MAX], rp[PATH_MAX];
	assert_int_equal(cdx_version_resolve(coll, v), CDX_ENOTFOUND);
	assert_int_equal(cdx_version_path_resolve(coll, rp), CDX_ENOTFOUND);

	make_version(coll, "20240501T000000Z");
	make_version(coll, "20240502T000000Z");
	assert_int_equal(cdx_version_publish(coll, "20240501T000000Z"), CDX_OK);
	assert_int_equal(cdx_version_resolve(coll, v), CDX_OK);
	assert_string_equal(v, "20240501T000000Z");
	assert_int_equal(cdx_version_publish(coll, "20240502T000000Z"), CDX_OK);
	assert_int_equal(cdx_version_resolve(coll, v), CDX_OK);
	assert_string_equal(v, "20240502T000000Z");
	/* the link is relative, and no temporary links are left behind */
	char *cur = tu_path(coll, CDX_CURRENT_LINK);
	char target[PATH_MAX];
	ssize_t n = readlink(cur, target, sizeof(target) - 1);
	assert_true(n > 0);
	target[n] = 0;
	assert_string_equal(target, "20240502T000000Z");
	char *out;
	assert_int_equal(tu_run(&out, "ls -A '%s'", coll), 0);
	assert_null(strstr(out, "tmp"));
	free(out);

	/* refusals: bad name, missing directory, directory without manifest */
	assert_int_equal(cdx_version_publish(coll, "../x"), CDX_EINVAL);
	assert_int_equal(cdx_version_publish(coll, "20240509T000000Z"), CDX_ENOTFOUND);
	char *incomplete = tu_path(coll, "20240503T000000Z");
	assert_int_equal(mkdir(incomplete, 0755), 0);
	assert_int_equal(cdx_version_publish(coll, "20240503T000000Z"), CDX_ENOTFOUND);
	assert_int_equal(cdx_version_resolve(coll, v), CDX_OK);
	assert_string_equal(v, "20240502T000000Z");

	/* all three spellings resolve to the real version directory */
	char *vdir = tu_path(coll, "20240502T000000Z");
	char want[PATH_MAX];
	assert_non_null(realpath(vdir, want));
	const char *forms[] = { coll, cur, vdir };
	for (size_t i = 0; i < CDX_ARRAY_LEN(forms); i++) {
		assert_int_equal(cdx_version_path_resolve(forms[i], rp), CDX_OK);
		assert_string_equal(rp, want);
	}
	char *older = tu_path(coll, "20240501T000000Z");
	assert_int_equal(cdx_version_path_resolve(older, rp), CDX_OK);
	assert_non_null(strstr(rp, "20240501T000000Z"));
	assert_int_equal(cdx_version_path_resolve(incomplete, rp), CDX_ENOTFOUND);
	assert_int_equal(cdx_version_path_resolve("/nonexistent/tracks", rp), CDX_ENOTFOUND);

	/* a CURRENT pointing outside the collection is refused */
	assert_int_equal(unlink(cur), 0);
	assert_int_equal(symlink("/etc", cur), 0);
	assert_int_equal(cdx_version_resolve(coll, v), CDX_ECORRUPT);
	free(incomplete);
	free(older);
	free(vdir);
	free(cur);
	free(coll);
	tu_rmdir(dir);
}

static void
set_old(const char *coll, const char *name, int days)
{
	char *p = tu_path(coll, name);
	struct timeval tv[2];
	gettimeofday(&tv[0], NULL);
	tv[0].tv_sec -= days * 86400;
	tv[1] = tv[0];
	assert_int_equal(utimes(p, tv), 0);
	free(p);
}

static void
test_gc(void **state)
{
	(void) state;
	char *dir = tu_tmpdir("gc");
	char *coll = tu_path(dir, "tracks");
	const char *vs[] = { "20240501T000000Z", "20240502T000000Z", "20240503T000000Z", "20240504T000000Z",
		"20240505T000000Z" };
	for (size_t i = 0; i < CDX_ARRAY_LEN(vs); i++)
		make_version(coll, vs[i]);
	/* roll back to an old version: it survives gc although not among the newest */
	assert_int_equal(cdx_version_publish(coll, vs[1]), CDX_OK);

	/* staging: ours (alive), a dead builder's, an old one with no pid, a young one with no pid */
	pid_t child = fork();
	if (child == 0)
		_exit(0);
	assert_int_equal(waitpid(child, NULL, 0), child);
	char mine[CDX_NAME_MAX + 16], dead[64];
	assert_int_equal(cdx_version_staging_name(mine, sizeof(mine), "20240506T000000Z"), CDX_OK);
	assert_int_equal(strncmp(mine, ".staging-", 9), 0);
	snprintf(dead, sizeof(dead), ".staging-%d-20240506T000001Z", (int) child);
	const char *staging[] = { mine, dead, ".staging-old", ".staging-young" };
	for (size_t i = 0; i < CDX_ARRAY_LEN(staging); i++) {
		char *p = tu_path(coll, staging[i]);
		assert_int_equal(cdx_mkdir_p(p, 0755), CDX_OK);
		char *f = tu_path(p, "shard-000.cdx");
		assert_int_equal(cdx_write_file_atomic(f, "x", 1), CDX_OK);
		free(f);
		free(p);
	}
	set_old(coll, ".staging-old", 2);
	/* not a version (no manifest): left alone although it sorts newest */
	char *other = tu_path(coll, "zz-operator-notes");
	assert_int_equal(mkdir(other, 0755), 0);
	free(other);

	assert_int_equal(cdx_version_gc(coll, 2), CDX_OK);
	assert_false(exists(coll, vs[0]));
	assert_true(exists(coll, vs[1])); /* CURRENT */
	assert_false(exists(coll, vs[2]));
	assert_true(exists(coll, vs[3]));
	assert_true(exists(coll, vs[4]));
	assert_true(exists(coll, mine));
	assert_false(exists(coll, dead));
	assert_false(exists(coll, ".staging-old"));
	assert_true(exists(coll, ".staging-young"));
	assert_true(exists(coll, CDX_CURRENT_LINK));
	assert_true(exists(coll, "zz-operator-notes"));

	/* keep 0 still keeps CURRENT's target */
	assert_int_equal(cdx_version_gc(coll, 0), CDX_OK);
	assert_true(exists(coll, vs[1]));
	assert_false(exists(coll, vs[3]));
	assert_false(exists(coll, vs[4]));
	char v[CDX_NAME_MAX];
	assert_int_equal(cdx_version_resolve(coll, v), CDX_OK);
	assert_string_equal(v, vs[1]);
	/* an unreadable CURRENT stops gc rather than risking the live version */
	char *cur = tu_path(coll, CDX_CURRENT_LINK);
	assert_int_equal(unlink(cur), 0);
	assert_int_equal(symlink("no-such-version", cur), 0);
	assert_int_equal(cdx_version_gc(coll, 0), CDX_ECORRUPT);
	assert_true(exists(coll, vs[1]));
	assert_int_equal(cdx_version_gc("/nonexistent/c", 1), CDX_ENOTFOUND);
	free(cur);
	free(coll);
	tu_rmdir(dir);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_round_trip_and_extra),
		cmocka_unit_test(test_validation),
		cmocka_unit_test(test_names),
		cmocka_unit_test(test_publish_resolve),
		cmocka_unit_test(test_gc),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
