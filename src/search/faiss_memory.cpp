/*
 * faiss_memory.cpp — how many bytes a loaded Faiss index holds, counted
 * from its C++ objects (the C API does not say). The size of the index as
 * serialised misses what Faiss builds when it reads one: an L2 IVF-PQ's
 * precomputed table (nlist x M x 2^nbits floats: 33.5 MB on sift, where
 * the codes are 4.5 MB), direct maps, and the slack of its vectors. This is
 * the one C++ file of candex; it only reads fields.
 */
#include <cstdint>

#include <faiss/IndexFlatCodes.h>
#include <faiss/IndexIVF.h>
#include <faiss/IndexIVFPQ.h>
#include <faiss/IndexIVFPQFastScan.h>
#include <faiss/IndexPQ.h>
#include <faiss/IndexScalarQuantizer.h>
#include <faiss/invlists/BlockInvertedLists.h>
#include <faiss/invlists/InvertedLists.h>

#include <faiss/c_api/Index_c.h>

#include "search/faiss_memory.h"

namespace
{

template <typename T>
uint64_t
vec_bytes(const std::vector<T> &v)
{
	return (uint64_t) v.capacity() * sizeof(T);
}

uint64_t
invlists_bytes(const faiss::InvertedLists *il)
{
	if (il == nullptr)
		return 0;
	uint64_t b = 0;
	if (auto *a = dynamic_cast<const faiss::ArrayInvertedLists *>(il)) {
		for (size_t i = 0; i < a->nlist; i++)
			b += vec_bytes(a->codes[i]) + vec_bytes(a->ids[i]);
		return b + 2 * (uint64_t) a->nlist * sizeof(std::vector<uint8_t>);
	}
	if (auto *bl = dynamic_cast<const faiss::BlockInvertedLists *>(il)) {
		for (size_t i = 0; i < bl->nlist; i++)
			b += bl->codes[i].nbytes() + vec_bytes(bl->ids[i]);
		return b;
	}
	/* another kind: at least its codes and ids */
	for (size_t i = 0; i < il->nlist; i++)
		b += (uint64_t) il->list_size(i) * (il->code_size + sizeof(faiss::Index::idx_t));
	return b;
}

uint64_t
index_bytes(const faiss::Index *ix)
{
	if (ix == nullptr)
		return 0;
	uint64_t b = 0;
	if (auto *fc = dynamic_cast<const faiss::IndexFlatCodes *>(ix))
		b += vec_bytes(fc->codes);
	if (auto *pq = dynamic_cast<const faiss::IndexPQ *>(ix))
		b += vec_bytes(pq->pq.centroids);
	if (auto *sq = dynamic_cast<const faiss::IndexScalarQuantizer *>(ix))
		b += vec_bytes(sq->sq.trained);
	if (auto *ivf = dynamic_cast<const faiss::IndexIVF *>(ix)) {
		b += index_bytes(ivf->quantizer);
		b += invlists_bytes(ivf->invlists);
		b += vec_bytes(ivf->direct_map.array);
		/* an unordered_map node: key, value, next pointer, hash, malloc */
		b += (uint64_t) ivf->direct_map.hashtable.size() * 48;
	}
	if (auto *ivfpq = dynamic_cast<const faiss::IndexIVFPQ *>(ix))
		b += vec_bytes(ivfpq->pq.centroids) + ivfpq->precomputed_table.nbytes();
	if (auto *fs = dynamic_cast<const faiss::IndexIVFPQFastScan *>(ix))
		b += vec_bytes(fs->pq.centroids) + fs->precomputed_table.nbytes();
	if (auto *ivfsq = dynamic_cast<const faiss::IndexIVFScalarQuantizer *>(ix))
		b += vec_bytes(ivfsq->sq.trained);
	return b;
}

} // namespace

extern "C" uint64_t
cdx__faiss_index_bytes(const FaissIndex *index)
{
	return index_bytes(reinterpret_cast<const faiss::Index *>(index));
}
