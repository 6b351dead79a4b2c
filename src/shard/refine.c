/*
 * refine.c — the REFINE part: encoding vectors as fp32, fp16 or sq8, and
 * scoring queries against the stored copies at serve time.
 *
 * The store is a view into the decompressed part (no copy), so parse
 * checks that the sizes add up exactly and that the arrays are aligned for
 * direct float / uint16 access. The format is little-endian, as are the
 * hosts candex supports.
 */
#include <math.h>
#include <string.h>

#include "shard/refine.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the REFINE store is read in place and assumes a little-endian host"
#endif

#define REFINE_HEADER_BYTES 16

void
cdx_sq8_train(const float *x, size_t rows, uint32_t dim, float *vmin, float *vdiff)
{
	if (rows == 0) {
		for (uint32_t j = 0; j < dim; j++)
			vmin[j] = vdiff[j] = 0;
		return;
	}
	for (uint32_t j = 0; j < dim; j++)
		vmin[j] = vdiff[j] = x[j]; /* vdiff holds the max until the end */
	for (size_t i = 1; i < rows; i++) {
		const float *r = x + i * dim;
		for (uint32_t j = 0; j < dim; j++) {
			if (r[j] < vmin[j])
				vmin[j] = r[j];
			if (r[j] > vdiff[j])
				vdiff[j] = r[j];
		}
	}
	for (uint32_t j = 0; j < dim; j++)
		vdiff[j] -= vmin[j];
}

int
cdx_refine_header_write(
    cdx_buf *out, int kind, uint32_t dim, uint64_t rows, const float *vmin, const float *vdiff)
{
	if (kind < CDX_REFINE_FP32 || kind > CDX_REFINE_SQ8 || dim == 0)
		return cdx_error(CDX_EINVAL, "refine header: kind %d, dim %u", kind, dim);
	if (kind == CDX_REFINE_SQ8 && (vmin == NULL || vdiff == NULL))
		return cdx_error(CDX_EINVAL, "refine header: sq8 needs vmin and vdiff");
	size_t tables = kind == CDX_REFINE_SQ8 ? (size_t) dim * 8 : 0;
	int rc = cdx_buf_reserve(out, REFINE_HEADER_BYTES + tables);
	if (rc != CDX_OK)
		return rc;
	uint8_t *p = (uint8_t *) out->data + out->len;
	cdx_put_le32(p, (uint32_t) kind);
	cdx_put_le32(p + 4, dim);
	cdx_put_le64(p + 8, rows);
	if (tables) {
		memcpy(p + 16, vmin, (size_t) dim * 4);
		memcpy(p + 16 + (size_t) dim * 4, vdiff, (size_t) dim * 4);
	}
	out->len += REFINE_HEADER_BYTES + tables;
	return CDX_OK;
}

static inline uint8_t
sq8_code(float x, float vmin, float vdiff)
{
	if (!(vdiff > 0))
		return 0;
	float t = (x - vmin) / vdiff * 256.0f;
	if (!(t > 0)) /* also NaN */
		return 0;
	if (t >= 255.0f)
		return 255;
	return (uint8_t) t;
}

static inline float
sq8_value(uint8_t c, float vmin, float vdiff)
{
	return vmin + vdiff * ((float) c + 0.5f) * (1.0f / 256.0f);
}

void
cdx_refine_encode(const struct cdx_refine_store *st, const float *x, size_t n, uint8_t *out)
{
	uint32_t dim = st->dim;
	for (size_t i = 0; i < n; i++) {
		const float *v = x + i * dim;
		uint8_t *o = out + i * st->bytes_per_vector;
		switch (st->kind) {
		case CDX_REFINE_FP32:
			memcpy(o, v, (size_t) dim * 4);
			break;
		case CDX_REFINE_FP16:
			for (uint32_t j = 0; j < dim; j++) {
				uint16_t h = cdx_f32_to_f16(v[j]);
				memcpy(o + 2 * (size_t) j, &h, 2);
			}
			break;
		case CDX_REFINE_SQ8:
			for (uint32_t j = 0; j < dim; j++)
				o[j] = sq8_code(v[j], st->vmin[j], st->vdiff[j]);
			break;
		default:
			break;
		}
	}
}

int
cdx_refine_store_parse(
    struct cdx_refine_store *st, const void *data, size_t len, uint64_t expect_rows, uint32_t expect_dim)
{
	memset(st, 0, sizeof(*st));
	const uint8_t *p = data;
	if (len < REFINE_HEADER_BYTES)
		return cdx_error(CDX_ECORRUPT, "refine part: %zu bytes, shorter than its header", len);
	if (((uintptr_t) p & 3) != 0)
		return cdx_error(CDX_EINVAL, "refine part: buffer not 4-byte aligned");
	uint32_t kind = cdx_get_le32(p), dim = cdx_get_le32(p + 4);
	uint64_t rows = cdx_get_le64(p + 8);
	if (kind < CDX_REFINE_FP32 || kind > CDX_REFINE_SQ8)
		return cdx_error(CDX_ECORRUPT, "refine part: unknown kind %u", kind);
	if (dim != expect_dim || dim == 0)
		return cdx_error(CDX_ECORRUPT, "refine part: dim %u, expected %u", dim, expect_dim);
	if (rows != expect_rows)
		return cdx_error(CDX_ECORRUPT, "refine part: %llu rows, expected %llu",
		    (unsigned long long) rows, (unsigned long long) expect_rows);
	size_t bpv = cdx_refine_bytes_per_vector((int) kind, dim);
	size_t tables = kind == CDX_REFINE_SQ8 ? (size_t) dim * 8 : 0;
	size_t avail = len - REFINE_HEADER_BYTES;
	if (tables > avail || rows > (avail - tables) / bpv || rows * bpv != avail - tables)
		return cdx_error(CDX_ECORRUPT, "refine part: %zu bytes do not hold %llu %s rows of dim %u",
		    len, (unsigned long long) rows, cdx_refine_name((int) kind), dim);
	st->kind = (int) kind;
	st->dim = dim;
	st->rows = rows;
	st->bytes_per_vector = bpv;
	if (tables) {
		st->vmin = (const float *) (p + REFINE_HEADER_BYTES);
		st->vdiff = st->vmin + dim;
	}
	st->data = p + REFINE_HEADER_BYTES + tables;
	return CDX_OK;
}

void
cdx_refine_decode(const struct cdx_refine_store *st, uint64_t row, float *out)
{
	const uint8_t *r = st->data + row * st->bytes_per_vector;
	uint32_t dim = st->dim;
	switch (st->kind) {
	case CDX_REFINE_FP32:
		memcpy(out, r, (size_t) dim * 4);
		break;
	case CDX_REFINE_FP16: {
		const uint16_t *h = (const uint16_t *) r;
		for (uint32_t j = 0; j < dim; j++)
			out[j] = cdx_f16_to_f32(h[j]);
		break;
	}
	case CDX_REFINE_SQ8:
		for (uint32_t j = 0; j < dim; j++)
			out[j] = sq8_value(r[j], st->vmin[j], st->vdiff[j]);
		break;
	default:
		memset(out, 0, (size_t) dim * sizeof(float));
		break;
	}
}

/* Portable kernel: any x86-64 (or other) host. */
static float
distance_portable(const struct cdx_refine_store *st, const uint8_t *r, const float *q, int l2)
{
	uint32_t dim = st->dim;
	float acc = 0;
	switch (st->kind) {
	case CDX_REFINE_FP32: {
		const float *v = (const float *) r;
		if (l2) {
			for (uint32_t j = 0; j < dim; j++) {
				float d = q[j] - v[j];
				acc += d * d;
			}
		} else {
			for (uint32_t j = 0; j < dim; j++)
				acc += q[j] * v[j];
		}
		break;
	}
	case CDX_REFINE_FP16: {
		const uint16_t *h = (const uint16_t *) r;
		for (uint32_t j = 0; j < dim; j++) {
			float v = cdx_f16_to_f32(h[j]);
			if (l2)
				acc += (q[j] - v) * (q[j] - v);
			else
				acc += q[j] * v;
		}
		break;
	}
	case CDX_REFINE_SQ8:
		for (uint32_t j = 0; j < dim; j++) {
			float v = sq8_value(r[j], st->vmin[j], st->vdiff[j]);
			if (l2)
				acc += (q[j] - v) * (q[j] - v);
			else
				acc += q[j] * v;
		}
		break;
	default:
		break;
	}
	return acc;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>

#define AVX2_TARGET __attribute__((target("avx2,fma,f16c")))

/* hsum: the sum of a vector's 8 lanes. */
AVX2_TARGET static inline float
hsum(__m256 v)
{
	__m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_movehdup_ps(s));
	return _mm_cvtss_f32(s);
}

/* AVX2 kernel: 8 dimensions a step; the re-rank of k x factor candidates
 * is the one per-candidate loop the server runs outside Faiss. The tail
 * (dim % 8) goes through the portable formulas. */
AVX2_TARGET static float
distance_avx2(const struct cdx_refine_store *st, const uint8_t *r, const float *q, int l2)
{
	uint32_t dim = st->dim, j = 0;
	__m256 acc = _mm256_setzero_ps();
	const __m256 half = _mm256_set1_ps(0.5f), inv256 = _mm256_set1_ps(1.0f / 256.0f);
	float tail = 0;
	for (; j + 8 <= dim; j += 8) {
		__m256 v;
		switch (st->kind) {
		case CDX_REFINE_FP32:
			v = _mm256_loadu_ps((const float *) r + j);
			break;
		case CDX_REFINE_FP16:
			v = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) ((const uint16_t *) r + j)));
			break;
		default: { /* SQ8: vmin + vdiff * (c + 0.5) / 256 */
			__m256 c = _mm256_cvtepi32_ps(
			    _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *) (r + j))));
			__m256 scale = _mm256_mul_ps(_mm256_loadu_ps(st->vdiff + j), inv256);
			v = _mm256_fmadd_ps(_mm256_add_ps(c, half), scale, _mm256_loadu_ps(st->vmin + j));
			break;
		}
		}
		__m256 x = _mm256_loadu_ps(q + j);
		if (l2) {
			__m256 d = _mm256_sub_ps(x, v);
			acc = _mm256_fmadd_ps(d, d, acc);
		} else {
			acc = _mm256_fmadd_ps(x, v, acc);
		}
	}
	for (; j < dim; j++) {
		float v = st->kind == CDX_REFINE_FP32 ? ((const float *) r)[j]
		    : st->kind == CDX_REFINE_FP16     ? cdx_f16_to_f32(((const uint16_t *) r)[j])
		                                      : sq8_value(r[j], st->vmin[j], st->vdiff[j]);
		tail += l2 ? (q[j] - v) * (q[j] - v) : q[j] * v;
	}
	return hsum(acc) + tail;
}

static int
have_avx2(void)
{
	static int cached = -1; /* same answer from every thread: a benign race */
	if (cached < 0) {
		/* F16C from cpuid: clang 14 (the fuzz build) has no "f16c"
		 * for __builtin_cpu_supports */
		unsigned a, b, c, d;
		int f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
		cached = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
	}
	return cached;
}
#endif

float
cdx_refine_distance(const struct cdx_refine_store *st, uint64_t row, const float *q, int metric)
{
	const uint8_t *r = st->data + row * st->bytes_per_vector;
	int l2 = metric == CDX_METRIC_L2;
	if (st->kind < CDX_REFINE_FP32 || st->kind > CDX_REFINE_SQ8)
		return 0;
#if defined(__x86_64__) && defined(__GNUC__)
	if (have_avx2())
		return distance_avx2(st, r, q, l2);
#endif
	return distance_portable(st, r, q, l2);
}
