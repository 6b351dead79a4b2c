/* input_test.c — src/input, the one reader of user files: fvecs, npy
 * (f32/f16/f64), raw, text, ivecs, ids and keys files; the files it refuses
 * (CSV, 3-D .npy, trailing bytes, unknown extensions...) and the errors that
 * name the file and the row. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "input/input.h"

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
	assert_int_equal(cdx_input_open(&in, path, 0, CDX_INPUT_AUTO), CDX_OK);
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
	assert_int_equal(cdx_input_open(&in, path, 16, CDX_INPUT_AUTO), CDX_OK);
	cdx_input_close(in);
	assert_int_equal(cdx_input_open(&in, path, 32, CDX_INPUT_AUTO), CDX_EDIM);
	assert_null(in);
	assert_non_null(strstr(cdx_last_error(), "a.fvecs"));
	assert_non_null(strstr(cdx_last_error(), "dimension 16, but 32 was expected"));
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
	assert_int_equal(cdx_input_open(&in, path, 0, CDX_INPUT_AUTO), CDX_EDIM);
	assert_non_null(strstr(cdx_last_error(), "bad.fvecs: row 5 has dimension 15, expected 16"));

	/* a wrong dim field with a consistent size: caught when the row is read */
	assert_int_equal(tu_write_fvecs(path, x, 10, 16), 0);
	FILE *g = fopen(path, "r+b");
	int32_t d17 = 17;
	fseek(g, 7 * (4 + 64), SEEK_SET);
	fwrite(&d17, 4, 1, g);
	fclose(g);
	assert_int_equal(cdx_input_open(&in, path, 0, CDX_INPUT_AUTO), CDX_OK);
	assert_int_equal(cdx_input_read(in, 0, 10, y), CDX_EDIM);
	assert_non_null(strstr(cdx_last_error(), "row 7 has dimension 17"));
	cdx_input_close(in);

	/* truncated inside row 9 */
	assert_int_equal(tu_write_fvecs(path, x, 10, 16), 0);
	assert_int_equal(truncate(path, 10 * 68 - 3), 0);
	assert_int_equal(cdx_input_open(&in, path, 0, CDX_INPUT_AUTO), CDX_ECORRUPT);
	assert_non_null(strstr(cdx_last_error(), "truncated"));
	assert_non_null(strstr(cdx_last_error(), "row 9"));

	/* empty */
	write_bytes(path, "", 0);
	assert_int_equal(cdx_input_open(&in, path, 0, CDX_INPUT_AUTO), CDX_EEMPTY);
	assert_non_null(strstr(cdx_last_error(), "bad.fvecs: empty"));

	/* NaN and Inf name row and column */
	x[3 * 16 + 2] = NAN;
	assert_int_equal(tu_write_fvecs(path, x, 10, 16), 0);
	assert_int_equal(cdx_input_open(&in, path, 0, CDX_INPUT_AUTO), CDX_OK);
	assert_int_equal(cdx_input_read(in, 0, 10, y), CDX_ENONFINITE);
	assert_non_null(strstr(cdx_last_error(), "bad.fvecs: row 3, column 2: NaN"));
	cdx_input_close(in);
	x[3 * 16 + 2] = 0;
	x[8 * 16 + 15] = -INFINITY;
	assert_int_equal(tu_write_fvecs(path, x, 10, 16), 0);
	assert_int_equal(cdx_input_open(&in, path, 0, CDX_INPUT_AUTO), CDX_OK);
	uint64_t r8 = 8;
	assert_int_equal(cdx_input_read_rows(in, &r8, 1, y), CDX_ENONFINITE);
	assert_non_null(strstr(cdx_last_error(), "row 8, column 15: Inf"));
	cdx_input_close(in);

	/* unreadable */
	char *missing = tu_path(dir, "missing.fvecs");
	assert_int_equal(cdx_input_open(&in, missing, 0, CDX_INPUT_AUTO), CDX_ENOTFOUND);
	assert_non_null(strstr(cdx_last_error(), "missing.fvecs"));
	assert_int_equal(cdx_input_open(&in, dir, 0, CDX_INPUT_AUTO), CDX_EINVAL);
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

	assert_int_equal(tu_write_npy(path, "<f4", 0, "(20, 8)", x, sizeof(float) * 160), 0);
	assert_int_equal(cdx_input_open(&in, path, 0, CDX_INPUT_AUTO), CDX_OK);
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
	assert_int_equal(tu_write_npy(path, "<f2", 0, "(20, 8)", h, sizeof(h)), 0);
	assert_int_equal(cdx_input_open(&in, path, 0, CDX_INPUT_AUTO), CDX_OK);
	assert_int_equal(cdx_input_format(in), CDX_INPUT_NPY_F16);
	assert_int_equal(cdx_input_read(in, 0, 20, y), CDX_OK);
	for (int i = 0; i < 160; i++)
		assert_true(y[i] == x[i]);
	cdx_input_close(in);
	/* float16 Inf */
	h[5 * 8 + 1] = 0x7c00;
	assert_int_equal(tu_write_npy(path, "<f2", 0, "(20, 8)", h, sizeof(h)), 0);
	assert_int_equal(cdx_input_open(&in, path, 0, CDX_INPUT_AUTO), CDX_OK);
	assert_int_equal(cdx_input_read(in, 0, 20, y), CDX_ENONFINITE);
	assert_non_null(strstr(cdx_last_error(), "row 5, column 1: Inf"));
	cdx_input_close(in);

	/* NaN in a contiguous float32 read is located exactly */
	x[13 * 8 + 7] = NAN;
	assert_int_equal(tu_write_npy(path, "<f4", 0, "(20, 8)", x, sizeof(float) * 160), 0);
	assert_int_equal(cdx_input_open(&in, path, 0, CDX_INPUT_AUTO), CDX_OK);
	assert_int_equal(cdx_input_read(in, 10, 10, y), CDX_ENONFINITE);
	assert_non_null(strstr(cdx_last_error(), "row 13, column 7: NaN"));
	cdx_input_close(in);

	/* float64: converted; a value beyond float32 is refused like Inf */
	double dbl[160];
	for (int i = 0; i < 160; i++)
		dbl[i] = (double) i * 0.5 - 3.0;
	assert_int_equal(tu_write_npy(path, "<f8", 0, "(20, 8)", dbl, sizeof(dbl)), 0);
	assert_int_equal(cdx_input_open(&in, path, 0, CDX_INPUT_AUTO), CDX_OK);
	assert_int_equal(cdx_input_format(in), CDX_INPUT_NPY_F64);
	assert_int_equal(cdx_input_read(in, 0, 20, y), CDX_OK);
	for (int i = 0; i < 160; i++)
		assert_true(y[i] == (float) dbl[i]);
	cdx_input_close(in);
	dbl[17] = 1e300;
	assert_int_equal(tu_write_npy(path, "=f8", 0, "(20, 8)", dbl, sizeof(dbl)), 0);
	assert_int_equal(cdx_input_open(&in, path, 0, CDX_INPUT_AUTO), CDX_OK);
	assert_int_equal(cdx_input_read(in, 0, 20, y), CDX_ENONFINITE);
	assert_non_null(strstr(cdx_last_error(), "row 2, column 1: 1e+300 is out of float32 range"));
	cdx_input_close(in);

	/* refused layouts, each by name */
	assert_int_equal(tu_write_npy(path, ">f4", 0, "(20, 8)", x, sizeof(float) * 160), 0);
	assert_int_equal(cdx_input_open(&in, path, 0, CDX_INPUT_AUTO), CDX_EINVAL);
	assert_non_null(strstr(cdx_last_error(), "big-endian"));
	assert_int_equal(tu_write_npy(path, "<i4", 0, "(20, 8)", x, sizeof(float) * 160), 0);
	assert_int_equal(cdx_input_open(&in, path, 0, CDX_INPUT_AUTO), CDX_EINVAL);
	assert_non_null(strstr(cdx_last_error(), "dtype '<i4' is not supported"));
	assert_int_equal(tu_write_npy(path, "<f4", 0, "(5, 4, 8)", x, sizeof(float) * 160), 0);
	assert_int_equal(cdx_input_open(&in, path, 0, CDX_INPUT_AUTO), CDX_EINVAL);
	assert_non_null(strstr(cdx_last_error(), "must be 2-D (rows x dim), has 3 dimensions"));
	assert_int_equal(tu_write_npy(path, "<f4", 1, "(20, 8)", x, sizeof(float) * 160), 0);
	assert_int_equal(cdx_input_open(&in, path, 0, CDX_INPUT_AUTO), CDX_EINVAL);
	assert_non_null(strstr(cdx_last_error(), "Fortran"));
	assert_int_equal(tu_write_npy(path, "<f4", 0, "(160,)", x, sizeof(float) * 160), 0);
	assert_int_equal(cdx_input_open(&in, path, 0, CDX_INPUT_AUTO), CDX_EINVAL);
	assert_non_null(strstr(cdx_last_error(), "reshape it to (1, dim)"));
	/* truncated and overlong */
	assert_int_equal(tu_write_npy(path, "<f4", 0, "(20, 8)", x, sizeof(float) * 150), 0);
	assert_int_equal(cdx_input_open(&in, path, 0, CDX_INPUT_AUTO), CDX_ECORRUPT);
	assert_non_null(strstr(cdx_last_error(), "truncated"));
	assert_non_null(strstr(cdx_last_error(), "row 18"));
	assert_int_equal(tu_write_npy(path, "<f4", 0, "(19, 8)", x, sizeof(float) * 160), 0);
	assert_int_equal(cdx_input_open(&in, path, 0, CDX_INPUT_AUTO), CDX_ECORRUPT);
	assert_non_null(strstr(cdx_last_error(), "32 bytes after the 19 rows the header announces"));
	/* empty */
	assert_int_equal(tu_write_npy(path, "<f4", 0, "(0, 8)", x, 0), 0);
	assert_int_equal(cdx_input_open(&in, path, 0, CDX_INPUT_AUTO), CDX_EEMPTY);
	/* not npy at all */
	write_text(path, "hello");
	assert_int_equal(cdx_input_open(&in, path, 0, CDX_INPUT_AUTO), CDX_ECORRUPT);
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
	/* an unknown extension is refused even with a dimension: raw must be named */
	assert_int_equal(cdx_input_open(&in, path, 4, CDX_INPUT_AUTO), CDX_EINVAL);
	assert_non_null(strstr(cdx_last_error(), "unknown vector format"));
	assert_non_null(strstr(cdx_last_error(), "--format raw"));
	assert_int_equal(cdx_input_open(&in, path, 0, CDX_INPUT_RAW_F32), CDX_EINVAL); /* needs --dim */
	assert_non_null(strstr(cdx_last_error(), "--dim"));
	assert_int_equal(cdx_input_open(&in, path, 4, CDX_INPUT_RAW_F32), CDX_OK);
	assert_int_equal(cdx_input_rows(in), 12);
	assert_int_equal(cdx_input_format(in), CDX_INPUT_RAW_F32);
	cdx_input_close(in);
	/* a size that does not divide into rows: 48 floats are not rows of 5 */
	assert_int_equal(cdx_input_open(&in, path, 5, CDX_INPUT_RAW_F32), CDX_ECORRUPT);
	assert_non_null(strstr(cdx_last_error(), "row 9"));
	/* trailing bytes: 12 rows of 4 and 2 more bytes */
	FILE *f = fopen(path, "ab");
	fwrite("\0\0", 1, 2, f);
	fclose(f);
	assert_int_equal(cdx_input_open(&in, path, 4, CDX_INPUT_RAW_F32), CDX_ECORRUPT);
	assert_non_null(strstr(cdx_last_error(), "not a whole number"));
	free(x);
	free(path);
}

/* A CSV is text: refused, and called so, whatever --dim says; only when the
 * user insists that it is raw float32 is it read as such. */
static void
test_csv_and_unknown_extensions(void **state)
{
	(void) state;
	char *csv = tu_path(dir, "emb.csv"), *txt = tu_path(dir, "emb.fvecs");
	cdx_input *in = NULL;
	cdx_buf b = { 0 };
	for (int r = 0; r < 200; r++)
		for (int c = 0; c < 64; c++)
			cdx_buf_printf(&b, "%s%.6f", c ? "," : "", (double) (r * 64 + c) / 1000.0);
	write_bytes(csv, b.data, b.len);
	assert_int_equal(cdx_input_open(&in, csv, 64, CDX_INPUT_AUTO), CDX_EINVAL);
	assert_null(in);
	assert_non_null(
	    strstr(cdx_last_error(), "emb.csv: unknown vector format (it looks like a text file: CSV?)"));
	/* named .fvecs, the text is still not fvecs */
	write_bytes(txt, b.data, b.len);
	assert_int_equal(cdx_input_open(&in, txt, 0, CDX_INPUT_AUTO), CDX_ECORRUPT);
	assert_non_null(strstr(cdx_last_error(), "not an fvecs file? (it looks like a text file)"));
	cdx_buf_fini(&b);
	/* extensions are matched without case; other ones are refused */
	char *upper = tu_path(dir, "A.FVECS"), *bin = tu_path(dir, "a.bin");
	float *x = make_rows(3, 4);
	assert_int_equal(tu_write_fvecs(upper, x, 3, 4), 0);
	assert_int_equal(cdx_input_open(&in, upper, 0, CDX_INPUT_AUTO), CDX_OK);
	cdx_input_close(in);
	assert_int_equal(tu_write_fvecs(bin, x, 3, 4), 0);
	assert_int_equal(cdx_input_open(&in, bin, 0, CDX_INPUT_AUTO), CDX_EINVAL);
	assert_null(strstr(cdx_last_error(), "text"));
	assert_int_equal(cdx_input_open(&in, bin, 0, CDX_INPUT_FVECS), CDX_OK); /* named: read */
	assert_int_equal(cdx_input_rows(in), 3);
	cdx_input_close(in);
	int fmt;
	assert_int_equal(cdx_input_format_parse("raw", &fmt), CDX_OK);
	assert_int_equal(fmt, CDX_INPUT_RAW_F32);
	assert_int_equal(cdx_input_format_parse("csv", &fmt), CDX_EINVAL);
	free(x);
	free(upper);
	free(bin);
	free(csv);
	free(txt);
}

/* cdx_vecs_read: row ranges; text vectors; ivecs. */
static void
test_vecs_text_ivecs(void **state)
{
	(void) state;
	char *path = tu_path(dir, "v.fvecs");
	float *x = make_rows(30, 5);
	assert_int_equal(tu_write_fvecs(path, x, 30, 5), 0);
	struct cdx_vecs v;
	assert_int_equal(cdx_vecs_read(&v, path, 0, CDX_INPUT_AUTO, 0, 0), CDX_OK);
	assert_int_equal(v.n, 30);
	assert_int_equal(v.dim, 5);
	assert_memory_equal(v.x, x, 30 * 5 * sizeof(float));
	cdx_vecs_fini(&v);
	assert_int_equal(cdx_vecs_read(&v, path, 0, CDX_INPUT_AUTO, 28, 2), CDX_OK);
	assert_memory_equal(v.x, x + 28 * 5, 2 * 5 * sizeof(float));
	cdx_vecs_fini(&v);
	assert_int_equal(cdx_vecs_read(&v, path, 0, CDX_INPUT_AUTO, 29, 2), CDX_EINVAL);
	assert_non_null(strstr(cdx_last_error(), "rows 29..30 are past its 30 rows"));
	assert_null(v.x);
	assert_int_equal(cdx_vecs_read(&v, path, 7, CDX_INPUT_AUTO, 0, 0), CDX_EDIM);

	char *txt = tu_path(dir, "v.txt");
	write_text(txt, "# two vectors\n1 2 3\n\n4,5,\t6\r\n");
	FILE *f = fopen(txt, "r");
	assert_int_equal(cdx_vecs_read_text(&v, f, "stdin"), CDX_OK);
	fclose(f);
	assert_int_equal(v.n, 2);
	assert_int_equal(v.dim, 3);
	assert_float_equal(v.x[5], 6, 0);
	cdx_vecs_fini(&v);
	const char *bad[] = { "1 2\n3\n", "1 2x\n", "1 nan\n", "", "1 1e99\n" };
	const char *why[] = { "line 2 has 1 values", "'2x' is not a finite number", "'nan' is not",
		"no vector on stdin", "'1e99' is not" };
	for (size_t i = 0; i < 5; i++) {
		write_text(txt, bad[i]);
		f = fopen(txt, "r");
		assert_int_not_equal(cdx_vecs_read_text(&v, f, "stdin"), CDX_OK);
		fclose(f);
		if (strstr(cdx_last_error(), why[i]) == NULL)
			fail_msg("'%s': '%s' lacks '%s'", bad[i], cdx_last_error(), why[i]);
	}

	/* ivecs: the fvecs framing with int32s */
	char *iv = tu_path(dir, "gt.ivecs");
	int32_t rows[2][4] = { { 3, 7, 1, 9 }, { 3, 0, 2, 4 } };
	f = fopen(iv, "wb");
	fwrite(rows, sizeof(rows), 1, f);
	fclose(f);
	int32_t *gt = NULL;
	size_t n;
	uint32_t k;
	assert_int_equal(cdx_ivecs_read(iv, &gt, &n, &k), CDX_OK);
	assert_int_equal(n, 2);
	assert_int_equal(k, 3);
	assert_int_equal(gt[0], 7);
	assert_int_equal(gt[5], 4);
	free(gt);
	assert_int_equal(cdx_ivecs_read(path, &gt, &n, &k), CDX_EINVAL); /* not .ivecs */
	free(iv);
	free(txt);
	free(x);
	free(path);
}

static void
test_ids(void **state)
{
	(void) state;
	char *path = tu_path(dir, "ids.txt");
	int64_t *ids = NULL;
	uint64_t nids = 0;
	write_text(path, "10\n-3\n 9223372036854775807 \n42");
	assert_int_equal(cdx_ids_load(path, 4, &ids, &nids), CDX_OK);
	assert_int_equal(ids[0], 10);
	assert_int_equal(ids[1], -3);
	assert_true(ids[2] == INT64_MAX);
	assert_int_equal(ids[3], 42);
	free(ids);
	ids = NULL;
	assert_int_equal(nids, 4);
	/* with no count to match, any number */
	assert_int_equal(cdx_ids_load(path, 0, &ids, &nids), CDX_OK);
	assert_int_equal(nids, 4);
	free(ids);
	ids = NULL;
	/* count mismatch names both counts */
	assert_int_equal(cdx_ids_load(path, 5, &ids, &nids), CDX_EDIM);
	assert_non_null(strstr(cdx_last_error(), "4 ids, but the input has 5 rows"));
	/* duplicates name both lines */
	write_text(path, "1\n2\n3\n2\n5\n");
	assert_int_equal(cdx_ids_load(path, 5, &ids, &nids), CDX_EDUP);
	assert_null(ids);
	assert_non_null(strstr(cdx_last_error(), "ids.txt: duplicate id 2 at line 4 (first at line 2)"));
	/* junk */
	write_text(path, "1\n2x\n");
	assert_int_equal(cdx_ids_load(path, 2, &ids, &nids), CDX_EINVAL);
	assert_non_null(strstr(cdx_last_error(), "line 2"));
	write_text(path, "1\n\n3\n");
	assert_int_equal(cdx_ids_load(path, 3, &ids, &nids), CDX_EINVAL);
	assert_non_null(strstr(cdx_last_error(), "line 2"));
	write_text(path, "1\n99999999999999999999\n");
	assert_int_equal(cdx_ids_load(path, 2, &ids, &nids), CDX_EINVAL);
	/* .npy int64 */
	char *npy = tu_path(dir, "ids.npy");
	int64_t v[5] = { 5, 4, 3, 2, 1000000000000LL };
	assert_int_equal(tu_write_npy(npy, "<i8", 0, "(5,)", v, sizeof(v)), 0);
	assert_int_equal(cdx_ids_load(npy, 5, &ids, &nids), CDX_OK);
	assert_memory_equal(ids, v, sizeof(v));
	free(ids);
	ids = NULL;
	v[4] = 4;
	assert_int_equal(tu_write_npy(npy, "<i8", 0, "(5,)", v, sizeof(v)), 0);
	assert_int_equal(cdx_ids_load(npy, 5, &ids, &nids), CDX_EDUP);
	assert_non_null(strstr(cdx_last_error(), "duplicate id 4 at row 4 (first at row 1)"));
	/* many distinct ids: no false duplicates */
	FILE *f = fopen(path, "w");
	for (int i = 0; i < 100000; i++)
		fprintf(f, "%d\n", i * 7919);
	fclose(f);
	assert_int_equal(cdx_ids_load(path, 100000, &ids, &nids), CDX_OK);
	free(ids);
	char *missing = tu_path(dir, "nope.txt");
	assert_int_equal(cdx_ids_load(missing, 1, &ids, &nids), CDX_ENOTFOUND);
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
		cmocka_unit_test(test_csv_and_unknown_extensions),
		cmocka_unit_test(test_vecs_text_ivecs),
		cmocka_unit_test(test_ids),
		cmocka_unit_test(test_keys),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
