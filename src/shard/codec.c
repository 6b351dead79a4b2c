/*
 * codec.c — the IDS and KEYS part encodings.
 *
 * IDS: each id minus the previous (wrapping, as uint64), zigzag-mapped so
 * small negative steps stay small, as a LEB128 varint. Ids from a builder
 * are usually increasing, so most rows take one or two bytes.
 * KEYS: each key as a LEB128 length and its bytes.
 * Decoders treat their input as hostile: every length is checked against
 * the bytes left, varints longer than 64 bits are rejected, and the input
 * must hold exactly n items with nothing left over.
 */
#include <stdlib.h>
#include <string.h>

#include "common/idlist.h"
#include "shard/shard.h"

int
cdx_ids_encode(const int64_t *ids, size_t n, cdx_buf *out)
{
	int rc = cdx_buf_reserve(out, n * 2 + 10);
	if (rc != CDX_OK)
		return rc;
	uint64_t prev = 0;
	for (size_t i = 0; i < n; i++) {
		if (out->cap - out->len < 10 && (rc = cdx_buf_reserve(out, (n - i) * 2 + 10)) != CDX_OK)
			return rc;
		uint64_t d = (uint64_t) ids[i] - prev;
		uint64_t z = (d << 1) ^ (uint64_t) - (int64_t) (d >> 63);
		out->len += cdx_varint_put((uint8_t *) out->data + out->len, z);
		prev = (uint64_t) ids[i];
	}
	return CDX_OK;
}

int
cdx_ids_decode(const void *data, size_t len, int64_t *ids, size_t n)
{
	const uint8_t *p = data, *end = p + len;
	uint64_t prev = 0;
	for (size_t i = 0; i < n; i++) {
		uint64_t z;
		if (cdx_varint_get(&p, end, &z) != 0)
			return cdx_error(
			    CDX_ECORRUPT, "ids: malformed or truncated varint at row %zu of %zu", i, n);
		uint64_t d = (z >> 1) ^ (uint64_t) - (int64_t) (z & 1);
		prev += d;
		ids[i] = (int64_t) prev;
	}
	if (p != end)
		return cdx_error(
		    CDX_ECORRUPT, "ids: %zu trailing bytes after %zu rows", (size_t) (end - p), n);
	return CDX_OK;
}

int
cdx_keys_encode_one(const char *key, size_t keylen, cdx_buf *out)
{
	if (memchr(key, 0, keylen) != NULL)
		return cdx_error(CDX_EINVAL, "key contains a NUL byte");
	uint8_t tmp[10];
	size_t n = cdx_varint_put(tmp, keylen);
	int rc = cdx_buf_reserve(out, n + keylen);
	if (rc != CDX_OK)
		return rc;
	memcpy(out->data + out->len, tmp, n);
	memcpy(out->data + out->len + n, key, keylen);
	out->len += n + keylen;
	return CDX_OK;
}

int
cdx_keys_decode(const void *data, size_t len, size_t n, char **strings, uint64_t **offsets)
{
	*strings = NULL;
	*offsets = NULL;
	/* Every key takes at least one byte, which also bounds the allocations. */
	if (n > len)
		return cdx_error(CDX_ECORRUPT, "keys: %zu keys cannot fit in %zu bytes", n, len);
	const uint8_t *p = data, *end = p + len;
	/* The packed area (key bytes + one NUL each) is never larger than the
	 * input: each key's length prefix takes at least the NUL's byte. */
	char *str = malloc(len + 1);
	uint64_t *off = malloc((n + 1) * sizeof(uint64_t));
	if (str == NULL || off == NULL) {
		free(str);
		free(off);
		return cdx_error(CDX_ENOMEM, "keys: %zu keys", n);
	}
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		uint64_t kl;
		if (cdx_varint_get(&p, end, &kl) != 0 || kl > (uint64_t) (end - p)) {
			free(str);
			free(off);
			return cdx_error(CDX_ECORRUPT, "keys: malformed or truncated key %zu of %zu", i, n);
		}
		if (memchr(p, 0, (size_t) kl) != NULL) {
			free(str);
			free(off);
			return cdx_error(CDX_ECORRUPT, "keys: key %zu contains a NUL byte", i);
		}
		if (!cdx_utf8_valid((const char *) p, (size_t) kl)) {
			/* keys go out in protobuf strings, which must be UTF-8 */
			free(str);
			free(off);
			return cdx_error(CDX_ECORRUPT, "keys: key %zu is not valid UTF-8", i);
		}
		off[i] = o;
		memcpy(str + o, p, (size_t) kl);
		o += (size_t) kl;
		str[o++] = 0;
		p += kl;
	}
	off[n] = o;
	if (p != end) {
		free(str);
		free(off);
		return cdx_error(
		    CDX_ECORRUPT, "keys: %zu trailing bytes after %zu keys", (size_t) (end - p), n);
	}
	*strings = str;
	*offsets = off;
	return CDX_OK;
}
