/*
 * faissx.cpp — C wrappers over Faiss 1.7.3's C++ API (see faissx.h). Each
 * catches every exception and stores it where the C API keeps its last
 * error, so callers handle errors exactly as for C API calls.
 */
#include "faissx/faissx.h"

#include <cstddef>
#include <cstring>
#include <exception>
#include <memory>
#include <stdexcept>
#include <typeinfo>

#include <faiss/IndexFlat.h>
#include <faiss/IndexFlatCodes.h>
#include <faiss/IndexIVFFlat.h>
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
#include <faiss/impl/IDSelector.h>
#include <faiss/impl/io.h>
#include <faiss/index_io.h>

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

/* MemberSelector asks a C predicate (filtered scans). */
struct MemberSelector : faiss::IDSelector {
	cdx_fx_member_fn member;
	const void *ctx;
	MemberSelector(cdx_fx_member_fn m, const void *c)
	    : member(m)
	    , ctx(c)
	{
	}
	bool is_member(idx_t id) const override
	{
		return member(ctx, id) != 0;
	}
};

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
		if (auto *fs = dynamic_cast<faiss::IndexIVFPQFastScan *>(ivf)) {
			fs->pq.cp.niter = niter;
			fs->pq.cp.max_points_per_centroid = max_points_per_centroid;
		}
	});
}

extern "C" int
cdx_fx_ivfpq_like(const FaissIndex *trained, int pq_m, int nbits, int fastscan, FaissIndex **out)
{
	*out = nullptr;
	return guarded([&] {
		auto *pt = dynamic_cast<const faiss::IndexPreTransform *>(idx(trained));
		auto *ivf = dynamic_cast<const faiss::IndexIVF *>(inner_of(idx(trained)));
		if (ivf == nullptr || !ivf->quantizer->is_trained
		    || ivf->quantizer->ntotal != (faiss::Index::idx_t) ivf->nlist)
			throw std::invalid_argument("cdx_fx_ivfpq_like: not a trained IVF index");
		std::unique_ptr<faiss::Index> q(faiss::clone_index(ivf->quantizer));
		std::unique_ptr<faiss::IndexIVF> made;
		if (fastscan) {
			auto fs = std::make_unique<faiss::IndexIVFPQFastScan>(
			    q.get(), ivf->d, ivf->nlist, (size_t) pq_m, (size_t) nbits, ivf->metric_type);
			fs->pq.cp.niter = ivf->cp.niter;
			fs->pq.cp.max_points_per_centroid = ivf->cp.max_points_per_centroid;
			made = std::move(fs);
		} else {
			auto pq = std::make_unique<faiss::IndexIVFPQ>(
			    q.get(), ivf->d, ivf->nlist, (size_t) pq_m, (size_t) nbits, ivf->metric_type);
			pq->pq.cp.niter = ivf->cp.niter;
			pq->pq.cp.max_points_per_centroid = ivf->cp.max_points_per_centroid;
			pq->do_polysemous_training = false;
			made = std::move(pq);
		}
		made->own_fields = true;
		(void) q.release();
		made->cp = ivf->cp;
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

extern "C" int
cdx_fx_clone(const FaissIndex *index, FaissIndex **out)
{
	*out = nullptr;
	return guarded([&] {
		const faiss::Index *in = idx(index);
		faiss::Index *copy = nullptr;
		const faiss::Index *inner = inner_of(in);
		if (dynamic_cast<const faiss::IndexIVFFastScan *>(inner) == nullptr) {
			copy = faiss::clone_index(in);
		} else {
			faiss::VectorIOWriter w;
			faiss::write_index(in, &w);
			faiss::VectorIOReader r;
			r.data.swap(w.data);
			copy = faiss::read_index(&r);
		}
		*out = reinterpret_cast<FaissIndex *>(copy);
	});
}

extern "C" int
cdx_fx_is_fastscan(const FaissIndex *ivf)
{
	return dynamic_cast<const faiss::IndexIVFPQFastScan *>(idx(ivf)) != nullptr;
}

namespace
{

/* AssignedQuantizer stands in for a fast-scan view's coarse quantizer: its
 * search returns the assignment the caller computed (the view's search
 * asks it for exactly nprobe lists per query, for the queries from x on,
 * where x points into the queries the view searches: Faiss may split a
 * batch in slices); reconstruction, which residual look-up tables use,
 * goes to the real quantizer. */
struct AssignedQuantizer : faiss::Index {
	const faiss::Index *real = nullptr;
	const float *x0 = nullptr; /* the queries of the current search */
	size_t xdim = 0;
	const idx_t *assign = nullptr;
	const float *dis = nullptr;
	idx_t nq = 0, nprobe = 0;

	explicit AssignedQuantizer(const faiss::Index *q)
	    : faiss::Index(q->d, q->metric_type)
	    , real(q)
	{
		ntotal = q->ntotal;
		is_trained = true;
	}
	void add(idx_t, const float *) override
	{
		throw std::logic_error("AssignedQuantizer: read-only");
	}
	void reset() override
	{
		throw std::logic_error("AssignedQuantizer: read-only");
	}
	void search(idx_t n, const float *x, idx_t k, float *D, idx_t *I,
	    const faiss::SearchParameters *) const override
	{
		ptrdiff_t off = x - x0;
		idx_t i0 = (idx_t) (off / (ptrdiff_t) xdim);
		if (off < 0 || off % (ptrdiff_t) xdim != 0 || i0 + n > nq || k != nprobe)
			throw std::logic_error("AssignedQuantizer: asked for another assignment than given");
		std::memcpy(I, assign + i0 * k, (size_t) (n * k) * sizeof(idx_t));
		std::memcpy(D, dis + i0 * k, (size_t) (n * k) * sizeof(float));
	}
	void reconstruct(idx_t key, float *recons) const override
	{
		real->reconstruct(key, recons);
	}
};

} // namespace

struct cdx_fx_view {
	faiss::IndexIVFPQFastScan ivf;
	AssignedQuantizer q;

	explicit cdx_fx_view(const faiss::IndexIVFPQFastScan &o)
	    : q(o.quantizer)
	{
		/* every field search reads, but not the direct map (8 bytes an
		 * item, unused by search); the lists and quantizer are borrowed */
		ivf.d = o.d;
		ivf.ntotal = o.ntotal;
		ivf.is_trained = o.is_trained;
		ivf.metric_type = o.metric_type;
		ivf.metric_arg = o.metric_arg;
		ivf.nlist = o.nlist;
		ivf.quantizer = &q;
		ivf.own_fields = false;
		ivf.invlists = o.invlists;
		ivf.own_invlists = false;
		ivf.code_size = o.code_size;
		ivf.nprobe = 1;
		ivf.max_codes = o.max_codes;
		ivf.parallel_mode = o.parallel_mode;
		ivf.bbs = o.bbs;
		ivf.M = o.M;
		ivf.nbits = o.nbits;
		ivf.ksub = o.ksub;
		ivf.M2 = o.M2;
		ivf.implem = o.implem;
		ivf.skip = o.skip;
		ivf.by_residual = o.by_residual;
		ivf.qbs = o.qbs;
		ivf.qbs2 = o.qbs2;
		ivf.pq = o.pq;
		ivf.use_precomputed_table = o.use_precomputed_table;
		if (o.precomputed_table.size() > 0) /* Faiss's copy passes memcpy NULL when empty */
			ivf.precomputed_table = o.precomputed_table;
	}
};

extern "C" int
cdx_fx_view_new(const FaissIndex *ivf, cdx_fx_view **out)
{
	*out = nullptr;
	return guarded([&] {
		auto *fs = dynamic_cast<const faiss::IndexIVFPQFastScan *>(idx(ivf));
		if (fs == nullptr)
			throw std::invalid_argument("cdx_fx_view_new: not a fast-scan IVF-PQ index");
		*out = new cdx_fx_view(*fs);
	});
}

extern "C" void
cdx_fx_view_free(cdx_fx_view *v)
{
	delete v;
}

extern "C" int
cdx_fx_view_search(cdx_fx_view *v, size_t n, const float *x, size_t k, size_t nprobe, const idx_t *assign,
    const float *cdis, float *D, idx_t *I)
{
	return guarded([&] {
		if (nprobe == 0 || nprobe > v->ivf.nlist)
			throw std::invalid_argument("cdx_fx_view_search: nprobe out of range");
		v->q.x0 = x;
		v->q.xdim = (size_t) v->ivf.d;
		v->q.assign = assign;
		v->q.dis = cdis;
		v->q.nq = (faiss::Index::idx_t) n;
		v->q.nprobe = (faiss::Index::idx_t) nprobe;
		v->ivf.nprobe = nprobe;
		/* Faiss's default (12/13) batches queries by list and repacks
		 * the table for every list probed; candex's searches are small
		 * batches over lists they mostly do not share, and the plain
		 * scan with one table a query (10: heap, 11: reservoir beyond
		 * k 20) took 0.7-0.8x the CPU on sift-wallpapers, single
		 * queries and batches of 16 alike (BENCHMARKS.md) */
		v->ivf.implem = k > 20 ? 11 : 10;
		v->ivf.search((faiss::Index::idx_t) n, x, (faiss::Index::idx_t) k, D, I);
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

extern "C" int
cdx_fx_selector_scan(const FaissIndex *index)
{
	/* exact types: a subclass may override the scan and drop the selector */
	const std::type_info &t = typeid(*idx(index));
	return t == typeid(faiss::IndexIVFPQ) || t == typeid(faiss::IndexIVFFlat)
	    || t == typeid(faiss::IndexIVFScalarQuantizer) || t == typeid(faiss::IndexFlat)
	    || t == typeid(faiss::IndexFlatL2) || t == typeid(faiss::IndexFlatIP);
}

extern "C" int
cdx_fx_ivf_search_sel(const FaissIndex *ivf, size_t n, const float *x, size_t k, const int64_t *assign,
    const float *cdis, size_t nprobe, float *distances, int64_t *labels, cdx_fx_member_fn member,
    const void *ctx)
{
	return guarded([&] {
		auto *index = dynamic_cast<const faiss::IndexIVF *>(idx(ivf));
		if (index == nullptr)
			throw std::invalid_argument("cdx_fx_ivf_search_sel: not an IVF index");
		MemberSelector sel(member, ctx);
		faiss::SearchParametersIVF params;
		params.nprobe = nprobe;
		params.max_codes = 0;
		params.sel = member != nullptr ? &sel : nullptr;
		index->search_preassigned((faiss::Index::idx_t) n, x, (faiss::Index::idx_t) k, assign, cdis,
		    distances, labels, false, &params);
	});
}

extern "C" int
cdx_fx_search_sel(const FaissIndex *index, size_t n, const float *x, size_t k, float *distances,
    int64_t *labels, cdx_fx_member_fn member, const void *ctx)
{
	return guarded([&] {
		MemberSelector sel(member, ctx);
		faiss::SearchParameters params;
		params.sel = &sel;
		idx(index)->search(
		    (faiss::Index::idx_t) n, x, (faiss::Index::idx_t) k, distances, labels, &params);
	});
}
