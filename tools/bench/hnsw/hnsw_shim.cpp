/*
 * hnsw_shim.cpp — see hnsw_shim.h. Built with the machine's own vector
 * instructions (-march=native), as hnswlib picks its SIMD kernels at
 * compile time: the fastest hnswlib this CPU runs.
 */
#include "hnsw_shim.h"

#include <cstdio>
#include <exception>
#include <memory>

#include <hnswlib/hnswlib.h>

struct bench_hnsw {
	std::unique_ptr<hnswlib::SpaceInterface<float>> space;
	std::unique_ptr<hnswlib::HierarchicalNSW<float>> g;
};

extern "C" int
bench_hnsw_build(bench_hnsw **hp, const float *x, size_t n, uint32_t dim, int ip, size_t M,
    size_t ef_construction, char *msg, size_t msglen)
{
	*hp = nullptr;
	try {
		auto h = std::make_unique<bench_hnsw>();
		if (ip)
			h->space = std::make_unique<hnswlib::InnerProductSpace>(dim);
		else
			h->space = std::make_unique<hnswlib::L2Space>(dim);
		h->g = std::make_unique<hnswlib::HierarchicalNSW<float>>(
		    h->space.get(), n, M, ef_construction);
		for (size_t i = 0; i < n; i++)
			h->g->addPoint(x + i * dim, (hnswlib::labeltype) i);
		*hp = h.release();
		return 0;
	} catch (std::exception &e) {
		std::snprintf(msg, msglen, "hnswlib: %s", e.what());
		return -1;
	}
}

extern "C" void
bench_hnsw_free(bench_hnsw *h)
{
	delete h;
}

extern "C" void
bench_hnsw_set_ef(bench_hnsw *h, size_t ef)
{
	h->g->setEf(ef);
}

extern "C" void
bench_hnsw_search(const bench_hnsw *h, const float *q, size_t k, int64_t *labels)
{
	auto top = h->g->searchKnn(q, k);
	size_t n = top.size();
	for (size_t i = n; i < k; i++)
		labels[i] = -1;
	/* the queue pops the farthest first */
	for (size_t i = n; i > 0; i--) {
		labels[i - 1] = (int64_t) top.top().second;
		top.pop();
	}
}

extern "C" uint64_t
bench_hnsw_bytes(const bench_hnsw *h)
{
	const auto &g = *h->g;
	uint64_t bytes = (uint64_t) g.cur_element_count * g.size_data_per_element_;
	for (size_t i = 0; i < g.cur_element_count; i++)
		bytes += (uint64_t) g.element_levels_[i] * g.size_links_per_element_;
	bytes += (uint64_t) g.max_elements_ * (sizeof(void *) + sizeof(int));
	bytes += (uint64_t) g.label_lookup_.size() * 40;
	return bytes;
}
