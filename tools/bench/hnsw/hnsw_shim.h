/*
 * hnsw_shim.h — a C view of hnswlib (Debian's libhnswlib-dev, header-only
 * C++), for the side-by-side benchmark only: candex never links hnswlib.
 */
#ifndef CANDEX_BENCH_HNSW_SHIM_H
#define CANDEX_BENCH_HNSW_SHIM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct bench_hnsw bench_hnsw;

/* bench_hnsw_build builds an HNSW graph (M, ef_construction, hnswlib's
 * fixed seed) over n vectors of dim, adding them one by one on this thread;
 * ip selects the inner-product space (give unit vectors for cosine), else
 * squared L2. Labels are row numbers. On success *hp is set; free it with
 * bench_hnsw_free. Returns 0, or -1 with msg (size msglen) filled. */
int bench_hnsw_build(bench_hnsw **hp, const float *x, size_t n, uint32_t dim, int ip, size_t M,
    size_t ef_construction, char *msg, size_t msglen);
void bench_hnsw_free(bench_hnsw *h); /* NULL is a no-op */

/* bench_hnsw_set_ef sets the search beam (hnswlib uses max(ef, k)). */
void bench_hnsw_set_ef(bench_hnsw *h, size_t ef);

/* bench_hnsw_search writes the k nearest labels of q into labels (-1 past
 * what was found), nearest first. One thread at a time. */
void bench_hnsw_search(const bench_hnsw *h, const float *q, size_t k, int64_t *labels);

/* bench_hnsw_bytes: what the graph holds in memory by its own structures
 * (level-0 block, upper-level links, their pointers and levels, the label
 * map at ~40 bytes an entry). */
uint64_t bench_hnsw_bytes(const bench_hnsw *h);

#ifdef __cplusplus
}
#endif

#endif
