/*
 * xxh64.c — XXH64 (Yann Collet's xxHash, 64-bit), the checksum family lz4
 * uses. Written from the public specification; verified against the
 * reference test vectors in tests/unit/common_test.c.
 */
#include <string.h>

#include "common/common.h"

#define P1 0x9E3779B185EBCA87ULL
#define P2 0xC2B2AE3D27D4EB4FULL
#define P3 0x165667B19E3779F9ULL
#define P4 0x85EBCA77C2B2AE63ULL
#define P5 0x27D4EB2F165667C5ULL

static inline uint64_t
rotl(uint64_t x, int r)
{
	return (x << r) | (x >> (64 - r));
}

static inline uint64_t
read64(const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, 8); /* little-endian hosts only, as is the shard format */
	return v;
}

static inline uint32_t
read32(const uint8_t *p)
{
	uint32_t v;
	memcpy(&v, p, 4);
	return v;
}

static inline uint64_t
round64(uint64_t acc, uint64_t input)
{
	acc += input * P2;
	acc = rotl(acc, 31);
	return acc * P1;
}

static inline uint64_t
merge_round(uint64_t acc, uint64_t val)
{
	acc ^= round64(0, val);
	return acc * P1 + P4;
}

static uint64_t
finalize(uint64_t h, const uint8_t *p, size_t len)
{
	while (len >= 8) {
		h ^= round64(0, read64(p));
		h = rotl(h, 27) * P1 + P4;
		p += 8;
		len -= 8;
	}
	if (len >= 4) {
		h ^= (uint64_t) read32(p) * P1;
		h = rotl(h, 23) * P2 + P3;
		p += 4;
		len -= 4;
	}
	while (len > 0) {
		h ^= (*p) * P5;
		h = rotl(h, 11) * P1;
		p++;
		len--;
	}
	h ^= h >> 33;
	h *= P2;
	h ^= h >> 29;
	h *= P3;
	h ^= h >> 32;
	return h;
}

void
cdx_xxh64_init(cdx_xxh64_state *st, uint64_t seed)
{
	memset(st, 0, sizeof(*st));
	st->seed = seed;
	st->v[0] = seed + P1 + P2;
	st->v[1] = seed + P2;
	st->v[2] = seed;
	st->v[3] = seed - P1;
}

static void
consume_stripes(uint64_t v[4], const uint8_t *p, size_t nstripes)
{
	for (size_t i = 0; i < nstripes; i++, p += 32) {
		v[0] = round64(v[0], read64(p));
		v[1] = round64(v[1], read64(p + 8));
		v[2] = round64(v[2], read64(p + 16));
		v[3] = round64(v[3], read64(p + 24));
	}
}

void
cdx_xxh64_update(cdx_xxh64_state *st, const void *data, size_t len)
{
	const uint8_t *p = data;
	st->total += len;
	if (st->buffered + len < 32) {
		memcpy(st->buf + st->buffered, p, len);
		st->buffered += (uint32_t) len;
		return;
	}
	if (st->buffered > 0) {
		size_t fill = 32 - st->buffered;
		memcpy(st->buf + st->buffered, p, fill);
		consume_stripes(st->v, st->buf, 1);
		p += fill;
		len -= fill;
		st->buffered = 0;
	}
	consume_stripes(st->v, p, len / 32);
	p += len / 32 * 32;
	len %= 32;
	memcpy(st->buf, p, len);
	st->buffered = (uint32_t) len;
}

uint64_t
cdx_xxh64_digest(const cdx_xxh64_state *st)
{
	uint64_t h;
	if (st->total >= 32) {
		h = rotl(st->v[0], 1) + rotl(st->v[1], 7) + rotl(st->v[2], 12) + rotl(st->v[3], 18);
		for (int i = 0; i < 4; i++)
			h = merge_round(h, st->v[i]);
	} else {
		h = st->seed + P5;
	}
	h += st->total;
	return finalize(h, st->buf, st->buffered);
}

uint64_t
cdx_xxh64(const void *data, size_t len, uint64_t seed)
{
	cdx_xxh64_state st;
	cdx_xxh64_init(&st, seed);
	cdx_xxh64_update(&st, data, len);
	return cdx_xxh64_digest(&st);
}
