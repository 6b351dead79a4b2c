/*
 * keys.c — keys files: one non-empty, unique key a line (see input.h).
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "input/input_int.h"

/* --- keys ---------------------------------------------------------------- */

/* Keys are deduplicated by a 96-bit hash (xxh64 with two seeds), so the
 * check needs 16 bytes a slot and no second pass over the file; a false
 * "duplicate" needs a 96-bit collision (~1e-14 at 50M keys). */
struct keyslot {
	uint64_t h1;
	uint32_t h2;
	uint32_t line; /* 1-based; 0 = empty */
};

int
cdx_keys_check(const char *path, uint64_t rows, uint64_t *bytes)
{
	struct cdx__lines l;
	int rc = cdx__lines_open(&l, path, "keys");
	if (rc != CDX_OK)
		return rc;
	struct stat st;
	if (fstat(l.fd, &st) == 0 && bytes != NULL)
		*bytes = (uint64_t) st.st_size;
	if (rows >= UINT32_MAX) {
		cdx__lines_close(&l);
		return cdx_error(CDX_EINVAL, "%s: more than 2^32 keys are not supported", path);
	}
	uint64_t cap = 16;
	while (cap < rows + rows / 2 + 1)
		cap *= 2;
	struct keyslot *t = calloc(cap, sizeof(*t));
	if (t == NULL) {
		cdx__lines_close(&l);
		return cdx_error(
		    CDX_ENOMEM, "%s: duplicate check for %llu keys", path, (unsigned long long) rows);
	}
	uint64_t n = 0;
	const char *s;
	size_t len;
	int r;
	while ((r = cdx__lines_next(&l, &s, &len)) == 1) {
		n++;
		if (len == 0) {
			rc = cdx_error(
			    CDX_EINVAL, "%s: line %llu: empty key", path, (unsigned long long) l.line);
			goto done;
		}
		if (len > CDX_INPUT_MAX_KEY_BYTES) {
			rc = cdx_error(CDX_EINVAL, "%s: line %llu: key of %zu bytes (at most %d)", path,
			    (unsigned long long) l.line, len, CDX_INPUT_MAX_KEY_BYTES);
			goto done;
		}
		if (memchr(s, 0, len) != NULL) {
			rc = cdx_error(CDX_EINVAL, "%s: line %llu: key contains a NUL byte", path,
			    (unsigned long long) l.line);
			goto done;
		}
		if (!cdx_utf8_valid(s, len)) {
			/* keys are returned in protobuf strings, which must be UTF-8 */
			rc = cdx_error(CDX_EINVAL, "%s: line %llu: key is not valid UTF-8", path,
			    (unsigned long long) l.line);
			goto done;
		}
		if (n > rows)
			continue; /* counted for the message below */
		uint64_t h1 = cdx_xxh64(s, len, 0);
		uint32_t h2 = (uint32_t) cdx_xxh64(s, len, 0x9e3779b97f4a7c15ULL);
		uint64_t i = h1 & (cap - 1);
		while (t[i].line != 0) {
			if (t[i].h1 == h1 && t[i].h2 == h2) {
				rc = cdx_error(CDX_EDUP,
				    "%s: duplicate key '%.*s' at line %llu (first at line %u)", path,
				    (int) cdx_utf8_cut(s, CDX_MIN(len, (size_t) 200)), s,
				    (unsigned long long) l.line, t[i].line);
				goto done;
			}
			i = (i + 1) & (cap - 1);
		}
		t[i].h1 = h1;
		t[i].h2 = h2;
		t[i].line = (uint32_t) l.line;
	}
	if (r < 0) {
		rc = -r;
		goto done;
	}
	if (n != rows)
		rc = cdx_error(CDX_EDIM, "%s: %llu keys, but the input has %llu rows", path,
		    (unsigned long long) n, (unsigned long long) rows);
done:
	free(t);
	cdx__lines_close(&l);
	return rc;
}

struct cdx_keys_reader {
	struct cdx__lines l;
};

int
cdx_keys_reader_open(cdx_keys_reader **rp, const char *path)
{
	*rp = NULL;
	cdx_keys_reader *r = calloc(1, sizeof(*r));
	if (r == NULL)
		return cdx_error(CDX_ENOMEM, "keys reader");
	int rc = cdx__lines_open(&r->l, path, "keys");
	if (rc != CDX_OK) {
		free(r);
		return rc;
	}
	*rp = r;
	return CDX_OK;
}

int
cdx_keys_reader_next(cdx_keys_reader *r, const char **key, size_t *len)
{
	int got = cdx__lines_next(&r->l, key, len);
	if (got < 0)
		return -got;
	if (got == 0)
		return cdx_error(
		    CDX_ECORRUPT, "%s: fewer keys than rows (the file changed during the build?)", r->l.path);
	return CDX_OK;
}

void
cdx_keys_reader_close(cdx_keys_reader *r)
{
	if (r == NULL)
		return;
	cdx__lines_close(&r->l);
	free(r);
}
