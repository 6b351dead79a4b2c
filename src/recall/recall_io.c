/*
 * recall_io.c — the files `candex recall` reads: query/base vectors (.fvecs,
 * .npy float32/float16), ground truth (.ivecs) and external ids (.npy int64
 * or text), plus the external id -> base row map.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "recall/recall.h"

static int
ends_with(const char *s, const char *suffix)
{
	size_t a = strlen(s), b = strlen(suffix);
	return a >= b && strcasecmp(s + a - b, suffix) == 0;
}

/* read_whole reads path into a malloc'd buffer. */
static int
read_whole(const char *path, uint8_t **data, size_t *len)
{
	*data = NULL;
	*len = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return cdx_error_errno(CDX_EIO, "%s: cannot open", path);
	struct stat st;
	if (fstat(fd, &st) != 0) {
		close(fd);
		return cdx_error_errno(CDX_EIO, "%s: stat", path);
	}
	size_t n = (size_t) st.st_size;
	uint8_t *buf = malloc(n ? n : 1);
	if (buf == NULL) {
		close(fd);
		return cdx_error(CDX_ENOMEM, "%s: %zu bytes", path, n);
	}
	int rc = cdx_read_all(fd, buf, n, 0, path);
	close(fd);
	if (rc != 0) {
		free(buf);
		return rc;
	}
	*data = buf;
	*len = n;
	return CDX_OK;
}

/* Row-prefixed TEXMEX format (fvecs, ivecs): per row an int32 d then d
 * 4-byte values. Compacts the payload in place to n x d and returns it. */
static int
texmex_parse(const char *path, uint8_t *buf, size_t len, size_t max_rows, size_t *n_out, uint32_t *dim_out)
{
	if (len == 0)
		return cdx_error(CDX_EEMPTY, "%s: empty file", path);
	if (len < 4)
		return cdx_error(CDX_ECORRUPT, "%s: truncated (%zu bytes)", path, len);
	int32_t d;
	memcpy(&d, buf, 4);
	if (d <= 0 || d > 1 << 20)
		return cdx_error(CDX_ECORRUPT, "%s: row 0: bad dimension %d", path, d);
	size_t rowbytes = 4 + 4 * (size_t) d;
	if (len % rowbytes != 0)
		return cdx_error(CDX_ECORRUPT,
		    "%s: truncated: %zu bytes is not a whole number of %zu-byte rows", path, len, rowbytes);
	size_t n = len / rowbytes;
	if (max_rows > 0 && n > max_rows)
		n = max_rows;
	for (size_t i = 0; i < n; i++) {
		int32_t di;
		memcpy(&di, buf + i * rowbytes, 4);
		if (di != d)
			return cdx_error(
			    CDX_EDIM, "%s: row %zu has dimension %d, row 0 has %d", path, i, di, d);
		memmove(buf + i * 4 * (size_t) d, buf + i * rowbytes + 4, 4 * (size_t) d);
	}
	*n_out = n;
	*dim_out = (uint32_t) d;
	return CDX_OK;
}

/* npy header: magic, version, header length, then a Python dict literal. */
static int
npy_parse(const char *path, const uint8_t *buf, size_t len, char descr[8], size_t shape[2], int *ndim,
    size_t *data_off)
{
	if (len < 10 || memcmp(buf, "\x93NUMPY", 6) != 0)
		return cdx_error(CDX_ECORRUPT, "%s: not an .npy file", path);
	size_t hlen, off;
	if (buf[6] == 1) {
		hlen = (size_t) buf[8] | (size_t) buf[9] << 8;
		off = 10;
	} else if (buf[6] == 2 || buf[6] == 3) {
		if (len < 12)
			return cdx_error(CDX_ECORRUPT, "%s: truncated .npy header", path);
		hlen = (size_t) buf[8] | (size_t) buf[9] << 8 | (size_t) buf[10] << 16
		    | (size_t) buf[11] << 24;
		off = 12;
	} else
		return cdx_error(CDX_EVERSION, "%s: .npy format version %u", path, buf[6]);
	if (off + hlen > len)
		return cdx_error(CDX_ECORRUPT, "%s: truncated .npy header", path);
	char *h = strndup((const char *) buf + off, hlen);
	if (h == NULL)
		return cdx_error(CDX_ENOMEM, "%s: header", path);
	int rc = CDX_OK;
	const char *p = strstr(h, "'descr'");
	const char *q;
	if (p == NULL || (p = strchr(p + 7, '\'')) == NULL || (q = strchr(p + 1, '\'')) == NULL
	    || q - p - 1 >= 8) {
		rc = cdx_error(CDX_ECORRUPT, "%s: .npy header has no descr", path);
		goto out;
	}
	memcpy(descr, p + 1, (size_t) (q - p - 1));
	descr[q - p - 1] = '\0';
	p = strstr(h, "'fortran_order'");
	if (p != NULL && (p = strchr(p + 15, ':')) != NULL) {
		p += 1 + strspn(p + 1, " ");
		if (strncmp(p, "False", 5) != 0) {
			rc = cdx_error(CDX_EINVAL, "%s: only C-order .npy arrays are supported", path);
			goto out;
		}
	}
	p = strstr(h, "'shape'");
	if (p == NULL || (p = strchr(p, '(')) == NULL) {
		rc = cdx_error(CDX_ECORRUPT, "%s: .npy header has no shape", path);
		goto out;
	}
	p++;
	*ndim = 0;
	while (*ndim < 2) {
		while (*p == ' ')
			p++;
		if (*p == ')')
			break;
		char *end;
		unsigned long long v = strtoull(p, &end, 10);
		if (end == p) {
			rc = cdx_error(CDX_ECORRUPT, "%s: bad .npy shape", path);
			goto out;
		}
		shape[(*ndim)++] = (size_t) v;
		p = end;
		while (*p == ' ' || *p == ',')
			p++;
	}
	if (*p != ')') {
		rc = cdx_error(
		    CDX_EINVAL, "%s: .npy arrays of more than 2 dimensions are not supported", path);
		goto out;
	}
	*data_off = off + hlen;
out:
	free(h);
	return rc;
}

int
cdx_vecs_read(struct cdx_vecs *v, const char *path, size_t max_rows)
{
	memset(v, 0, sizeof(*v));
	uint8_t *buf;
	size_t len;
	int rc = read_whole(path, &buf, &len);
	if (rc != 0)
		return rc;
	size_t n;
	uint32_t dim;
	if (ends_with(path, ".npy")) {
		char descr[8];
		size_t shape[2] = { 0, 0 }, off;
		int ndim;
		if ((rc = npy_parse(path, buf, len, descr, shape, &ndim, &off)) != 0)
			goto fail;
		if (ndim != 2) {
			rc = cdx_error(
			    CDX_EINVAL, "%s: expected a 2-d array (rows x dim), got %d-d", path, ndim);
			goto fail;
		}
		size_t esz;
		if (strcmp(descr, "<f4") == 0)
			esz = 4;
		else if (strcmp(descr, "<f2") == 0)
			esz = 2;
		else {
			rc = cdx_error(
			    CDX_EINVAL, "%s: dtype %s not supported (float32 or float16)", path, descr);
			goto fail;
		}
		n = shape[0];
		dim = (uint32_t) shape[1];
		if (n == 0 || dim == 0) {
			rc = cdx_error(CDX_EEMPTY, "%s: empty array", path);
			goto fail;
		}
		if (len - off < n * dim * esz) {
			rc = cdx_error(CDX_ECORRUPT, "%s: truncated: %zu data bytes, shape needs %zu", path,
			    len - off, n * dim * esz);
			goto fail;
		}
		if (max_rows > 0 && n > max_rows)
			n = max_rows;
		float *x = malloc(n * dim * sizeof(float));
		if (x == NULL) {
			rc = cdx_error(CDX_ENOMEM, "%s", path);
			goto fail;
		}
		if (esz == 4)
			memcpy(x, buf + off, n * dim * 4);
		else
			for (size_t i = 0; i < n * dim; i++) {
				uint16_t h;
				memcpy(&h, buf + off + 2 * i, 2);
				x[i] = cdx_f16_to_f32(h);
			}
		free(buf);
		buf = (uint8_t *) x;
	} else if (ends_with(path, ".fvecs")) {
		if ((rc = texmex_parse(path, buf, len, max_rows, &n, &dim)) != 0)
			goto fail;
		float *x = realloc(buf, n * dim * sizeof(float));
		if (x != NULL)
			buf = (uint8_t *) x;
	} else {
		rc = cdx_error(CDX_EINVAL, "%s: unknown vector file type (expected .fvecs or .npy)", path);
		goto fail;
	}
	long bad = cdx_find_nonfinite((const float *) buf, n * dim);
	if (bad >= 0) {
		rc = cdx_error(CDX_ENONFINITE, "%s: row %zu: non-finite value", path, (size_t) bad / dim);
		goto fail;
	}
	v->x = (float *) buf;
	v->n = n;
	v->dim = dim;
	return CDX_OK;
fail:
	free(buf);
	return rc;
}

void
cdx_vecs_fini(struct cdx_vecs *v)
{
	if (v == NULL)
		return;
	free(v->x);
	memset(v, 0, sizeof(*v));
}

int
cdx_ivecs_read(const char *path, int32_t **rows, size_t *n, uint32_t *k)
{
	*rows = NULL;
	uint8_t *buf;
	size_t len;
	int rc = read_whole(path, &buf, &len);
	if (rc != 0)
		return rc;
	if (!ends_with(path, ".ivecs")) {
		free(buf);
		return cdx_error(CDX_EINVAL, "%s: ground truth must be an .ivecs file", path);
	}
	if ((rc = texmex_parse(path, buf, len, 0, n, k)) != 0) {
		free(buf);
		return rc;
	}
	*rows = (int32_t *) buf;
	return CDX_OK;
}

/* --- id map ------------------------------------------------------------- */

struct idrow {
	int64_t id, row;
};

static int
idrow_cmp(const void *a, const void *b)
{
	const struct idrow *x = a, *y = b;
	return x->id < y->id ? -1 : x->id > y->id;
}

int
cdx_idmap_init_ids(struct cdx_idmap *m, const int64_t *ids, size_t n)
{
	memset(m, 0, sizeof(*m));
	struct idrow *p = malloc((n ? n : 1) * sizeof(*p));
	m->sorted_ids = malloc((n ? n : 1) * sizeof(int64_t));
	m->rows = malloc((n ? n : 1) * sizeof(int64_t));
	if (p == NULL || m->sorted_ids == NULL || m->rows == NULL) {
		free(p);
		cdx_idmap_fini(m);
		return cdx_error(CDX_ENOMEM, "id map of %zu ids", n);
	}
	for (size_t i = 0; i < n; i++) {
		p[i].id = ids[i];
		p[i].row = (int64_t) i;
	}
	qsort(p, n, sizeof(*p), idrow_cmp);
	for (size_t i = 0; i < n; i++) {
		if (i > 0 && p[i].id == p[i - 1].id) {
			int64_t a = p[i - 1].row, b = p[i].row;
			int64_t id = p[i].id;
			free(p);
			cdx_idmap_fini(m);
			return cdx_error(CDX_EDUP, "id %" PRId64 " appears at rows %" PRId64 " and %" PRId64,
			    id, a < b ? a : b, a < b ? b : a);
		}
		m->sorted_ids[i] = p[i].id;
		m->rows[i] = p[i].row;
	}
	free(p);
	m->n = n;
	return CDX_OK;
}

int
cdx_idmap_read_ids(struct cdx_idmap *m, const char *path)
{
	memset(m, 0, sizeof(*m));
	uint8_t *buf;
	size_t len;
	int rc = read_whole(path, &buf, &len);
	if (rc != 0)
		return rc;
	int64_t *ids = NULL;
	size_t n = 0;
	if (ends_with(path, ".npy")) {
		char descr[8];
		size_t shape[2] = { 0, 0 }, off;
		int ndim;
		if ((rc = npy_parse(path, buf, len, descr, shape, &ndim, &off)) != 0)
			goto out;
		size_t esz = strcmp(descr, "<i8") == 0 ? 8 : strcmp(descr, "<i4") == 0 ? 4 : 0;
		if (esz == 0 || !(ndim == 1 || (ndim == 2 && shape[1] == 1))) {
			rc = cdx_error(CDX_EINVAL,
			    "%s: ids must be a 1-d int64 or int32 array (got %s, %d-d)", path, descr, ndim);
			goto out;
		}
		n = shape[0];
		if (len - off < n * esz) {
			rc = cdx_error(CDX_ECORRUPT, "%s: truncated", path);
			goto out;
		}
		ids = malloc((n ? n : 1) * 8);
		if (ids == NULL) {
			rc = cdx_error(CDX_ENOMEM, "%s", path);
			goto out;
		}
		for (size_t i = 0; i < n; i++) {
			if (esz == 8) {
				memcpy(&ids[i], buf + off + 8 * i, 8);
			} else {
				int32_t v;
				memcpy(&v, buf + off + 4 * i, 4);
				ids[i] = v;
			}
		}
	} else {
		size_t cap = 1024;
		ids = malloc(cap * 8);
		char *s = (char *) buf, *end = s + len;
		size_t line = 0;
		while (s < end && ids != NULL) {
			char *nl = memchr(s, '\n', (size_t) (end - s));
			char *e = nl ? nl : end;
			line++;
			if (e > s && e[-1] == '\r')
				e--;
			if (e == s) { /* blank line */
				s = nl ? nl + 1 : end;
				continue;
			}
			char tmp[32];
			size_t l = (size_t) (e - s);
			char *stop;
			if (l >= sizeof(tmp)) {
				rc = cdx_error(CDX_EINVAL, "%s: line %zu: not an integer id", path, line);
				goto out;
			}
			memcpy(tmp, s, l);
			tmp[l] = '\0';
			errno = 0;
			long long v = strtoll(tmp, &stop, 10);
			if (*stop != '\0' || errno != 0) {
				rc = cdx_error(
				    CDX_EINVAL, "%s: line %zu: not an integer id: '%s'", path, line, tmp);
				goto out;
			}
			if (n == cap) {
				int64_t *g = realloc(ids, (cap *= 2) * 8);
				if (g == NULL) {
					free(ids);
					ids = NULL;
					break;
				}
				ids = g;
			}
			ids[n++] = (int64_t) v;
			s = nl ? nl + 1 : end;
		}
		if (ids == NULL) {
			rc = cdx_error(CDX_ENOMEM, "%s", path);
			goto out;
		}
	}
	if (n == 0) {
		rc = cdx_error(CDX_EEMPTY, "%s: no ids", path);
		goto out;
	}
	rc = cdx_idmap_init_ids(m, ids, n);
	if (rc != 0)
		rc = cdx_error(rc, "%s: %s", path, cdx_last_error());
out:
	free(ids);
	free(buf);
	return rc;
}

void
cdx_idmap_identity(struct cdx_idmap *m, size_t n)
{
	memset(m, 0, sizeof(*m));
	m->n = n;
}

int64_t
cdx_idmap_row(const struct cdx_idmap *m, int64_t id)
{
	if (m == NULL || m->sorted_ids == NULL) {
		if (m != NULL && (id < 0 || (uint64_t) id >= m->n))
			return -1;
		return id;
	}
	size_t lo = 0, hi = m->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (m->sorted_ids[mid] < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < m->n && m->sorted_ids[lo] == id ? m->rows[lo] : -1;
}

void
cdx_idmap_fini(struct cdx_idmap *m)
{
	if (m == NULL)
		return;
	free(m->sorted_ids);
	free(m->rows);
	memset(m, 0, sizeof(*m));
}
