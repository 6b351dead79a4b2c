/*
 * hash.c — XXH64, the checksum family lz4 uses, from Debian's xxhash
 * (libxxhash-dev). XXH_INLINE_ALL compiles the library's own code into this
 * file: nothing to link at run time, and no dependence on the size of
 * XXH64_state_t in whatever libxxhash.so is installed. BENCHMARKS.md
 * (Hashing) compares it with the hand-written copy it replaced.
 */
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "common/common.h"

_Static_assert(sizeof(XXH64_state_t) <= sizeof(cdx_xxh64_state), "cdx_xxh64_state is too small");
_Static_assert(_Alignof(XXH64_state_t) <= _Alignof(cdx_xxh64_state), "cdx_xxh64_state is misaligned");

uint64_t
cdx_xxh64(const void *data, size_t len, uint64_t seed)
{
	return XXH64(data, len, seed);
}

void
cdx_xxh64_init(cdx_xxh64_state *st, uint64_t seed)
{
	XXH64_reset((XXH64_state_t *) (void *) st, seed);
}

void
cdx_xxh64_update(cdx_xxh64_state *st, const void *data, size_t len)
{
	XXH64_update((XXH64_state_t *) (void *) st, data, len);
}

uint64_t
cdx_xxh64_digest(const cdx_xxh64_state *st)
{
	return XXH64_digest((const XXH64_state_t *) (const void *) st);
}
