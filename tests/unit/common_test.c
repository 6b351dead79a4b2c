/* common_test.c — error strings, XXH64 vectors, fp16 round trips, atomic files. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"

static void
test_strerror(void **state)
{
	(void) state;
	assert_string_equal(cdx_strerror(CDX_OK), "success");
	assert_string_equal(cdx_errname(CDX_EDIM), "EDIM");
	assert_string_equal(cdx_strerror(9999), "unknown error");
	assert_int_equal(cdx_error(CDX_EINVAL, "row %d", 7), CDX_EINVAL);
	assert_string_equal(cdx_last_error(), "row 7");
}

static void
test_xxh64_vectors(void **state)
{
	(void) state;
	/* Reference values of XXH64 (xxhash's own sanity checks). */
	assert_true(cdx_xxh64("", 0, 0) == 0xEF46DB3751D8E999ULL);
	assert_true(cdx_xxh64("a", 1, 0) == 0xD24EC4F1A98C6E5BULL);
	assert_true(cdx_xxh64("abc", 3, 0) == 0x44BC2CF5AD770999ULL);
	const char *fox = "The quick brown fox jumps over the lazy dog";
	assert_true(cdx_xxh64(fox, strlen(fox), 0) == 0x0B242D361FDA71BCULL);
	/* streaming in odd pieces equals one shot */
	char big[1000];
	for (int i = 0; i < 1000; i++)
		big[i] = (char) (i * 31);
	cdx_xxh64_state st;
	cdx_xxh64_init(&st, 42);
	size_t off = 0, step = 1;
	while (off < sizeof(big)) {
		size_t n = CDX_MIN(step, sizeof(big) - off);
		cdx_xxh64_update(&st, big + off, n);
		off += n;
		step = step * 3 + 1;
	}
	assert_true(cdx_xxh64_digest(&st) == cdx_xxh64(big, sizeof(big), 42));
}

static void
test_f16(void **state)
{
	(void) state;
	float vals[] = { 0.f, 1.f, -2.5f, 65504.f, 6.1e-5f, 0.333333f, -1e-7f };
	for (size_t i = 0; i < CDX_ARRAY_LEN(vals); i++) {
		float back = cdx_f16_to_f32(cdx_f32_to_f16(vals[i]));
		assert_true(fabsf(back - vals[i]) <= fabsf(vals[i]) * 1e-3f + 1e-7f);
	}
	assert_true(isinf(cdx_f16_to_f32(cdx_f32_to_f16(1e6f))));
}

static void
test_atomic_write(void **state)
{
	(void) state;
	char *dir = tu_tmpdir("common");
	char *path = tu_path(dir, "f.txt");
	assert_int_equal(cdx_write_file_atomic(path, "hello", 5), CDX_OK);
	char *data;
	size_t len;
	assert_int_equal(cdx_read_file(path, &data, &len), CDX_OK);
	assert_int_equal(len, 5);
	assert_string_equal(data, "hello");
	free(data);
	assert_int_equal(cdx_read_file("/nonexistent/x", &data, &len), CDX_ENOTFOUND);
	free(path);
	tu_rmdir(dir);
}

static void
test_normalize_and_nonfinite(void **state)
{
	(void) state;
	float v[6] = { 3, 4, 0, 0, 0, 0 };
	cdx_normalize_rows(v, 2, 3);
	assert_true(fabsf(v[0] - 0.6f) < 1e-6f && fabsf(v[1] - 0.8f) < 1e-6f);
	assert_true(v[3] == 0 && v[4] == 0);
	assert_int_equal(cdx_find_nonfinite(v, 6), -1);
	v[4] = NAN;
	assert_int_equal(cdx_find_nonfinite(v, 6), 4);
}

/* Every cut of text mixing 1- to 4-byte characters is valid UTF-8 by a
 * strict decoder, and as long as it can be; bad bytes are replaced. */
static void
test_utf8(void **state)
{
	(void) state;
	/* a, e-acute, euro, G clef (U+1D11E), repeated */
	const char *unit = "a\xc3\xa9\xe2\x82\xac\xf0\x9d\x84\x9e";
	char text[400] = "";
	for (int i = 0; i < 30; i++)
		strcat(text, unit);
	size_t len = strlen(text);
	assert_true(tu_utf8_strict(text, len));
	for (size_t max = 0; max <= len + 2; max++) {
		size_t n = cdx_utf8_cut(text, max);
		assert_true(n <= max && n <= len);
		assert_true(tu_utf8_strict(text, n));
		assert_true(n + 3 >= CDX_MIN(max, len)); /* drops at most a partial character */
		/* what snprintf into a small buffer leaves, then sanitized */
		char buf[400];
		snprintf(buf, CDX_MIN(max + 1, sizeof(buf)), "%s", text);
		cdx_utf8_sanitize(buf);
		assert_int_equal(strlen(buf), n);
		assert_true(tu_utf8_strict(buf, strlen(buf)));
		char copy[400];
		cdx_utf8_copy(copy, CDX_MIN(max + 1, sizeof(copy)), text);
		assert_string_equal(copy, buf);
	}
	/* stray continuation, overlong, surrogate, above U+10FFFF, bad lead */
	const char *bad[] = { "x\x80y", "\xc0\xafz", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xff\xfe",
		"ok\xe2\x82", "\xe2\x28\xa1" };
	for (size_t i = 0; i < CDX_ARRAY_LEN(bad); i++) {
		char b[32];
		snprintf(b, sizeof(b), "%s", bad[i]);
		assert_false(cdx_utf8_valid(b, strlen(b)));
		assert_false(tu_utf8_strict(b, strlen(b)));
		cdx_utf8_sanitize(b);
		assert_true(cdx_utf8_valid(b, strlen(b)));
		assert_true(tu_utf8_strict(b, strlen(b)));
	}
	char stump[16] = "ok\xe2\x82";
	cdx_utf8_sanitize(stump);
	assert_string_equal(stump, "ok"); /* a cut character goes, no '?' */
	/* error details are cut whole: 2000 bytes of euro signs into 1024 */
	char big[2001] = "";
	for (int i = 0; i < 666; i++)
		strcat(big, "\xe2\x82\xac");
	cdx_error(CDX_EINVAL, "%s", big);
	assert_true(tu_utf8_strict(cdx_last_error(), strlen(cdx_last_error())));
	assert_true(strlen(cdx_last_error()) >= 1020);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_strerror),
		cmocka_unit_test(test_utf8),
		cmocka_unit_test(test_xxh64_vectors),
		cmocka_unit_test(test_f16),
		cmocka_unit_test(test_atomic_write),
		cmocka_unit_test(test_normalize_and_nonfinite),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
