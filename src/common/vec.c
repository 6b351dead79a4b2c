/*
 * vec.c — float vectors: finiteness, normalisation, half precision, and the
 * seeded normal deviates the sample data and tests use.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "common/common.h"

double
cdx_rng_normal(cdx_rng *r)
{
	/* Box-Muller; one value per call keeps the stream simple to reason about. */
	double u1 = cdx_rng_uniform(r), u2 = cdx_rng_uniform(r);
	if (u1 < 1e-300)
		u1 = 1e-300;
	return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

long
cdx_find_nonfinite(const float *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!isfinite(v[i]))
			return (long) i;
	return -1;
}

void
cdx_normalize_rows(float *v, size_t n, size_t dim)
{
	for (size_t i = 0; i < n; i++) {
		float *row = v + i * dim;
		double s = 0;
		for (size_t j = 0; j < dim; j++)
			s += (double) row[j] * row[j];
		if (s <= 0)
			continue;
		float inv = (float) (1.0 / sqrt(s));
		for (size_t j = 0; j < dim; j++)
			row[j] *= inv;
	}
}

uint16_t
cdx_f32_to_f16(float f)
{
	uint32_t x;
	memcpy(&x, &f, 4);
	uint32_t sign = (x >> 16) & 0x8000u;
	int32_t exp = (int32_t) ((x >> 23) & 0xff) - 127 + 15;
	uint32_t mant = x & 0x7fffffu;
	if (((x >> 23) & 0xff) == 0xff) /* inf / nan */
		return (uint16_t) (sign | 0x7c00u | (mant ? 0x200u : 0));
	if (exp >= 31)
		return (uint16_t) (sign | 0x7c00u); /* overflow -> inf */
	if (exp <= 0) {
		if (exp < -10)
			return (uint16_t) sign; /* underflow -> 0 */
		mant |= 0x800000u;
		uint32_t shift = (uint32_t) (14 - exp);
		uint32_t half = mant >> shift;
		uint32_t rem = mant & ((1u << shift) - 1);
		uint32_t mid = 1u << (shift - 1);
		if (rem > mid || (rem == mid && (half & 1)))
			half++;
		return (uint16_t) (sign | half);
	}
	uint32_t half = sign | ((uint32_t) exp << 10) | (mant >> 13);
	uint32_t rem = mant & 0x1fffu;
	if (rem > 0x1000u || (rem == 0x1000u && (half & 1)))
		half++; /* may carry into the exponent, which is the right result */
	return (uint16_t) half;
}

float
cdx_f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t) (h & 0x8000u) << 16;
	uint32_t exp = (h >> 10) & 0x1f;
	uint32_t mant = h & 0x3ffu;
	uint32_t x;
	if (exp == 0) {
		if (mant == 0) {
			x = sign;
		} else {
			int e = -1;
			do {
				e++;
				mant <<= 1;
			} while ((mant & 0x400u) == 0);
			x = sign | ((uint32_t) (127 - 15 - e) << 23) | ((mant & 0x3ffu) << 13);
		}
	} else if (exp == 31) {
		x = sign | 0x7f800000u | (mant << 13);
	} else {
		x = sign | ((exp - 15 + 127) << 23) | (mant << 13);
	}
	float f;
	memcpy(&f, &x, 4);
	return f;
}
