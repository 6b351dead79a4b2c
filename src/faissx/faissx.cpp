/*
 * faissx.cpp — C wrappers over Faiss 1.7.3's C++ API (see faissx.h). Each
 * catches every exception and stores it where the C API keeps its last
 * error, so callers handle errors exactly as for C API calls.
 */
#include "faissx/faissx.h"

#include <cstring>
#include <exception>
#include <memory>
#include <stdexcept>

#include <faiss/IndexFlat.h>
#include <faiss/IndexFlatCodes.h>
#include <faiss/IndexIVFPQ.h>
#include <faiss/IndexIVFPQFastScan.h>
#include <faiss/IndexPQ.h>
#include <faiss/IndexPreTransform.h>
#include <faiss/IndexScalarQuantizer.h>
#include <faiss/invlists/BlockInvertedLists.h>
#include <faiss/invlists/InvertedLists.h>
#include <faiss/VectorTransform.h>
#include <faiss/clone_index.h>
#include <faiss/c_api/error_impl.h>

namespace
{

faiss::Index *
idx(FaissIndex *i)
{
	return reinterpret_cast<faiss::Index *>(i);
}

const faiss::Index *
idx(const FaissIndex *i)
{
	return reinterpret_cast<const faiss::Index *>(i);
}

/* inner_of: the index behind a pre-transform, or the index itself. */
const faiss::Index *
inner_of(const faiss::Index *i)
{
	auto *pt = dynamic_cast<const faiss::IndexPreTransform *>(i);
	return pt != nullptr ? pt->index : i;
}

template <typename F>
int
guarded(F f)
{
	try {
		f();
		return 0;
	} catch (std::exception &e) {
		faiss_last_exception = std::current_exception();
		return -2;
	} catch (...) {
		faiss_last_exception = std::make_exception_ptr(std::runtime_error("unknown Faiss error"));
		return -1;
	}
}

} // namespace

extern "C" int
cdx_fx_unwrap(FaissIndex *index, FaissIndex **inner, int *inner_dim)
{
	return guarded([&] {
		faiss::Index *in = const_cast<faiss::Index *>(inner_of(idx(index)));
		*inner = reinterpret_cast<FaissIndex *>(in);
		*inner_dim = in->d;
	});
}

extern "C" int
cdx_fx_apply_pretransform(const FaissIndex *index, size_t n, const float *x, float *out)
{
	return guarded([&] {
		auto *pt = dynamic_cast<const faiss::IndexPreTransform *>(idx(index));
		if (pt == nullptr)
			throw std::invalid_argument("cdx_fx_apply_pretransform: not an IndexPreTransform");
		if (n == 0)
			return;
		/* apply_chain allocates each step's output with new[] */
		std::unique_ptr<const float[]> t(pt->apply_chain((faiss::Index::idx_t) n, x));
		std::memcpy(out, t.get(), n * (size_t) pt->index->d * sizeof(float));
		if (t.get() == x) /* an empty chain returns its input: not ours to free */
			(void) t.release();
	});
}

extern "C" int
cdx_fx_train_params(FaissIndex *index, int niter, int max_points_per_centroid)
{
	return guarded([&] {
		if (auto *pt = dynamic_cast<faiss::IndexPreTransform *>(idx(index)))
			for (faiss::VectorTransform *vt : pt->chain)
				if (auto *pca = dynamic_cast<faiss::PCAMatrix *>(vt))
					pca->max_points_per_d = (size_t) max_points_per_centroid / 2;
		auto *ivf = dynamic_cast<faiss::IndexIVF *>(const_cast<faiss::Index *>(inner_of(idx(index))));
		if (ivf == nullptr)
			return;
		ivf->cp.niter = niter;
		ivf->cp.max_points_per_centroid = max_points_per_centroid;
		if (auto *pq = dynamic_cast<faiss::IndexIVFPQ *>(ivf)) {
			pq->pq.cp.niter = niter;
			pq->pq.cp.max_points_per_centroid = max_points_per_centroid;
			pq->do_polysemous_training = false;
		}
	});
}

extern "C" int
cdx_fx_ivfpq_like(const FaissIndex *trained, int pq_m, int nbits, FaissIndex **out)
{
	*out = nullptr;
	return guarded([&] {
		auto *pt = dynamic_cast<const faiss::IndexPreTransform *>(idx(trained));
		auto *ivf = dynamic_cast<const faiss::IndexIVF *>(inner_of(idx(trained)));
		if (ivf == nullptr || !ivf->quantizer->is_trained
		    || ivf->quantizer->ntotal != (faiss::Index::idx_t) ivf->nlist)
			throw std::invalid_argument("cdx_fx_ivfpq_like: not a trained IVF index");
		std::unique_ptr<faiss::Index> q(faiss::clone_index(ivf->quantizer));
		auto made = std::make_unique<faiss::IndexIVFPQ>(
		    q.get(), ivf->d, ivf->nlist, (size_t) pq_m, (size_t) nbits, ivf->metric_type);
		made->own_fields = true;
		(void) q.release();
		made->cp = ivf->cp;
		made->pq.cp.niter = ivf->cp.niter;
		made->pq.cp.max_points_per_centroid = ivf->cp.max_points_per_centroid;
		made->do_polysemous_training = false;
		faiss::Index *result = made.release();
		if (pt != nullptr) {
			auto wrapped = std::make_unique<faiss::IndexPreTransform>(result);
			wrapped->own_fields = true;
			for (const faiss::VectorTransform *vt : pt->chain)
				wrapped->chain.push_back(faiss::Cloner().clone_VectorTransform(vt));
			wrapped->d = pt->d;
			wrapped->is_trained = false;
			result = wrapped.release();
		}
		*out = reinterpret_cast<FaissIndex *>(result);
	});
}

extern "C" int
cdx_fx_list_sizes(const FaissIndex *index, size_t *sizes, size_t nlist)
{
	return guarded([&] {
		auto *ivf = dynamic_cast<const faiss::IndexIVF *>(inner_of(idx(index)));
		if (ivf == nullptr || ivf->nlist != nlist)
			throw std::invalid_argument("cdx_fx_list_sizes: not an IVF index of that nlist");
		for (size_t i = 0; i < nlist; i++)
			sizes[i] = ivf->invlists->list_size(i);
	});
}

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
	if (auto *pt = dynamic_cast<const faiss::IndexPreTransform *>(ix)) {
		for (const faiss::VectorTransform *vt : pt->chain)
			if (auto *lt = dynamic_cast<const faiss::LinearTransform *>(vt))
				b += vec_bytes(lt->A) + vec_bytes(lt->b);
		return b + index_bytes(pt->index);
	}
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
cdx_fx_index_bytes(const FaissIndex *index)
{
	return index_bytes(idx(index));
}
