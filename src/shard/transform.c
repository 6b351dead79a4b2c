/*
 * transform.c — item and query vectors as the Faiss index holds them (see
 * transform.h).
 */
#include <math.h>
#include <string.h>

#include "shard/shard.h"
#include "shard/transform.h"

int
cdx_map_identity(const struct cdx_vector_map *vm)
{
	return vm->transform == CDX_TRANSFORM_NONE && vm->index_dim == vm->dim;
}

static double
norm2(const float *x, uint32_t d)
{
	double s = 0;
	for (uint32_t j = 0; j < d; j++)
		s += (double) x[j] * x[j];
	return s;
}

static void
map_rows(const struct cdx_vector_map *vm, const float *x, size_t n, float *out, int items)
{
	size_t d = vm->dim, di = vm->index_dim;
	for (size_t i = 0; i < n; i++) {
		const float *v = x + i * d;
		float *o = out + i * di;
		memmove(o, v, d * sizeof(float)); /* out may be x when di == d */
		size_t j = d;
		if (vm->transform == CDX_TRANSFORM_MIPS_L2) {
			double rest = items ? vm->max_norm2 - norm2(v, (uint32_t) d) : 0;
			o[j++] = rest > 0 ? (float) sqrt(rest) : 0.0f;
		}
		for (; j < di; j++)
			o[j] = 0;
	}
}

void
cdx_map_items(const struct cdx_vector_map *vm, const float *x, size_t n, float *out)
{
	map_rows(vm, x, n, out, 1);
}

void
cdx_map_queries(const struct cdx_vector_map *vm, const float *q, size_t n, float *out)
{
	map_rows(vm, q, n, out, 0);
}

float
cdx_map_score(const struct cdx_vector_map *vm, const float *q, float d)
{
	if (vm->transform == CDX_TRANSFORM_MIPS_L2)
		return (float) ((norm2(q, vm->dim) + vm->max_norm2 - (double) d) / 2);
	if (vm->metric == CDX_METRIC_COS)
		return 1.0f - 0.5f * d; /* L2 over unit vectors: |q - x|^2 = 2 - 2 cos */
	return d;
}
