/*
 * faiss_memory.h — the memory a loaded Faiss index holds (faiss_memory.cpp).
 */
#ifndef CANDEX_FAISS_MEMORY_H
#define CANDEX_FAISS_MEMORY_H

#include <stdint.h>

#include <faiss/c_api/Index_c.h>

#ifdef __cplusplus
extern "C" {
#endif

/* cdx__faiss_index_bytes returns the bytes index holds in memory: codes,
 * ids, quantizers, codebooks, precomputed tables and direct maps. */
uint64_t cdx__faiss_index_bytes(const FaissIndex *index);

#ifdef __cplusplus
}
#endif
#endif
