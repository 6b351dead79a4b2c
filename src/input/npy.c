/*
 * npy.c — the .npy header: magic, version, header length, then a Python
 * dict literal with 'descr', 'fortran_order' and 'shape'.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "input/input_int.h"

/* npy_value finds 'key': in the header dict and returns what follows. */
static const char *
npy_value(const char *hdr, const char *key)
{
	char pat[32];
	for (int q = 0; q < 2; q++) {
		snprintf(pat, sizeof(pat), q ? "\"%s\"" : "'%s'", key);
		const char *p = strstr(hdr, pat);
		if (p == NULL)
			continue;
		p += strlen(pat);
		while (*p == ' ')
			p++;
		if (*p != ':')
			continue;
		p++;
		while (*p == ' ')
			p++;
		return p;
	}
	return NULL;
}

int
cdx__npy_parse(const uint8_t *map, size_t len, const char *path, struct cdx__npy *h)
{
	memset(h, 0, sizeof(*h));
	if (len < 10 || memcmp(map, "\x93NUMPY", 6) != 0)
		return cdx_error(CDX_ECORRUPT, "%s: not a .npy file (bad magic)", path);
	uint8_t major = map[6];
	uint64_t hlen, off;
	if (major == 1) {
		hlen = (uint64_t) map[8] | (uint64_t) map[9] << 8;
		off = 10;
	} else if (major == 2 || major == 3) {
		if (len < 12)
			return cdx_error(CDX_ECORRUPT, "%s: truncated .npy header", path);
		hlen = (uint64_t) map[8] | (uint64_t) map[9] << 8 | (uint64_t) map[10] << 16
		    | (uint64_t) map[11] << 24;
		off = 12;
	} else {
		return cdx_error(CDX_EVERSION, "%s: .npy format version %u is not supported", path, major);
	}
	if (off + hlen > len || hlen > 65536)
		return cdx_error(CDX_ECORRUPT, "%s: truncated .npy header (%llu header bytes, file has %zu)",
		    path, (unsigned long long) hlen, len);
	char *hdr = malloc(hlen + 1);
	if (hdr == NULL)
		return cdx_error(CDX_ENOMEM, "%s: npy header", path);
	memcpy(hdr, map + off, hlen);
	hdr[hlen] = 0;
	int rc = CDX_OK;
	const char *v = npy_value(hdr, "descr");
	if (v == NULL || (*v != '\'' && *v != '"')) {
		rc = cdx_error(CDX_ECORRUPT, "%s: .npy header has no 'descr'", path);
		goto done;
	}
	const char *e = strchr(v + 1, *v);
	if (e == NULL || (size_t) (e - v - 1) >= sizeof(h->descr)) {
		rc = cdx_error(CDX_ECORRUPT, "%s: bad 'descr' in .npy header", path);
		goto done;
	}
	memcpy(h->descr, v + 1, (size_t) (e - v - 1));
	v = npy_value(hdr, "fortran_order");
	if (v == NULL) {
		rc = cdx_error(CDX_ECORRUPT, "%s: .npy header has no 'fortran_order'", path);
		goto done;
	}
	h->fortran = strncmp(v, "True", 4) == 0;
	v = npy_value(hdr, "shape");
	if (v == NULL || *v != '(') {
		rc = cdx_error(CDX_ECORRUPT, "%s: .npy header has no 'shape'", path);
		goto done;
	}
	v++;
	for (;;) {
		while (*v == ' ' || *v == ',')
			v++;
		if (*v == ')')
			break;
		char *end;
		errno = 0;
		unsigned long long x = strtoull(v, &end, 10);
		if (end == v || errno != 0 || *v == '-') {
			rc = cdx_error(CDX_ECORRUPT, "%s: bad 'shape' in .npy header", path);
			goto done;
		}
		if (h->ndim < 3)
			h->shape[h->ndim] = x;
		h->ndim++;
		v = end;
	}
	h->data_off = off + hlen;
done:
	free(hdr);
	return rc;
}
