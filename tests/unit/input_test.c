/* input_test.c — the builder's readers: fvecs, npy (f32/f16), raw, ids and
 * keys files, and the errors that name the file and the row. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "builder/build.h"

static char *dir;

static int
setup(void **state)
{
	(void) state;
	dir = tu_tmpdir("input");
	return dir ? 0 : -1;
}

static int
teardown(void **state)
{
	(void) state;
	tu_rmdir(dir);
	return 0;
}

static void
write_bytes(const char *path, const void *data, size_t len)
{
	FILE *f = fopen(path, "wb");
	assert_non_null(f);
	assert_int_equal(fwrite(data, 1, len, f), len);
	fclose(f);
}

static void
write_text(const char *path, const char *text)
{
	write_bytes(path, text, strlen(text));
}

/* write_npy writes a .npy with the given descr, shape and payload. */
static void
write_npy(
    const char *path, const char *descr, const char *fortran, const char *shape, const void *data, size_t len)
{
	char hdr[256];
	int n = snprintf(
	    hdr, sizeof(hdr), "{'descr': '%s', 'fortran_order': %s, 'shape': %s, }", descr, fortran, shape);
	/* pad so that magic(6)+ver(2)+len(2)+header is a multiple of 64, ending in \n */
	size_t total = 10 + (size_t) n + 1;
	size_t pad = (64 - total % 64) % 64;
	memset(hdr + n, ' ', pad);
	hdr[n + pad] = '\n';
	uint16_t hlen = (uint16_t) (n + pad + 1);
	FILE *f = fopen(path, "wb");
	assert_non_null(f);
	fwrite("\x93NUMPY\x01\x00", 1, 8, f);
	fwrite(&hlen, 2, 1, f);
	fwrite(hdr, 1, hlen, f);
	fwrite(data, 1, len, f);
	fclose(f);
}

static float *
make_rows(size_t n, size_t d)
{
	float *x = malloc(n * d * sizeof(float));
	for (size_t i = 0; i < n * d; i++)
		x[i] = (float) i * 0.5f - 3.0f;
	return x;
}

static void
test_fvecs_roundtrip(void **state)
{
	(void) state;
	char *path = tu_path(dir, "a.fvecs");
	float *x = make_rows(100, 16);
	assert_int_equal(tu_write_fvecs(path, x, 100, 16), 0);
	cdx_input *in = NULL;
	assert_int_equal(cdx_input_open(&in, path, 0), CDX_OK);
	assert_int_equal(cdx_input_rows(in), 100);
	assert_int_equal(cdx_input_dim(in), 16);
	assert_int_equal(cdx_input_format(in), CDX_INPUT_FVECS);
	float *y = malloc(100 * 16 * sizeof(float));
	assert_int_equal(cdx_input_read(in, 0, 100, y), CDX_OK);
	assert_memory_equal(x, y, 100 * 16 * sizeof(float));
	/* rows read after their pages were dropped still read back */
	cdx_input_prefetch(in, 50, 50);
	cdx_input_release(in, 100);
	assert_int_equal(cdx_input_read(in, 90, 10, y), CDX_OK);
	assert_memory_equal(x + 90 * 16, y, 10 * 16 * sizeof(float));
	uint64_t rows[3] = { 2, 40, 99 };
	assert_int_equal(cdx_input_read_rows(in, rows, 3, y), CDX_OK);
	assert_memory_equal(x + 40 * 16, y + 16, 16 * sizeof(float));
	assert_memory_equal(x + 99 * 16, y + 32, 16 * sizeof(float));
	assert_int_equal(cdx_input_read(in, 95, 10, y), CDX_EINVAL);
	cdx_input_close(in);
	/* --dim agreeing is fine, disagreeing names both */
	assert_int_equal(cdx_input_open(&in, path, 16), CDX_OK);
	cdx_input_close(in);
	assert_int_equal(cdx_input_open(&in, path, 32), CDX_EDIM);
	assert_null(in);
	assert_non_null(strstr(cdx_last_error(), "a.fvecs"));
	assert_non_null(strstr(cdx_last_error(), "--dim says 32"));
	free(x);
	free(y);
	free(path);
}

static void
test_fvecs_errors(void **state)
{
	(void) state;
	char *path = tu_path(dir, "bad.fvecs");
	float *x = make_rows(10, 16);
	cdx_input *in = NULL;
	float y[16 * 10];

	/* row 5 has 15 values: the size no longer divides, the scan names row 5 */
	FILE *f = fopen(path, "wb");
	for (int i = 0; i < 10; i++) {
		int32_t d = i == 5 ? 15 : 16;
		fwrite(&d, 4, 1, f);
		fwrite(x + i * 16, 4, (size_t) d, f);
	}
	fclose(f);
	assert_int_equal(cdx_input_open(&in, path, 0), CDX_EDIM);
	assert_non_null(strstr(cdx_last_error(), "bad.fvecs: row 5 has dimension 15, expected 16"));

	/* a wrong dim field with a consistent size: caught when the row is read */
	assert_int_equal(tu_write_fvecs(path, x, 10, 16), 0);
	FILE *g = fopen(path, "r+b");
	int32_t d17 = 17;
	fseek(g, 7 * (4 + 64), SEEK_SET);
	fwrite(&d17, 4, 1, g);
	fclose(g);
	assert_int_equal(cdx_input_open(&in, path, 0), CDX_OK);
	assert_int_equal(cdx_input_read(in, 0, 10, y), CDX_EDIM);
	assert_non_null(strstr(cdx_last_error(), "row 7 has dimension 17"));
	cdx_input_close(in);

	/* truncated inside row 9 */
	assert_int_equal(tu_write_fvecs(path, x, 10, 16), 0);
	assert_int_equal(truncate(path, 10 * 68 - 3), 0);
	assert_int_equal(cdx_input_open(&in, path, 0), CDX_ECORRUPT);
	assert_non_null(strstr(cdx_last_error(), "truncated"));
	assert_non_null(strstr(cdx_last_error(), "row 9"));

	/* empty */
	write_bytes(path, "", 0);
	assert_int_equal(cdx_input_open(&in, path, 0), CDX_EEMPTY);
	assert_non_null(strstr(cdx_last_error(), "bad.fvecs: empty"));

	/* NaN and Inf name row and column */
	x[3 * 16 + 2] = NAN;
	assert_int_equal(tu_write_fvecs(path, x, 10, 16), 0);
	assert_int_equal(cdx_input_open(&in, path, 0), CDX_OK);
	assert_int_equal(cdx_input_read(in, 0, 10, y), CDX_ENONFINITE);
	assert_non_null(strstr(cdx_last_error(), "bad.fvecs: row 3, column 2: NaN"));
	cdx_input_close(in);
	x[3 * 16 + 2] = 0;
	x[8 * 16 + 15] = -INFINITY;
	assert_int_equal(tu_write_fvecs(path, x, 10, 16), 0);
	assert_int_equal(cdx_input_open(&in, path, 0), CDX_OK);
	uint64_t r8 = 8;
	assert_int_equal(cdx_input_read_rows(in, &r8, 1, y), CDX_ENONFINITE);
	assert_non_null(strstr(cdx_last_error(), "row 8, column 15: Inf"));
	cdx_input_close(in);

	/* unreadable */
	char *missing = tu_path(dir, "missing.fvecs");
	assert_int_equal(cdx_input_open(&in, missing, 0), CDX_ENOTFOUND);
	assert_non_null(strstr(cdx_last_error(), "missing.fvecs"));
	assert_int_equal(cdx_input_open(&in, dir, 0), CDX_EINVAL);
	assert_non_null(strstr(cdx_last_error(), "not a regular file"));
	free(missing);
	free(x);
	free(path);
}

static void
test_npy(void **state)
{
	(void) state;
	char *path = tu_path(dir, "a.npy");
	float *x = make_rows(20, 8);
	cdx_input *in = NULL;
	float y[20 * 8];

	write_npy(path, "<f4", "False", "(20, 8)", x, sizeof(float) * 160);
	assert_int_equal(cdx_input_open(&in, path, 0), CDX_OK);
	assert_int_equal(cdx_input_format(in), CDX_INPUT_NPY_F32);
	assert_int_equal(cdx_input_rows(in), 20);
	assert_int_equal(cdx_input_dim(in), 8);
	assert_int_equal(cdx_input_read(in, 0, 20, y), CDX_OK);
	assert_memory_equal(x, y, sizeof(y));
	cdx_input_close(in);

	/* float16: values exactly representable come back exactly */
	uint16_t h[160];
	for (int i = 0; i < 160; i++)
		h[i] = cdx_f32_to_f16(x[i]);
	write_npy(path, "<f2", "False", "(20, 8)", h, sizeof(h));
	assert_int_equal(cdx_input_open(&in, path, 0), CDX_OK);
	assert_int_equal(cdx_input_format(in), CDX_INPUT_NPY_F16);
	assert_int_equal(cdx_input_read(in, 0, 20, y), CDX_OK);
	for (int i = 0; i < 160; i++)
		assert_true(y[i] == x[i]);
	cdx_input_close(in);
	/* float16 Inf */
	h[5 * 8 + 1] = 0x7c00;
	write_npy(path, "<f2", "False", "(20, 8)", h, sizeof(h));
	assert_int_equal(cdx_input_open(&in, path, 0), CDX_OK);
	assert_int_equal(cdx_input_read(in, 0, 20, y), CDX_ENONFINITE);
	assert_non_null(strstr(cdx_last_error(), "row 5, column 1: Inf"));
	cdx_input_close(in);

	/* NaN in a contiguous float32 read is located exactly */
	x[13 * 8 + 7] = NAN;
	write_npy(path, "<f4", "False", "(20, 8)", x, sizeof(float) * 160);
	assert_int_equal(cdx_input_open(&in, path, 0), CDX_OK);
	assert_int_equal(cdx_input_read(in, 10, 10, y), CDX_ENONFINITE);
	assert_non_null(strstr(cdx_last_error(), "row 13, column 7: NaN"));
	cdx_input_close(in);

	/* refused layouts */
	write_npy(path, "<f8", "False", "(20, 4)", x, sizeof(float) * 160);
	assert_int_equal(cdx_input_open(&in, path, 0), CDX_EINVAL);
	assert_non_null(strstr(cdx_last_error(), "<f8"));
	write_npy(path, "<f4", "True", "(20, 8)", x, sizeof(float) * 160);
	assert_int_equal(cdx_input_open(&in, path, 0), CDX_EINVAL);
	assert_non_null(strstr(cdx_last_error(), "Fortran"));
	write_npy(path, "<f4", "False", "(160,)", x, sizeof(float) * 160);
	assert_int_equal(cdx_input_open(&in, path, 0), CDX_EINVAL);
	/* truncated and overlong */
	write_npy(path, "<f4", "False", "(20, 8)", x, sizeof(float) * 150);
	assert_int_equal(cdx_input_open(&in, path, 0), CDX_ECORRUPT);
	assert_non_null(strstr(cdx_last_error(), "truncated"));
	assert_non_null(strstr(cdx_last_error(), "row 18"));
	write_npy(path, "<f4", "False", "(19, 8)", x, sizeof(float) * 160);
	assert_int_equal(cdx_input_open(&in, path, 0), CDX_ECORRUPT);
	/* empty */
	write_npy(path, "<f4", "False", "(0, 8)", x, 0);
	assert_int_equal(cdx_input_open(&in, path, 0), CDX_EEMPTY);
	/* not npy at all */
	write_text(path, "hello");
	assert_int_equal(cdx_input_open(&in, path, 0), CDX_ECORRUPT);
	free(x);
	free(path);
}

static void
test_raw(void **state)
{
	(void) state;
	char *path = tu_path(dir, "a.f32");
	float *x = make_rows(12, 4);
	write_bytes(path, x, sizeof(float) * 48);
	cdx_input *in = NULL;
	assert_int_equal(cdx_input_open(&in, path, 0), CDX_EINVAL); /* needs --dim */
	assert_non_null(strstr(cdx_last_error(), "--dim"));
	assert_int_equal(cdx_input_open(&in, path, 4), CDX_OK);
	assert_int_equal(cdx_input_rows(in), 12);
	assert_int_equal(cdx_input_format(in), CDX_INPUT_RAW_F32);
	cdx_input_close(in);
	assert_int_equal(cdx_input_open(&in, path, 5), CDX_ECORRUPT); /* 48 floats are not rows of 5 */
	assert_non_null(strstr(cdx_last_error(), "row 9"));
	free(x);
	free(path);
}

static void
test_ids(void **state)
{
	(void) state;
	char *path = tu_path(dir, "ids.txt");
	int64_t *ids = NULL;
	write_text(path, "10\n-3\n 9223372036854775807 \n42");
	assert_int_equal(cdx_ids_load(path, 4, &ids), CDX_OK);
	assert_int_equal(ids[0], 10);
	assert_int_equal(ids[1], -3);
	assert_true(ids[2] == INT64_MAX);
	assert_int_equal(ids[3], 42);
	free(ids);
	ids = NULL;
	/* count mismatch names both counts */
	assert_int_equal(cdx_ids_load(path, 5, &ids), CDX_EDIM);
	assert_non_null(strstr(cdx_last_error(), "4 ids, but the input has 5 rows"));
	/* duplicates name both lines */
	write_text(path, "1\n2\n3\n2\n5\n");
	assert_int_equal(cdx_ids_load(path, 5, &ids), CDX_EDUP);
	assert_null(ids);
	assert_non_null(strstr(cdx_last_error(), "ids.txt: duplicate id 2 at line 4 (first at line 2)"));
	/* junk */
	write_text(path, "1\n2x\n");
	assert_int_equal(cdx_ids_load(path, 2, &ids), CDX_EINVAL);
	assert_non_null(strstr(cdx_last_error(), "line 2"));
	write_text(path, "1\n\n3\n");
	assert_int_equal(cdx_ids_load(path, 3, &ids), CDX_EINVAL);
	assert_non_null(strstr(cdx_last_error(), "line 2"));
	write_text(path, "1\n99999999999999999999\n");
	assert_int_equal(cdx_ids_load(path, 2, &ids), CDX_EINVAL);
	/* .npy int64 */
	char *npy = tu_path(dir, "ids.npy");
	int64_t v[5] = { 5, 4, 3, 2, 1000000000000LL };
	write_npy(npy, "<i8", "False", "(5,)", v, sizeof(v));
	assert_int_equal(cdx_ids_load(npy, 5, &ids), CDX_OK);
	assert_memory_equal(ids, v, sizeof(v));
	free(ids);
	ids = NULL;
	v[4] = 4;
	write_npy(npy, "<i8", "False", "(5,)", v, sizeof(v));
	assert_int_equal(cdx_ids_load(npy, 5, &ids), CDX_EDUP);
	assert_non_null(strstr(cdx_last_error(), "duplicate id 4 at row 4 (first at row 1)"));
	/* many distinct ids: no false duplicates */
	FILE *f = fopen(path, "w");
	for (int i = 0; i < 100000; i++)
		fprintf(f, "%d\n", i * 7919);
	fclose(f);
	assert_int_equal(cdx_ids_load(path, 100000, &ids), CDX_OK);
	free(ids);
	char *missing = tu_path(dir, "nope.txt");
	assert_int_equal(cdx_ids_load(missing, 1, &ids), CDX_ENOTFOUND);
	assert_non_null(strstr(cdx_last_error(), "nope.txt"));
	free(missing);
	free(npy);
	free(path);
}

static void
test_keys(void **state)
{
	(void) state;
	char *path = tu_path(dir, "keys.txt");
	uint64_t bytes = 0;
	write_text(path, "spotify:track:a\r\nspotify:track:b\nspotify:track:c");
	assert_int_equal(cdx_keys_check(path, 3, &bytes), CDX_OK);
	assert_int_equal(bytes, 48);
	cdx_keys_reader *r = NULL;
	assert_int_equal(cdx_keys_reader_open(&r, path), CDX_OK);
	const char *k;
	size_t len;
	assert_int_equal(cdx_keys_reader_next(r, &k, &len), CDX_OK);
	assert_int_equal(len, 15); /* "\r" stripped */
	assert_memory_equal(k, "spotify:track:a", 15);
	assert_int_equal(cdx_keys_reader_next(r, &k, &len), CDX_OK);
	assert_int_equal(cdx_keys_reader_next(r, &k, &len), CDX_OK);
	assert_memory_equal(k, "spotify:track:c", 15);
	assert_int_equal(cdx_keys_reader_next(r, &k, &len), CDX_ECORRUPT);
	cdx_keys_reader_close(r);

	assert_int_equal(cdx_keys_check(path, 4, NULL), CDX_EDIM);
	assert_non_null(strstr(cdx_last_error(), "3 keys, but the input has 4 rows"));
	assert_int_equal(cdx_keys_check(path, 2, NULL), CDX_EDIM);
	write_text(path, "a\nb\nc\nb\n");
	assert_int_equal(cdx_keys_check(path, 4, NULL), CDX_EDUP);
	assert_non_null(strstr(cdx_last_error(), "keys.txt: duplicate key 'b' at line 4 (first at line 2)"));
	write_text(path, "a\n\nc\n");
	assert_int_equal(cdx_keys_check(path, 3, NULL), CDX_EINVAL);
	assert_non_null(strstr(cdx_last_error(), "line 2: empty key"));
	write_text(path, "a\nb\xe9\nc\n"); /* Latin-1, not UTF-8 */
	assert_int_equal(cdx_keys_check(path, 3, NULL), CDX_EINVAL);
	assert_non_null(strstr(cdx_last_error(), "line 2: key is not valid UTF-8"));
	/* many keys, and one long line grows the buffer */
	FILE *f = fopen(path, "w");
	for (int i = 0; i < 200000; i++)
		fprintf(f, "spotify:track:%08d\n", i);
	fclose(f);
	assert_int_equal(cdx_keys_check(path, 200000, NULL), CDX_OK);
	f = fopen(path, "w");
	fprintf(f, "short\n");
	for (int i = 0; i < 5000; i++)
		fputc('x', f);
	fprintf(f, "\n");
	fclose(f);
	assert_int_equal(cdx_keys_check(path, 2, NULL), CDX_EINVAL);
	assert_non_null(strstr(cdx_last_error(), "line 2: key of 5000 bytes"));
	free(path);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fvecs_roundtrip),
		cmocka_unit_test(test_fvecs_errors),
		cmocka_unit_test(test_npy),
		cmocka_unit_test(test_raw),
		cmocka_unit_test(test_ids),
		cmocka_unit_test(test_keys),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
