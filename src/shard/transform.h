/*
 * transform.h — what the Faiss index of a collection holds, given the
 * vectors a user indexed and searches with. Builder and search both map
 * vectors through here, so that items and queries always meet in the same
 * space.
 *
 *   metric cos        vectors are normalised first (the caller does it:
 *                     cdx_normalize_rows), and the index is L2 over them;
 *   transform mips-l2 (inner product reduced to L2) an item x becomes
 *                     [x, sqrt(max_norm2 - |x|^2)], a query q becomes [q, 0]:
 *                     |q' - x'|^2 = |q|^2 + max_norm2 - 2<q, x>, so L2 order
 *                     is inner-product order, and the inner product comes
 *                     back as (|q|^2 + max_norm2 - d) / 2;
 *   index_dim         zero coordinates pad both to index_dim, a multiple of the
 *                     PQ sub-vector size (they add nothing to any distance).
 *
 * A Faiss pre-transform (PCA) may follow inside the index itself; the
 * server applies it to queries through src/faissx.
 */
#ifndef CANDEX_TRANSFORM_H
#define CANDEX_TRANSFORM_H

#include <stddef.h>
#include <stdint.h>

struct cdx_vector_map {
	int metric;         /* enum cdx_metric */
	int transform;      /* enum cdx_transform */
	uint32_t dim;       /* the user's vectors */
	uint32_t index_dim; /* what Faiss indexes: >= dim (+ 1 for mips-l2) */
	double max_norm2;   /* mips-l2 */
};

/* cdx_map_identity: whether items and queries reach Faiss unchanged. */
int cdx_map_identity(const struct cdx_vector_map *vm);
/* cdx_map_items writes n items (dim floats each, normalised for cos) as
 * index vectors (index_dim floats each) into out. Items whose squared norm
 * exceeds max_norm2 get a 0 extra coordinate. */
void cdx_map_items(const struct cdx_vector_map *vm, const float *x, size_t n, float *out);
/* cdx_map_queries does the same for n queries. */
void cdx_map_queries(const struct cdx_vector_map *vm, const float *q, size_t n, float *out);
/* cdx_map_score turns the index's distance d for query q (dim floats, as
 * searched) into the collection's score: squared L2 for l2, the inner
 * product for ip (also under mips-l2), the cosine for cos. */
float cdx_map_score(const struct cdx_vector_map *vm, const float *q, float d);

#endif
