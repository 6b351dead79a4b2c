/*
 * faissx.h — the few Faiss 1.7.3 features candex needs that its C API does
 * not offer, as C functions over the same FaissIndex handles. Everything
 * else uses the C API. Errors follow the C API's convention: 0 on success,
 * non-zero after an exception, whose text faiss_get_last_error() returns
 * (so cdx_error_faiss reports it as for any C API call).
 */
#ifndef CANDEX_FAISSX_H
#define CANDEX_FAISSX_H

#include <stddef.h>
#include <stdint.h>

#include <faiss/c_api/Index_c.h>

#ifdef __cplusplus
extern "C" {
#endif

/* cdx_fx_unwrap: for an IndexPreTransform (e.g. "PCA64,IVF256,PQ16x8np"),
 * *inner is the index after its transforms (borrowed: owned by index) and
 * *inner_dim that index's dimension; for any other index, index itself and
 * its dimension. */
int cdx_fx_unwrap(FaissIndex *index, FaissIndex **inner, int *inner_dim);

/* cdx_fx_apply_pretransform writes n vectors x (the index's input
 * dimension) transformed by index's pre-transform chain into out (the
 * inner dimension each, caller-allocated). index must be an
 * IndexPreTransform. Safe to call from several threads at once. */
int cdx_fx_apply_pretransform(const FaissIndex *index, size_t n, const float *x, float *out);

/* cdx_fx_train_params sets, for the IVF inside index (if any), the k-means
 * iterations and the sample cap (max points per centroid) of the coarse
 * quantizer and, for an IVF-PQ, of the PQ codebooks, and turns polysemous
 * training off; a PCA in front trains on at most max_points_per_centroid / 2
 * points per input dimension. Faiss defaults: 25 iterations, 256 points per
 * centroid, 1000 points per PCA dimension. */
int cdx_fx_train_params(FaissIndex *index, int niter, int max_points_per_centroid);

/* cdx_fx_ivfpq_like makes, in *out (caller frees with faiss_Index_free),
 * an untrained IVF-PQ (fast-scan when fastscan is set: 4-bit codes in
 * blocks, IndexIVFPQFastScan) with pq_m sub-quantizers of nbits over trained's
 * coarse stage: copies of its trained pre-transform chain (if any) and its
 * coarse quantizer, the same metric and train parameters. Training *out
 * then trains only the PQ codebooks. trained must be a trained IVF (maybe
 * behind a pre-transform). */
int cdx_fx_ivfpq_like(const FaissIndex *trained, int pq_m, int nbits, int fastscan, FaissIndex **out);

/* cdx_fx_list_sizes writes the size of each of the nlist inverted lists of
 * the IVF inside index into sizes. */
int cdx_fx_list_sizes(const FaissIndex *index, size_t *sizes, size_t nlist);

/* A row predicate for filtered scans: member(ctx, label) is non-zero for
 * the labels (shard-local rows) a search may return. Called once per code
 * the scan visits, possibly from several threads at once. */
typedef int (*cdx_fx_member_fn)(const void *ctx, int64_t label);

/* cdx_fx_selector_scan: 1 if index (an inner index, see cdx_fx_unwrap) is
 * of a type whose scan applies an IDSelector in Faiss 1.7.3 (IVF-Flat,
 * IVF-PQ, IVF-SQ, Flat), 0 otherwise (fast-scan throws, others may ignore
 * it): searches over other types filter their results instead. */
int cdx_fx_selector_scan(const FaissIndex *index);

/* cdx_fx_ivf_search_sel is IndexIVF::search_preassigned over n queries x
 * (the IVF's dimension) with their coarse lists assign/cdis (n x nprobe,
 * -1 entries skipped), nprobe given here rather than taken from the shared
 * index (so it may exceed the index's own), and, when member is not NULL,
 * an IDSelector that asks member: the filter applies inside the scan, so
 * the k results are the nearest of the rows that pass. ivf is an IVF index
 * (the inner index of cdx_fx_unwrap). */
int cdx_fx_ivf_search_sel(const FaissIndex *ivf, size_t n, const float *x, size_t k, const int64_t *assign,
    const float *cdis, size_t nprobe, float *distances, int64_t *labels, cdx_fx_member_fn member,
    const void *ctx);

/* cdx_fx_search_sel is Index::search with an IDSelector that asks member
 * (exact Flat indexes apply it inside their scan). */
int cdx_fx_search_sel(const FaissIndex *index, size_t n, const float *x, size_t k, float *distances,
    int64_t *labels, cdx_fx_member_fn member, const void *ctx);
/* cdx_fx_clone makes, in *out (caller frees with faiss_Index_free), a deep
 * copy of index: faiss_clone_index where Faiss can clone it, else through
 * its serialised form (fast-scan IVF indexes, which Faiss 1.7.3 does not
 * clone). */
int cdx_fx_clone(const FaissIndex *index, FaissIndex **out);

/* cdx_fx_is_fastscan: 1 if ivf (an IVF as cdx_fx_unwrap returns it) is a
 * 4-bit fast-scan IVF-PQ (IndexIVFPQFastScan), else 0. */
int cdx_fx_is_fastscan(const FaissIndex *ivf);

/* A search view of a fast-scan IVF-PQ. Faiss 1.7.3's fast-scan search
 * takes nprobe from the index object and runs the coarse quantizer itself
 * (it ignores search parameters and has no search_preassigned). A view is a
 * small copy of the index object that shares its inverted lists and its
 * coarse quantizer (own_invlists and own_fields false): its nprobe is set
 * per call, and its quantizer is a stand-in that returns the coarse
 * assignment the caller already computed, so that every shard reuses one
 * assignment. One thread uses a view at a time; any number of views search
 * the shared index at once. A view must not outlive the index. */
typedef struct cdx_fx_view cdx_fx_view;

/* cdx_fx_view_new makes a view of ivf (a fast-scan IVF, cdx_fx_is_fastscan)
 * in *out; free it with cdx_fx_view_free (NULL is a no-op). */
int cdx_fx_view_new(const FaissIndex *ivf, cdx_fx_view **out);
void cdx_fx_view_free(cdx_fx_view *v);

/* cdx_fx_view_search searches n queries x (the IVF's dimension) for k
 * results each, probing for query i the nprobe lists assign[i * nprobe ..]
 * whose coarse distances are cdis[i * nprobe ..] (as the coarse quantizer
 * returned them; -1 lists are skipped). D/I are n x k, as Faiss fills them. */
int cdx_fx_view_search(cdx_fx_view *v, size_t n, const float *x, size_t k, size_t nprobe, const idx_t *assign,
    const float *cdis, float *D, idx_t *I);

/* cdx_fx_index_bytes returns the bytes index holds in memory as its C++
 * objects hold them: codes, ids, quantizers, codebooks, pre-transform
 * matrices, precomputed tables and direct maps. The size of an index as
 * serialised misses what Faiss builds when it reads one: an L2 IVF-PQ's
 * precomputed table (nlist x M x 2^nbits floats: 33.5 MB on sift, whose
 * codes are 4.5 MB), direct maps, and the slack of its vectors. */
uint64_t cdx_fx_index_bytes(const FaissIndex *index);

#ifdef __cplusplus
}
#endif

#endif
