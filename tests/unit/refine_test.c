/* refine_test.c — the REFINE part: accuracy of each kind, distances, size
 * checks on parse, and a round trip through a shard file. */
#define _GNU_SOURCE
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shard/refine.h"

enum { N = 2000, D = 27 }; /* three 8-wide SIMD steps and a tail of 3 */

/* build_part encodes x into a complete REFINE part in b. */
static void
build_part(cdx_buf *b, int kind, const float *x, size_t n, uint32_t dim)
{
	float vmin[64], vdiff[64];
	if (kind == CDX_REFINE_SQ8)
		cdx_sq8_train(x, n, dim, vmin, vdiff);
	assert_int_equal(cdx_refine_header_write(b, kind, dim, n, vmin, vdiff), CDX_OK);
	size_t bpv = cdx_refine_bytes_per_vector(kind, dim);
	/* the encoder reads the tables through a store pointing at the header */
	struct cdx_refine_store st
	    = { .kind = kind, .dim = dim, .bytes_per_vector = bpv, .vmin = vmin, .vdiff = vdiff };
	assert_int_equal(cdx_buf_reserve(b, n * bpv), CDX_OK);
	cdx_refine_encode(&st, x, n, (uint8_t *) b->data + b->len);
	b->len += n * bpv;
}

static void
check_kind(int kind, double max_abs_err_per_range, double max_rel_err)
{
	float *x = malloc(sizeof(float) * N * D);
	tu_clustered(x, N, D, 10, 42);
	float vmin[D], vdiff[D];
	cdx_sq8_train(x, N, D, vmin, vdiff);
	cdx_buf b = { 0 };
	build_part(&b, kind, x, N, D);
	struct cdx_refine_store st;
	assert_int_equal(cdx_refine_store_parse(&st, b.data, b.len, N, D), CDX_OK);
	assert_int_equal(st.kind, kind);
	assert_int_equal(st.rows, N);
	assert_int_equal(st.bytes_per_vector, cdx_refine_bytes_per_vector(kind, D));
	double worst = 0, worst_rel = 0, worst_score = 0;
	float v[D], q[D];
	memcpy(q, x + 7 * D, sizeof(q));
	for (uint64_t r = 0; r < N; r++) {
		cdx_refine_decode(&st, r, v);
		double l2 = 0, ip = 0;
		for (int j = 0; j < D; j++) {
			double e = fabs((double) v[j] - x[r * D + j]);
			if (kind == CDX_REFINE_SQ8)
				worst = fmax(worst, e / (vdiff[j] > 0 ? vdiff[j] : 1));
			else
				worst_rel = fmax(worst_rel, e / fmax(fabs(x[r * D + j]), 1e-3));
			l2 += ((double) q[j] - v[j]) * ((double) q[j] - v[j]);
			ip += (double) q[j] * v[j];
		}
		/* distance equals the distance to the decoded vector */
		float dl2 = cdx_refine_distance(&st, r, q, CDX_METRIC_L2);
		float dip = cdx_refine_distance(&st, r, q, CDX_METRIC_IP);
		worst_score = fmax(worst_score, fabs(dl2 - l2) / (1 + l2));
		worst_score = fmax(worst_score, fabs(dip - ip) / (1 + fabs(ip)));
		assert_true(cdx_refine_distance(&st, r, q, CDX_METRIC_COS) == dip);
	}
	print_message("%s: max error %.3g of range, %.3g relative; score mismatch %.3g; %zu bytes/vector\n",
	    cdx_refine_name(kind), worst, worst_rel, worst_score, st.bytes_per_vector);
	if (kind == CDX_REFINE_SQ8)
		assert_true(worst <= max_abs_err_per_range);
	else
		assert_true(worst_rel <= max_rel_err);
	assert_true(worst_score < 1e-4); /* float accumulation vs double */
	if (kind == CDX_REFINE_FP32)
		assert_true(cdx_refine_distance(&st, 7, q, CDX_METRIC_L2) == 0);
	cdx_buf_fini(&b);
	free(x);
}

static void
test_fp32(void **state)
{
	(void) state;
	check_kind(CDX_REFINE_FP32, 0, 0);
}

static void
test_fp16(void **state)
{
	(void) state;
	check_kind(CDX_REFINE_FP16, 0, 1.0 / 1024);
}

static void
test_sq8(void **state)
{
	(void) state;
	/* half a step of 1/256 of each dimension's range, plus float rounding */
	check_kind(CDX_REFINE_SQ8, 0.5 / 256 + 1e-5, 0);
}

static void
test_sq8_edges(void **state)
{
	(void) state;
	/* a constant dimension and values outside the trained range */
	float x[4 * 2] = { 1, 5, 1, 6, 1, 7, 1, 8 };
	float vmin[2], vdiff[2];
	cdx_sq8_train(x, 4, 2, vmin, vdiff);
	assert_true(vmin[0] == 1 && vdiff[0] == 0);
	assert_true(vmin[1] == 5 && vdiff[1] == 3);
	struct cdx_refine_store st
	    = { .kind = CDX_REFINE_SQ8, .dim = 2, .bytes_per_vector = 2, .vmin = vmin, .vdiff = vdiff };
	float out_of_range[4] = { 3, -100, 1, 100 };
	uint8_t codes[4];
	cdx_refine_encode(&st, out_of_range, 2, codes);
	assert_int_equal(codes[0], 0);
	assert_int_equal(codes[1], 0);
	assert_int_equal(codes[3], 255);
	float nan_row[2] = { NAN, 6.5f };
	cdx_refine_encode(&st, nan_row, 1, codes);
	assert_int_equal(codes[0], 0);
	assert_int_equal(codes[1], 128);
	cdx_sq8_train(x, 0, 2, vmin, vdiff);
	assert_true(vmin[1] == 0 && vdiff[1] == 0);
}

static void
test_parse_checks(void **state)
{
	(void) state;
	float x[10 * 4];
	for (int i = 0; i < 40; i++)
		x[i] = (float) i / 7.0f;
	int kinds[] = { CDX_REFINE_FP32, CDX_REFINE_FP16, CDX_REFINE_SQ8 };
	for (size_t k = 0; k < CDX_ARRAY_LEN(kinds); k++) {
		cdx_buf b = { 0 };
		build_part(&b, kinds[k], x, 10, 4);
		struct cdx_refine_store st;
		assert_int_equal(cdx_refine_store_parse(&st, b.data, b.len, 10, 4), CDX_OK);
		/* every shorter length, and one byte more, is refused */
		for (size_t len = 0; len < b.len; len++)
			assert_int_equal(cdx_refine_store_parse(&st, b.data, len, 10, 4), CDX_ECORRUPT);
		assert_int_equal(cdx_buf_append(&b, "", 1), CDX_OK);
		assert_int_equal(cdx_refine_store_parse(&st, b.data, b.len, 10, 4), CDX_ECORRUPT);
		b.len--;
		assert_int_equal(cdx_refine_store_parse(&st, b.data, b.len, 9, 4), CDX_ECORRUPT);
		assert_int_equal(cdx_refine_store_parse(&st, b.data, b.len, 10, 5), CDX_ECORRUPT);
		/* a rows field so large that rows x bytes wraps around */
		uint8_t *h = (uint8_t *) b.data;
		cdx_put_le64(h + 8, UINT64_MAX / 2 + 1);
		assert_int_equal(
		    cdx_refine_store_parse(&st, b.data, b.len, UINT64_MAX / 2 + 1, 4), CDX_ECORRUPT);
		cdx_put_le64(h + 8, 10);
		cdx_put_le32(h, 9); /* unknown kind */
		assert_int_equal(cdx_refine_store_parse(&st, b.data, b.len, 10, 4), CDX_ECORRUPT);
		cdx_put_le32(h, CDX_REFINE_NONE);
		assert_int_equal(cdx_refine_store_parse(&st, b.data, b.len, 10, 4), CDX_ECORRUPT);
		cdx_buf_fini(&b);
	}
	cdx_buf b = { 0 };
	assert_int_equal(cdx_refine_header_write(&b, CDX_REFINE_NONE, 4, 1, NULL, NULL), CDX_EINVAL);
	assert_int_equal(cdx_refine_header_write(&b, CDX_REFINE_SQ8, 4, 1, NULL, NULL), CDX_EINVAL);
	assert_int_equal(b.len, 0);
	cdx_buf_fini(&b);
}

static void
test_through_shard(void **state)
{
	(void) state;
	float *x = malloc(sizeof(float) * N * D);
	tu_clustered(x, N, D, 10, 9);
	cdx_buf b = { 0 };
	build_part(&b, CDX_REFINE_FP16, x, N, D);
	char *dir = tu_tmpdir("refine");
	char *path = tu_path(dir, "s.cdx");
	struct cdx_shard_info info = { .dim = D, .rows = N, .shard_count = 1, .metric = CDX_METRIC_L2 };
	snprintf(info.collection, sizeof(info.collection), "c");
	cdx_shard_writer *w;
	assert_int_equal(cdx_shard_writer_open(&w, path, &info), CDX_OK);
	assert_int_equal(cdx_shard_writer_begin_part(w, CDX_PART_REFINE, 0), CDX_OK);
	assert_int_equal(cdx_shard_writer_write(w, b.data, b.len), CDX_OK);
	assert_int_equal(cdx_shard_writer_end_part(w), CDX_OK);
	assert_int_equal(cdx_shard_writer_commit(w, NULL), CDX_OK);
	cdx_shard *s;
	assert_int_equal(cdx_shard_open(&s, path), CDX_OK);
	void *data;
	size_t len;
	assert_int_equal(cdx_shard_read_part(s, CDX_PART_REFINE, &data, &len), CDX_OK);
	struct cdx_refine_store st;
	assert_int_equal(
	    cdx_refine_store_parse(&st, data, len, cdx_shard_info(s)->rows, cdx_shard_info(s)->dim), CDX_OK);
	float v[D];
	cdx_refine_decode(&st, N - 1, v);
	for (int j = 0; j < D; j++)
		assert_true(fabsf(v[j] - x[(N - 1) * D + j]) <= fabsf(x[(N - 1) * D + j]) / 1024 + 1e-7f);
	free(data);
	cdx_shard_close(s);
	free(path);
	tu_rmdir(dir);
	cdx_buf_fini(&b);
	free(x);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fp32),
		cmocka_unit_test(test_fp16),
		cmocka_unit_test(test_sq8),
		cmocka_unit_test(test_sq8_edges),
		cmocka_unit_test(test_parse_checks),
		cmocka_unit_test(test_through_shard),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
