/*
 * idlist.c — LEB128 varints and the compact id list (idlist.h).
 */
#include <stdlib.h>
#include <string.h>

#include "common/idlist.h"

size_t
cdx_varint_put(uint8_t *p, uint64_t v)
{
	size_t n = 0;
	while (v >= 0x80) {
		p[n++] = (uint8_t) (v | 0x80);
		v >>= 7;
	}
	p[n++] = (uint8_t) v;
	return n;
}

int
cdx_idlist_encode(const int64_t *ids, size_t n, cdx_buf *out)
{
	if (n == 0)
		return CDX_OK;
	int64_t *sorted = malloc(n * sizeof(int64_t));
	if (sorted == NULL)
		return cdx_error(CDX_ENOMEM, "sorting %zu ids", n);
	memcpy(sorted, ids, n * sizeof(int64_t));
	qsort(sorted, n, sizeof(int64_t), cdx_cmp_i64);
	int rc = cdx_buf_reserve(out, n * 10);
	if (rc == CDX_OK) {
		uint8_t *p = (uint8_t *) out->data + out->len;
		uint64_t first = (uint64_t) sorted[0];
		p += cdx_varint_put(p, (first << 1) ^ (uint64_t) (sorted[0] >> 63));
		for (size_t i = 1; i < n; i++)
			p += cdx_varint_put(p, (uint64_t) sorted[i] - (uint64_t) sorted[i - 1]);
		out->len = (size_t) (p - (uint8_t *) out->data);
	}
	free(sorted);
	return rc;
}

int
cdx_varint_get(const uint8_t **pp, const uint8_t *end, uint64_t *out)
{
	const uint8_t *p = *pp;
	uint64_t v = 0;
	for (int shift = 0; shift < 64; shift += 7) {
		if (p >= end)
			return -1;
		uint8_t b = *p++;
		if (shift == 63 && b > 1)
			return -1;
		v |= (uint64_t) (b & 0x7f) << shift;
		if ((b & 0x80) == 0) {
			*pp = p;
			*out = v;
			return 0;
		}
	}
	return -1;
}

int
cdx_idlist_decode(const void *data, size_t len, size_t max, int64_t **idsp, size_t *np)
{
	*idsp = NULL;
	*np = 0;
	if (len == 0)
		return CDX_OK;
	const uint8_t *p = data, *end = p + len;
	/* every id takes at least one byte: counting terminal bytes bounds n */
	size_t n = 0;
	for (size_t i = 0; i < len; i++)
		n += (p[i] & 0x80) == 0;
	if (n > max)
		return cdx_error(CDX_ELIMIT, "packed id list holds %zu ids, more than the limit %zu", n, max);
	int64_t *ids = malloc(n * sizeof(int64_t));
	if (ids == NULL)
		return cdx_error(CDX_ENOMEM, "%zu packed ids", n);
	uint64_t v;
	size_t got = 0;
	if (cdx_varint_get(&p, end, &v) != 0)
		goto bad;
	int64_t prev = (int64_t) ((v >> 1) ^ (uint64_t) - (int64_t) (v & 1));
	ids[got++] = prev;
	while (p < end) {
		if (cdx_varint_get(&p, end, &v) != 0 || v > (uint64_t) INT64_MAX)
			goto bad;
		int64_t next;
		if (__builtin_add_overflow(prev, (int64_t) v, &next))
			goto bad;
		ids[got++] = prev = next;
	}
	*idsp = ids;
	*np = got;
	return CDX_OK;
bad:
	free(ids);
	return cdx_error(
	    CDX_EPROTO, "packed id list: malformed varint or an id past the int64 range after %zu ids", got);
}
