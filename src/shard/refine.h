/*
 * refine.h — the REFINE part: full-precision-ish copies of the vectors used to
 * re-rank the top k x factor IVF-PQ candidates exactly at serve time.
 *
 * Layout (after lz4 decompression), little-endian:
 *   uint32 kind (enum cdx_refine_kind), uint32 dim, uint64 rows,
 *   SQ8 only: float vmin[dim], float vdiff[dim]   (x = vmin + vdiff * (c + 0.5) / 256)
 *   rows x cdx_refine_bytes_per_vector(kind, dim) bytes, row-major, shard-local row order.
 * Vectors are stored as indexed: already normalised for the cosine metric.
 */
#ifndef CANDEX_REFINE_H
#define CANDEX_REFINE_H

#include <stdint.h>

#include "shard/shard.h"

struct cdx_refine_store {
	int kind;
	uint32_t dim;
	uint64_t rows;
	const float *vmin;   /* SQ8: per-dimension minimum */
	const float *vdiff;  /* SQ8: per-dimension max - min */
	const uint8_t *data; /* rows x bytes_per_vector */
	size_t bytes_per_vector;
};

/* SQ8 trainer: per-dimension min/max over a sample (rows x dim). */
void cdx_sq8_train(const float *x, size_t rows, uint32_t dim, float *vmin, float *vdiff);

/* cdx_refine_header_write appends the part header (and SQ8 tables) to out. */
int cdx_refine_header_write(
    cdx_buf *out, int kind, uint32_t dim, uint64_t rows, const float *vmin, const float *vdiff);
/* cdx_refine_encode encodes n rows of x into out (bytes_per_vector each). */
void cdx_refine_encode(const struct cdx_refine_store *st, const float *x, size_t n, uint8_t *out);
/* cdx_refine_store_parse points st into a decompressed REFINE part (no copy;
 * data must outlive st). Returns CDX_ECORRUPT on any size inconsistency. */
int cdx_refine_store_parse(
    struct cdx_refine_store *st, const void *data, size_t len, uint64_t expect_rows, uint32_t expect_dim);
/* cdx_refine_decode writes row's vector (dim floats) to out. */
void cdx_refine_decode(const struct cdx_refine_store *st, uint64_t row, float *out);
/* cdx_refine_distance: exact score of query q against row under metric
 * (L2: squared distance; IP/COS: inner product), computed from the stored copy. */
float cdx_refine_distance(const struct cdx_refine_store *st, uint64_t row, const float *q, int metric);

#endif
