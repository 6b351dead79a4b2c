/*
 * inspect_test.c — `candex inspect`: the report on a good version (text and
 * --json), and exit status 1 for every kind of damage: a flipped byte in a
 * part or in a header, a truncated or missing shard, a manifest that lies.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "builder/build.h"

static char *root, *coll, *vdir;

static int
setup(void **state)
{
	(void) state;
	root = tu_tmpdir("inspect");
	if (root == NULL)
		return -1;
	const size_t n = 5000, dim = 16;
	float *x = malloc(n * dim * sizeof(float));
	tu_clustered(x, n, dim, 12, 21);
	char *fv = tu_path(root, "x.fvecs"), *keys = tu_path(root, "x.keys");
	int rc = tu_write_fvecs(fv, x, n, dim) | tu_write_keys(keys, "spotify:track:", n);
	free(x);
	if (rc == 0)
		rc = tu_run(NULL,
		    "%s build --quiet --input %s --keys %s --collection insp --metric ip --shards 2 --refine "
		    "fp16 --no-tune --out "
		    "%s/idx",
		    CANDEX_BIN, fv, keys, root);
	free(fv);
	free(keys);
	if (rc != 0)
		return -1;
	if (asprintf(&coll, "%s/idx/insp", root) < 0)
		return -1;
	char cur[256], link[4096];
	snprintf(link, sizeof(link), "%s/CURRENT", coll);
	ssize_t len = readlink(link, cur, sizeof(cur) - 1);
	if (len <= 0)
		return -1;
	cur[len] = 0;
	return asprintf(&vdir, "%s/%s", coll, cur) < 0 ? -1 : 0;
}

static int
teardown(void **state)
{
	(void) state;
	free(coll);
	free(vdir);
	tu_rmdir(root);
	return 0;
}

/* damaged_copy copies the good version to root/<tag> and returns its path. */
static char *
damaged_copy(const char *tag)
{
	char *dst = NULL;
	assert_true(asprintf(&dst, "%s/%s", root, tag) >= 0);
	assert_int_equal(tu_run(NULL, "cp -r %s %s", vdir, dst), 0);
	return dst;
}

static void
flip_byte(const char *path, long off)
{
	FILE *f = fopen(path, "r+b");
	assert_non_null(f);
	if (off < 0) {
		fseek(f, 0, SEEK_END);
		off = ftell(f) / 2;
	}
	fseek(f, off, SEEK_SET);
	int c = fgetc(f);
	fseek(f, off, SEEK_SET);
	fputc(c ^ 0x01, f);
	fclose(f);
}

static void
test_good_text(void **state)
{
	(void) state;
	const char *paths[3] = { coll, NULL, vdir };
	char *cur = NULL;
	assert_true(asprintf(&cur, "%s/CURRENT", coll) >= 0);
	paths[1] = cur;
	for (int i = 0; i < 3; i++) {
		char *out = NULL;
		int rc = tu_run(&out, "%s inspect %s", CANDEX_BIN, paths[i]);
		if (rc != 0)
			fprintf(stderr, "%s\n", out);
		assert_int_equal(rc, 0);
		assert_non_null(strstr(out, "verify: OK (2 shard(s)"));
		assert_non_null(strstr(out, "\"collection\": \"insp\""));
		assert_non_null(strstr(out, "shard-0000-of-0002.cdx"));
		assert_non_null(strstr(out, "shard-0001-of-0002.cdx"));
		for (const char *const *k = (const char *const[]) { "faiss", "ids", "keys", "refine", NULL };
		     *k; k++)
			assert_non_null(strstr(out, *k));
		assert_non_null(strstr(out, "inverted lists (summed over shards): nlist 128"));
		assert_non_null(strstr(out, "imbalance"));
		assert_non_null(strstr(out, "#")); /* histogram bars */
		free(out);
	}
	free(cur);
}

static void
test_good_json(void **state)
{
	(void) state;
	char *out = NULL;
	assert_int_equal(tu_run(&out, "%s inspect --json %s 2>/dev/null", CANDEX_BIN, coll), 0);
	json_error_t err;
	json_t *doc = json_loads(out, 0, &err);
	if (doc == NULL)
		fprintf(stderr, "bad JSON (%s): %s\n", err.text, out);
	assert_non_null(doc);
	assert_true(json_is_true(json_object_get(doc, "ok")));
	assert_int_equal(json_array_size(json_object_get(doc, "errors")), 0);
	json_t *m = json_object_get(doc, "manifest");
	assert_int_equal(json_integer_value(json_object_get(m, "items")), 5000);
	json_t *shards = json_object_get(doc, "shards");
	assert_int_equal(json_array_size(shards), 2);
	json_int_t rows = 0;
	for (size_t i = 0; i < 2; i++) {
		json_t *s = json_array_get(shards, i);
		assert_true(json_is_true(json_object_get(s, "xxh64_ok")));
		rows += json_integer_value(json_object_get(s, "rows"));
		assert_int_equal(json_array_size(json_object_get(s, "parts")), 4);
	}
	assert_int_equal(rows, 5000);
	json_t *tot = json_object_get(doc, "parts_total");
	/* every part has its lz4 ratio: raw / stored, totals summed over shards */
	for (const char *const *k = (const char *const[]) { "faiss", "ids", "keys", "refine", NULL }; *k;
	     k++) {
		json_t *part = json_object_get(tot, *k);
		assert_non_null(part);
		json_int_t raw = json_integer_value(json_object_get(part, "raw_bytes"));
		json_int_t stored = json_integer_value(json_object_get(part, "stored_bytes"));
		assert_true(raw > 0 && stored > 0);
		double ratio = json_real_value(json_object_get(part, "ratio"));
		assert_true(ratio > 0.99 * (double) raw / (double) stored
		    && ratio < 1.01 * (double) raw / (double) stored);
		json_int_t sum = 0;
		for (size_t i = 0; i < 2; i++) {
			json_t *parts = json_object_get(json_array_get(shards, i), "parts");
			for (size_t j = 0; j < json_array_size(parts); j++)
				if (strcmp(
				        json_string_value(json_object_get(json_array_get(parts, j), "kind")),
				        *k)
				    == 0)
					sum += json_integer_value(
					    json_object_get(json_array_get(parts, j), "raw_bytes"));
		}
		assert_int_equal(sum, raw);
	}
	/* ids of one shard are increasing row numbers: delta coding + lz4 shrink them */
	assert_true(json_real_value(json_object_get(json_object_get(tot, "ids"), "ratio")) > 1.0);
	/* "spotify:track:" prefixes compress well */
	assert_true(json_real_value(json_object_get(json_object_get(tot, "keys"), "ratio")) > 1.5);
	json_t *lists = json_object_get(doc, "lists");
	assert_int_equal(json_integer_value(json_object_get(lists, "nlist")), 128);
	assert_int_equal(json_integer_value(json_object_get(lists, "vectors")), 5000);
	assert_true(json_real_value(json_object_get(lists, "imbalance")) >= 1.0);
	json_int_t nl = 0;
	size_t i;
	json_t *b;
	json_array_foreach(json_object_get(lists, "histogram"), i, b) nl
	    += json_integer_value(json_object_get(b, "lists"));
	assert_int_equal(nl, 128);
	json_decref(doc);
	free(out);
}

static void
expect_damage(const char *dir, const char *needle)
{
	char *out = NULL;
	int rc = tu_run(&out, "%s inspect %s", CANDEX_BIN, dir);
	if (rc != 1 || strstr(out, needle) == NULL)
		fprintf(stderr, "inspect %s: rc %d, expected 1 and '%s':\n%s\n", dir, rc, needle, out);
	assert_int_equal(rc, 1);
	assert_non_null(strstr(out, needle));
	free(out);
	/* --json agrees */
	rc = tu_run(&out, "%s inspect --json %s 2>/dev/null", CANDEX_BIN, dir);
	assert_int_equal(rc, 1);
	json_t *doc = json_loads(out, 0, NULL);
	if (doc != NULL) { /* a manifest that does not load gives no document */
		assert_true(json_is_false(json_object_get(doc, "ok")));
		assert_true(json_array_size(json_object_get(doc, "errors")) > 0);
		json_decref(doc);
	}
	free(out);
}

static void
test_flipped_byte(void **state)
{
	(void) state;
	/* in the middle of a part */
	char *d = damaged_copy("flip"), *f = NULL;
	assert_true(asprintf(&f, "%s/shard-0001-of-0002.cdx", d) >= 0);
	flip_byte(f, -1);
	expect_damage(d, "MISMATCH");
	expect_damage(d, "checksum mismatch");
	free(f);
	free(d);
	/* in the header */
	d = damaged_copy("flip-header");
	assert_true(asprintf(&f, "%s/shard-0000-of-0002.cdx", d) >= 0);
	flip_byte(f, 40);
	expect_damage(d, "shard-0000-of-0002.cdx");
	free(f);
	free(d);
	/* the original is untouched */
	assert_int_equal(tu_run(NULL, "%s inspect %s", CANDEX_BIN, vdir), 0);
}

static void
test_other_damage(void **state)
{
	(void) state;
	char *d = damaged_copy("trunc"), *f = NULL;
	assert_true(asprintf(&f, "%s/shard-0000-of-0002.cdx", d) >= 0);
	struct stat st;
	assert_int_equal(stat(f, &st), 0);
	assert_int_equal(truncate(f, st.st_size - 100), 0);
	expect_damage(d, "the manifest says");
	free(f);
	free(d);

	d = damaged_copy("missing");
	assert_true(asprintf(&f, "%s/shard-0001-of-0002.cdx", d) >= 0);
	assert_int_equal(unlink(f), 0);
	expect_damage(d, "shard-0001-of-0002.cdx");
	free(f);
	free(d);

	/* a manifest whose xxh64 for a shard is wrong */
	d = damaged_copy("manifest");
	assert_true(asprintf(&f, "%s/manifest.json", d) >= 0);
	char *text = NULL;
	size_t len = 0;
	assert_int_equal(cdx_read_file(f, &text, &len), CDX_OK);
	char *h = strstr(text, "\"xxh64\": \"");
	assert_non_null(h);
	h += strlen("\"xxh64\": \"");
	*h = *h == '0' ? '1' : '0';
	FILE *fp = fopen(f, "w");
	fwrite(text, 1, len, fp);
	fclose(fp);
	expect_damage(d, "file xxh64");
	free(text);
	free(f);
	free(d);

	/* no version at all, and usage */
	char *out = NULL;
	assert_int_equal(tu_run(&out, "%s inspect %s", CANDEX_BIN, root), 1);
	free(out);
	assert_int_equal(tu_run(&out, "%s inspect", CANDEX_BIN), 2);
	free(out);
	assert_int_equal(tu_run(&out, "%s inspect --bogus %s", CANDEX_BIN, coll), 2);
	free(out);
	assert_int_equal(tu_run(&out, "%s inspect --help", CANDEX_BIN), 0);
	assert_non_null(strstr(out, "--json"));
	free(out);
}

static void
test_flat(void **state)
{
	(void) state;
	float x[300 * 8];
	tu_clustered(x, 300, 8, 4, 3);
	char *fv = tu_path(root, "flat.fvecs");
	assert_int_equal(tu_write_fvecs(fv, x, 300, 8), 0);
	assert_int_equal(
	    tu_run(NULL, "%s build --quiet --input %s --collection flat --metric l2 --out %s/idx", CANDEX_BIN,
	        fv, root),
	    0);
	char *out = NULL;
	assert_int_equal(tu_run(&out, "%s inspect %s/idx/flat", CANDEX_BIN, root), 0);
	assert_non_null(strstr(out, "index: Flat (no inverted lists)"));
	assert_non_null(strstr(out, "verify: OK"));
	free(out);
	assert_int_equal(tu_run(&out, "%s inspect --no-lists %s/idx/flat", CANDEX_BIN, root), 0);
	assert_null(strstr(out, "inverted lists"));
	free(out);
	free(fv);
}

int
main(void)
{
	/* The candex children share two cores with other test processes:
	 * OpenMP's default spin-waiting then makes Faiss's many short parallel
	 * regions 10x slower (measured 9 s vs 0.7 s for one build). */
	setenv("OMP_WAIT_POLICY", "passive", 0);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_good_text),
		cmocka_unit_test(test_good_json),
		cmocka_unit_test(test_flipped_byte),
		cmocka_unit_test(test_other_damage),
		cmocka_unit_test(test_flat),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
