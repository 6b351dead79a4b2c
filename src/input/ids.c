/*
 * ids.c — item ids: text (one int64 a line) or a 1-D .npy of int64/int32,
 * unique (see input.h).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/opt.h"
#include "input/input_int.h"

/* --- ids ----------------------------------------------------------------- */

/* An open-addressing set of row numbers keyed by a 64-bit hash; the caller
 * compares the candidates. Entries hold row+1 (0 = empty). */
struct rowset {
	uint64_t *slots;
	uint64_t mask;
};

static int
rowset_init(struct rowset *s, uint64_t rows)
{
	uint64_t cap = 16;
	while (cap < rows + rows / 2 + 1)
		cap *= 2;
	s->slots = calloc(cap, sizeof(uint64_t));
	s->mask = cap - 1;
	return s->slots ? CDX_OK
	                : cdx_error(CDX_ENOMEM, "duplicate check for %llu rows", (unsigned long long) rows);
}

static void
rowset_fini(struct rowset *s)
{
	free(s->slots);
	s->slots = NULL;
}

static int
ids_dup_check(const char *path, const int64_t *ids, uint64_t n, int npy)
{
	struct rowset s;
	int rc = rowset_init(&s, n);
	if (rc != CDX_OK)
		return rc;
	for (uint64_t i = 0; i < n && rc == CDX_OK; i++) {
		uint64_t h = cdx_mix64((uint64_t) ids[i]) & s.mask;
		for (;;) {
			uint64_t e = s.slots[h];
			if (e == 0) {
				s.slots[h] = i + 1;
				break;
			}
			if (ids[e - 1] == ids[i]) {
				if (npy)
					rc = cdx_error(CDX_EDUP,
					    "%s: duplicate id %lld at row %llu (first at row %llu)", path,
					    (long long) ids[i], (unsigned long long) i,
					    (unsigned long long) (e - 1));
				else
					rc = cdx_error(CDX_EDUP,
					    "%s: duplicate id %lld at line %llu (first at line %llu)", path,
					    (long long) ids[i], (unsigned long long) (i + 1),
					    (unsigned long long) e);
				break;
			}
			h = (h + 1) & s.mask;
		}
	}
	rowset_fini(&s);
	return rc;
}

/* count_mismatch is the error of an ids file with n ids for expect rows. */
static int
count_mismatch(const char *path, uint64_t n, uint64_t expect)
{
	return cdx_error(CDX_EDIM, "%s: %llu ids, but the input has %llu rows", path, (unsigned long long) n,
	    (unsigned long long) expect);
}

static int
ids_load_npy(const char *path, uint64_t expect, int64_t **idsp, uint64_t *np)
{
	char *data = NULL;
	size_t len = 0;
	int rc = cdx_read_file(path, &data, &len);
	if (rc != CDX_OK)
		return rc;
	struct cdx__npy h;
	if ((rc = cdx__npy_parse((const uint8_t *) data, len, path, &h)) != CDX_OK)
		goto done;
	size_t elem = strcmp(h.descr, "<i8") == 0 || strcmp(h.descr, "=i8") == 0 ? 8
	    : strcmp(h.descr, "<i4") == 0 || strcmp(h.descr, "=i4") == 0         ? 4
	                                                                         : 0;
	if (elem == 0) {
		rc = cdx_error(CDX_EINVAL,
		    "%s: ids .npy dtype '%s' is not supported (int64 '<i8' or int32 '<i4')", path, h.descr);
		goto done;
	}
	if (!(h.ndim == 1 || (h.ndim == 2 && h.shape[1] == 1))) {
		rc = cdx_error(
		    CDX_EINVAL, "%s: ids .npy must be 1-D (rows,), has %d dimensions", path, h.ndim);
		goto done;
	}
	uint64_t n = h.shape[0];
	if (n == 0) {
		rc = cdx_error(CDX_EEMPTY, "%s: no ids", path);
		goto done;
	}
	if (expect != 0 && n != expect) {
		rc = count_mismatch(path, n, expect);
		goto done;
	}
	if (n > (len - h.data_off) / elem || h.data_off + n * elem != len) {
		rc = cdx_error(CDX_ECORRUPT, "%s: %zu bytes, but the header announces %llu ids (%llu bytes)",
		    path, len, (unsigned long long) n, (unsigned long long) (h.data_off + n * elem));
		goto done;
	}
	int64_t *ids = malloc(n * sizeof(int64_t));
	if (ids == NULL) {
		rc = cdx_error(CDX_ENOMEM, "%s: %llu ids", path, (unsigned long long) n);
		goto done;
	}
	for (uint64_t i = 0; i < n; i++) {
		if (elem == 8) {
			memcpy(&ids[i], data + h.data_off + i * 8, 8);
		} else {
			int32_t v;
			memcpy(&v, data + h.data_off + i * 4, 4);
			ids[i] = v;
		}
	}
	*idsp = ids;
	*np = n;
done:
	free(data);
	return rc;
}

static int
ids_load_text(const char *path, uint64_t expect, int64_t **idsp, uint64_t *np)
{
	struct cdx__lines l;
	int rc = cdx__lines_open(&l, path, "ids");
	if (rc != CDX_OK)
		return rc;
	uint64_t n = 0, cap = expect ? expect : 1024;
	int64_t *ids = malloc(cap * sizeof(int64_t));
	const char *s;
	size_t len;
	int r;
	if (ids == NULL) {
		cdx__lines_close(&l);
		return cdx_error(CDX_ENOMEM, "%s: %llu ids", path, (unsigned long long) cap);
	}
	while ((r = cdx__lines_next(&l, &s, &len)) == 1) {
		char tmp[32];
		while (len > 0 && (*s == ' ' || *s == '\t')) {
			s++;
			len--;
		}
		while (len > 0 && (s[len - 1] == ' ' || s[len - 1] == '\t'))
			len--;
		if (len == 0 || len >= sizeof(tmp)) {
			rc = cdx_error(CDX_EINVAL, "%s: line %llu: %s", path, (unsigned long long) l.line,
			    len == 0 ? "empty line, expected an integer id" : "not an int64 id");
			goto done;
		}
		memcpy(tmp, s, len);
		tmp[len] = 0;
		int64_t v;
		if (cdx_parse_i64(tmp, INT64_MIN, INT64_MAX, &v) != CDX_OK) {
			rc = cdx_error(CDX_EINVAL, "%s: line %llu: '%s' is not an int64 id", path,
			    (unsigned long long) l.line, tmp);
			goto done;
		}
		if (expect != 0 && n == expect) {
			n++; /* counted for the message below */
			continue;
		}
		if (n == cap) {
			int64_t *grown = realloc(ids, (cap *= 2) * sizeof(int64_t));
			if (grown == NULL) {
				rc = cdx_error(CDX_ENOMEM, "%s: %llu ids", path, (unsigned long long) cap);
				goto done;
			}
			ids = grown;
		}
		ids[n++] = v;
	}
	if (r < 0) {
		rc = -r;
		goto done;
	}
	if (n == 0)
		rc = cdx_error(CDX_EEMPTY, "%s: no ids", path);
	else if (expect != 0 && n != expect)
		rc = count_mismatch(path, n, expect);
done:
	cdx__lines_close(&l);
	if (rc != CDX_OK) {
		free(ids);
		return rc;
	}
	*idsp = ids;
	*np = n;
	return CDX_OK;
}

int
cdx_ids_load(const char *path, uint64_t expect, int64_t **idsp, uint64_t *np)
{
	*idsp = NULL;
	*np = 0;
	int64_t *ids = NULL;
	uint64_t n = 0;
	int npy = cdx__has_suffix(path, ".npy");
	int rc = npy ? ids_load_npy(path, expect, &ids, &n) : ids_load_text(path, expect, &ids, &n);
	if (rc == CDX_OK)
		rc = ids_dup_check(path, ids, n, npy);
	if (rc != CDX_OK) {
		free(ids);
		return rc;
	}
	*idsp = ids;
	*np = n;
	return CDX_OK;
}
