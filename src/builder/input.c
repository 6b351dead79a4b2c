/*
 * input.c — the builder's readers: embeddings (.fvecs, .npy float32/float16,
 * raw float32), ids files and keys files.
 *
 * Embeddings are mapped read-only and read in row ranges; the caller drops
 * pages it has finished with (cdx_input_release), so a scan of a file far
 * larger than memory keeps a bounded RSS. Every check that can be done
 * from the file size is done at open (truncation, empty input, a
 * dimension change in an fvecs that makes the size inconsistent); the
 * per-row checks (fvecs dimension field, NaN/Inf) happen as rows are read.
 * Errors name the file and the 0-based row (text files: 1-based line).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "builder/build.h"

struct cdx_input {
	char *path;
	int fd;
	int format;
	uint8_t *map;
	size_t map_len;
	uint64_t data_off;  /* file offset of row 0 (fvecs: of its dim field) */
	uint64_t row_bytes; /* stride between rows in the file */
	uint64_t rows;
	uint32_t dim;
	uint64_t released; /* bytes before this offset are already dropped */
	size_t page;
};

const char *
cdx_input_format_name(int format)
{
	switch (format) {
	case CDX_INPUT_FVECS:
		return "fvecs";
	case CDX_INPUT_NPY_F32:
		return "npy-f32";
	case CDX_INPUT_NPY_F16:
		return "npy-f16";
	case CDX_INPUT_RAW_F32:
		return "raw-f32";
	default:
		return "unknown";
	}
}

static int
has_suffix(const char *s, const char *suffix)
{
	size_t n = strlen(s), m = strlen(suffix);
	return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* --- .npy header ------------------------------------------------------- */

struct npy_header {
	char descr[16];
	int fortran;
	int ndim;
	uint64_t shape[2];
	uint64_t data_off;
};

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

/* npy_parse reads the header of a .npy file (format 1.0, 2.0 or 3.0). */
static int
npy_parse(const uint8_t *map, size_t len, const char *path, struct npy_header *h)
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
		if (end == v || errno != 0) {
			rc = cdx_error(CDX_ECORRUPT, "%s: bad 'shape' in .npy header", path);
			goto done;
		}
		if (h->ndim >= 2) {
			h->ndim = 3;
			break;
		}
		h->shape[h->ndim++] = x;
		v = end;
	}
	h->data_off = off + hlen;
done:
	free(hdr);
	return rc;
}

/* --- embeddings -------------------------------------------------------- */

/* fvecs_check_dims scans the dim fields of an fvecs whose size does not
 * divide into rows, to tell a changed dimension from a truncated file. */
static int
fvecs_check_dims(const cdx_input *in, uint64_t size)
{
	uint64_t off = 0, row = 0;
	while (off + 4 <= size) {
		int32_t d;
		memcpy(&d, in->map + off, 4);
		if (d != (int32_t) in->dim)
			return cdx_error(CDX_EDIM,
			    "%s: row %llu has dimension %d, expected %u (the dimension of row 0)", in->path,
			    (unsigned long long) row, d, in->dim);
		off += in->row_bytes;
		row++;
	}
	return cdx_error(CDX_ECORRUPT,
	    "%s: truncated: the file ends inside row %llu (%llu bytes is not a whole number of %llu-byte "
	    "rows)",
	    in->path, (unsigned long long) (size / in->row_bytes), (unsigned long long) size,
	    (unsigned long long) in->row_bytes);
}

static int
input_layout(cdx_input *in, uint64_t size, uint32_t dim_opt)
{
	if (has_suffix(in->path, ".fvecs")) {
		in->format = CDX_INPUT_FVECS;
		if (size == 0)
			return cdx_error(CDX_EEMPTY, "%s: empty input (0 rows)", in->path);
		if (size < 4)
			return cdx_error(CDX_ECORRUPT, "%s: truncated: the file ends inside row 0", in->path);
		int32_t d;
		memcpy(&d, in->map, 4);
		if (d <= 0 || d > 65536)
			return cdx_error(
			    CDX_ECORRUPT, "%s: row 0 has dimension %d: not an fvecs file?", in->path, d);
		in->dim = (uint32_t) d;
		in->row_bytes = 4 + 4 * (uint64_t) d;
		in->data_off = 0;
		if (dim_opt != 0 && dim_opt != in->dim)
			return cdx_error(
			    CDX_EDIM, "%s: dimension %u, but --dim says %u", in->path, in->dim, dim_opt);
		if (size % in->row_bytes != 0)
			return fvecs_check_dims(in, size);
		in->rows = size / in->row_bytes;
		return CDX_OK;
	}
	if (has_suffix(in->path, ".npy")) {
		struct npy_header h;
		int rc = npy_parse(in->map, size, in->path, &h);
		if (rc != CDX_OK)
			return rc;
		size_t elem;
		if (strcmp(h.descr, "<f4") == 0 || strcmp(h.descr, "=f4") == 0) {
			in->format = CDX_INPUT_NPY_F32;
			elem = 4;
		} else if (strcmp(h.descr, "<f2") == 0 || strcmp(h.descr, "=f2") == 0) {
			in->format = CDX_INPUT_NPY_F16;
			elem = 2;
		} else {
			return cdx_error(CDX_EINVAL,
			    "%s: .npy dtype '%s' is not supported (float32 '<f4' or float16 '<f2')", in->path,
			    h.descr);
		}
		if (h.fortran)
			return cdx_error(CDX_EINVAL,
			    "%s: Fortran-order .npy is not supported (save with C order)", in->path);
		if (h.ndim != 2)
			return cdx_error(CDX_EINVAL, "%s: .npy must be 2-D (rows x dim), has %d dimensions",
			    in->path, h.ndim);
		if (h.shape[1] == 0 || h.shape[1] > 65536)
			return cdx_error(CDX_EINVAL, "%s: .npy dimension %llu is out of range", in->path,
			    (unsigned long long) h.shape[1]);
		in->dim = (uint32_t) h.shape[1];
		in->rows = h.shape[0];
		in->row_bytes = elem * in->dim;
		in->data_off = h.data_off;
		if (dim_opt != 0 && dim_opt != in->dim)
			return cdx_error(
			    CDX_EDIM, "%s: dimension %u, but --dim says %u", in->path, in->dim, dim_opt);
		if (in->rows == 0)
			return cdx_error(CDX_EEMPTY, "%s: empty input (0 rows)", in->path);
		uint64_t want = h.data_off + in->rows * in->row_bytes;
		if (size < want)
			return cdx_error(CDX_ECORRUPT,
			    "%s: truncated: the header says %llu rows (%llu bytes) but the file ends inside "
			    "row %llu",
			    in->path, (unsigned long long) in->rows, (unsigned long long) want,
			    (unsigned long long) ((size - h.data_off) / in->row_bytes));
		if (size > want)
			return cdx_error(CDX_ECORRUPT,
			    "%s: %llu bytes after the %llu rows the header announces", in->path,
			    (unsigned long long) (size - want), (unsigned long long) in->rows);
		return CDX_OK;
	}
	in->format = CDX_INPUT_RAW_F32;
	if (dim_opt == 0)
		return cdx_error(CDX_EINVAL,
		    "%s: unknown input format: use .fvecs, .npy, or raw float32 with --dim", in->path);
	in->dim = dim_opt;
	in->row_bytes = 4 * (uint64_t) dim_opt;
	in->data_off = 0;
	if (size == 0)
		return cdx_error(CDX_EEMPTY, "%s: empty input (0 rows)", in->path);
	if (size % in->row_bytes != 0)
		return cdx_error(CDX_ECORRUPT,
		    "%s: truncated: the file ends inside row %llu (%llu bytes is not a whole number of "
		    "%u-float rows)",
		    in->path, (unsigned long long) (size / in->row_bytes), (unsigned long long) size,
		    dim_opt);
	in->rows = size / in->row_bytes;
	return CDX_OK;
}

int
cdx_input_open(cdx_input **ip, const char *path, uint32_t dim)
{
	*ip = NULL;
	cdx_input *in = calloc(1, sizeof(*in));
	if (in == NULL || (in->path = strdup(path)) == NULL) {
		free(in);
		return cdx_error(CDX_ENOMEM, "input %s", path);
	}
	in->fd = -1;
	in->page = (size_t) sysconf(_SC_PAGESIZE);
	int rc;
	struct stat st;
	in->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (in->fd < 0) {
		rc = cdx_error_errno(errno == ENOENT ? CDX_ENOTFOUND
		        : errno == EACCES            ? CDX_EPERM
		                                     : CDX_EIO,
		    "cannot read input %s", path);
		goto fail;
	}
	if (fstat(in->fd, &st) != 0) {
		rc = cdx_error_errno(CDX_EIO, "stat %s", path);
		goto fail;
	}
	if (!S_ISREG(st.st_mode)) {
		rc = cdx_error(CDX_EINVAL, "%s: not a regular file", path);
		goto fail;
	}
	in->map_len = (size_t) st.st_size;
	if (in->map_len > 0) {
		in->map = mmap(NULL, in->map_len, PROT_READ, MAP_PRIVATE, in->fd, 0);
		if (in->map == MAP_FAILED) {
			in->map = NULL;
			rc = cdx_error_errno(CDX_EIO, "mmap %s", path);
			goto fail;
		}
	}
	if ((rc = input_layout(in, (uint64_t) st.st_size, dim)) != CDX_OK)
		goto fail;
	madvise(in->map, in->map_len, MADV_SEQUENTIAL);
	*ip = in;
	return CDX_OK;
fail:
	cdx_input_close(in);
	return rc;
}

void
cdx_input_close(cdx_input *in)
{
	if (in == NULL)
		return;
	if (in->map != NULL)
		munmap(in->map, in->map_len);
	if (in->fd >= 0)
		close(in->fd);
	free(in->path);
	free(in);
}

uint64_t
cdx_input_rows(const cdx_input *in)
{
	return in->rows;
}

uint32_t
cdx_input_dim(const cdx_input *in)
{
	return in->dim;
}

int
cdx_input_format(const cdx_input *in)
{
	return in->format;
}

uint64_t
cdx_input_file_bytes(const cdx_input *in)
{
	return in->map_len;
}

const char *
cdx_input_path(const cdx_input *in)
{
	return in->path;
}

static int
nonfinite_error(const cdx_input *in, uint64_t row, const float *v)
{
	long c = cdx_find_nonfinite(v, in->dim);
	return cdx_error(CDX_ENONFINITE, "%s: row %llu, column %ld: %s", in->path, (unsigned long long) row,
	    c, isnan(v[c]) ? "NaN" : "Inf");
}

/* read_one converts one row into out and validates it. */
static int
read_one(cdx_input *in, uint64_t row, float *out)
{
	const uint8_t *p = in->map + in->data_off + row * in->row_bytes;
	switch (in->format) {
	case CDX_INPUT_FVECS: {
		int32_t d;
		memcpy(&d, p, 4);
		if (d != (int32_t) in->dim)
			return cdx_error(CDX_EDIM,
			    "%s: row %llu has dimension %d, expected %u (the dimension of row 0)", in->path,
			    (unsigned long long) row, d, in->dim);
		memcpy(out, p + 4, (size_t) in->dim * 4);
		break;
	}
	case CDX_INPUT_NPY_F16: {
		const uint16_t *h = (const uint16_t *) (const void *) p;
		for (uint32_t j = 0; j < in->dim; j++) {
			uint16_t v;
			memcpy(&v, h + j, 2);
			out[j] = cdx_f16_to_f32(v);
		}
		break;
	}
	default:
		memcpy(out, p, (size_t) in->dim * 4);
		break;
	}
	/* finiteness: all-exponent-bits-set test, branch-free over the row */
	uint32_t bad = 0;
	const uint32_t *u = (const uint32_t *) (const void *) out;
	for (uint32_t j = 0; j < in->dim; j++)
		bad |= (uint32_t) ((u[j] & 0x7f800000u) == 0x7f800000u);
	if (bad)
		return nonfinite_error(in, row, out);
	return CDX_OK;
}

int
cdx_input_read(cdx_input *in, uint64_t row, size_t n, float *out)
{
	if (row + n > in->rows)
		return cdx_error(CDX_EINVAL, "%s: rows %llu..%llu out of range (%llu rows)", in->path,
		    (unsigned long long) row, (unsigned long long) (row + n), (unsigned long long) in->rows);
	if (in->format == CDX_INPUT_NPY_F32 || in->format == CDX_INPUT_RAW_F32) {
		/* contiguous: one copy, then one validation pass */
		memcpy(out, in->map + in->data_off + row * in->row_bytes, n * in->row_bytes);
		const uint32_t *u = (const uint32_t *) (const void *) out;
		size_t total = n * in->dim;
		uint32_t bad = 0;
		for (size_t i = 0; i < total; i++)
			bad |= (uint32_t) ((u[i] & 0x7f800000u) == 0x7f800000u);
		if (!bad)
			return CDX_OK;
		long first = cdx_find_nonfinite(out, total);
		uint64_t r = (uint64_t) first / in->dim;
		return nonfinite_error(in, row + r, out + r * in->dim);
	}
	for (size_t i = 0; i < n; i++) {
		int rc = read_one(in, row + i, out + i * in->dim);
		if (rc != CDX_OK)
			return rc;
	}
	return CDX_OK;
}

int
cdx_input_read_rows(cdx_input *in, const uint64_t *rows, size_t n, float *out)
{
	for (size_t i = 0; i < n; i++) {
		if (rows[i] >= in->rows)
			return cdx_error(
			    CDX_EINVAL, "%s: row %llu out of range", in->path, (unsigned long long) rows[i]);
		int rc = read_one(in, rows[i], out + i * in->dim);
		if (rc != CDX_OK)
			return rc;
	}
	return CDX_OK;
}

void
cdx_input_release(cdx_input *in, uint64_t end)
{
	if (in->map == NULL)
		return;
	uint64_t off = in->data_off + CDX_MIN(end, in->rows) * in->row_bytes;
	off -= off % in->page;
	if (off > in->released) {
		madvise(in->map + in->released, (size_t) (off - in->released), MADV_DONTNEED);
		in->released = off;
	}
}

void
cdx_input_prefetch(cdx_input *in, uint64_t row, size_t n)
{
	if (in->map == NULL || row >= in->rows)
		return;
	n = (size_t) CDX_MIN((uint64_t) n, in->rows - row);
	uint64_t off = in->data_off + row * in->row_bytes;
	uint64_t end = off + n * in->row_bytes;
	off -= off % in->page;
	madvise(in->map + off, (size_t) (end - off), MADV_WILLNEED);
}

/* --- a line reader shared by ids and keys files -------------------------- */

struct lines {
	const char *path;
	int fd;
	char *buf;
	size_t cap, start, end; /* unread bytes are buf[start..end) */
	int eof;
	uint64_t line; /* 1-based number of the line last returned */
};

static int
lines_open(struct lines *l, const char *path)
{
	memset(l, 0, sizeof(*l));
	l->path = path;
	l->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (l->fd < 0)
		return cdx_error_errno(errno == ENOENT ? CDX_ENOTFOUND
		        : errno == EACCES              ? CDX_EPERM
		                                       : CDX_EIO,
		    "cannot read %s", path);
	l->cap = 1 << 20;
	l->buf = malloc(l->cap);
	if (l->buf == NULL) {
		close(l->fd);
		return cdx_error(CDX_ENOMEM, "reading %s", path);
	}
	return CDX_OK;
}

static void
lines_close(struct lines *l)
{
	if (l->fd >= 0)
		close(l->fd);
	l->fd = -1;
	free(l->buf);
	l->buf = NULL;
}

/* lines_next returns 1 with the next line (without "\n" or "\r\n") in
 * *s and *len, 0 at end of file, or -code on error. */
static int
lines_next(struct lines *l, const char **s, size_t *len)
{
	for (;;) {
		char *nl = memchr(l->buf + l->start, '\n', l->end - l->start);
		if (nl != NULL || (l->eof && l->end > l->start)) {
			char *b = l->buf + l->start;
			size_t n = nl ? (size_t) (nl - b) : l->end - l->start;
			l->start += nl ? n + 1 : n;
			if (n > 0 && b[n - 1] == '\r')
				n--;
			*s = b;
			*len = n;
			l->line++;
			return 1;
		}
		if (l->eof)
			return 0;
		if (l->start > 0) {
			memmove(l->buf, l->buf + l->start, l->end - l->start);
			l->end -= l->start;
			l->start = 0;
		}
		if (l->end == l->cap) {
			/* a line longer than the buffer: grow (keys are capped later) */
			char *nb = realloc(l->buf, l->cap * 2);
			if (nb == NULL)
				return -cdx_error(CDX_ENOMEM, "reading %s", l->path);
			l->buf = nb;
			l->cap *= 2;
		}
		ssize_t got = read(l->fd, l->buf + l->end, l->cap - l->end);
		if (got < 0) {
			if (errno == EINTR)
				continue;
			return -cdx_error_errno(CDX_EIO, "read %s", l->path);
		}
		if (got == 0)
			l->eof = 1;
		l->end += (size_t) got;
	}
}

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

static int
ids_load_npy(const char *path, uint64_t rows, int64_t *ids)
{
	char *data = NULL;
	size_t len = 0;
	int rc = cdx_read_file(path, &data, &len);
	if (rc != CDX_OK)
		return rc;
	struct npy_header h;
	if ((rc = npy_parse((const uint8_t *) data, len, path, &h)) != CDX_OK)
		goto done;
	size_t elem = strcmp(h.descr, "<i8") == 0 || strcmp(h.descr, "=i8") == 0 ? 8
	    : strcmp(h.descr, "<i4") == 0 || strcmp(h.descr, "=i4") == 0         ? 4
	                                                                         : 0;
	if (elem == 0) {
		rc = cdx_error(CDX_EINVAL,
		    "%s: ids .npy dtype '%s' is not supported (int64 '<i8' or int32 '<i4')", path, h.descr);
		goto done;
	}
	if (h.fortran && h.ndim == 2 && h.shape[1] != 1) {
		rc = cdx_error(CDX_EINVAL, "%s: Fortran-order ids .npy", path);
		goto done;
	}
	if (!(h.ndim == 1 || (h.ndim == 2 && h.shape[1] == 1))) {
		rc = cdx_error(CDX_EINVAL, "%s: ids .npy must be 1-D (rows,)", path);
		goto done;
	}
	if (h.shape[0] != rows) {
		rc = cdx_error(CDX_EDIM, "%s: %llu ids, but the input has %llu rows", path,
		    (unsigned long long) h.shape[0], (unsigned long long) rows);
		goto done;
	}
	if (h.data_off + rows * elem != len) {
		rc = cdx_error(CDX_ECORRUPT, "%s: truncated: %zu bytes, the header announces %llu", path, len,
		    (unsigned long long) (h.data_off + rows * elem));
		goto done;
	}
	for (uint64_t i = 0; i < rows; i++) {
		if (elem == 8) {
			memcpy(&ids[i], data + h.data_off + i * 8, 8);
		} else {
			int32_t v;
			memcpy(&v, data + h.data_off + i * 4, 4);
			ids[i] = v;
		}
	}
done:
	free(data);
	return rc;
}

static int
ids_load_text(const char *path, uint64_t rows, int64_t *ids)
{
	struct lines l;
	int rc = lines_open(&l, path);
	if (rc != CDX_OK)
		return rc;
	uint64_t n = 0;
	const char *s;
	size_t len;
	int r;
	while ((r = lines_next(&l, &s, &len)) == 1) {
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
		char *end;
		errno = 0;
		long long v = strtoll(tmp, &end, 10);
		if (*end != 0 || errno != 0) {
			rc = cdx_error(CDX_EINVAL, "%s: line %llu: '%s' is not an int64 id", path,
			    (unsigned long long) l.line, tmp);
			goto done;
		}
		if (n < rows)
			ids[n] = v;
		n++;
	}
	if (r < 0) {
		rc = -r;
		goto done;
	}
	if (n != rows)
		rc = cdx_error(CDX_EDIM, "%s: %llu ids, but the input has %llu rows", path,
		    (unsigned long long) n, (unsigned long long) rows);
done:
	lines_close(&l);
	return rc;
}

int
cdx_ids_load(const char *path, uint64_t rows, int64_t **idsp)
{
	*idsp = NULL;
	int64_t *ids = malloc((rows ? rows : 1) * sizeof(int64_t));
	if (ids == NULL)
		return cdx_error(CDX_ENOMEM, "%s: %llu ids", path, (unsigned long long) rows);
	int npy = has_suffix(path, ".npy");
	int rc = npy ? ids_load_npy(path, rows, ids) : ids_load_text(path, rows, ids);
	if (rc == CDX_OK)
		rc = ids_dup_check(path, ids, rows, npy);
	if (rc != CDX_OK) {
		free(ids);
		return rc;
	}
	*idsp = ids;
	return CDX_OK;
}

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
	struct lines l;
	int rc = lines_open(&l, path);
	if (rc != CDX_OK)
		return rc;
	struct stat st;
	if (fstat(l.fd, &st) == 0 && bytes != NULL)
		*bytes = (uint64_t) st.st_size;
	if (rows >= UINT32_MAX) {
		lines_close(&l);
		return cdx_error(CDX_EINVAL, "%s: more than 2^32 keys are not supported", path);
	}
	uint64_t cap = 16;
	while (cap < rows + rows / 2 + 1)
		cap *= 2;
	struct keyslot *t = calloc(cap, sizeof(*t));
	if (t == NULL) {
		lines_close(&l);
		return cdx_error(
		    CDX_ENOMEM, "%s: duplicate check for %llu keys", path, (unsigned long long) rows);
	}
	uint64_t n = 0;
	const char *s;
	size_t len;
	int r;
	while ((r = lines_next(&l, &s, &len)) == 1) {
		n++;
		if (len == 0) {
			rc = cdx_error(
			    CDX_EINVAL, "%s: line %llu: empty key", path, (unsigned long long) l.line);
			goto done;
		}
		if (len > CDX_BUILD_MAX_KEY_BYTES) {
			rc = cdx_error(CDX_EINVAL, "%s: line %llu: key of %zu bytes (at most %d)", path,
			    (unsigned long long) l.line, len, CDX_BUILD_MAX_KEY_BYTES);
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
	lines_close(&l);
	return rc;
}

struct cdx_keys_reader {
	struct lines l;
};

int
cdx_keys_reader_open(cdx_keys_reader **rp, const char *path)
{
	*rp = NULL;
	cdx_keys_reader *r = calloc(1, sizeof(*r));
	if (r == NULL)
		return cdx_error(CDX_ENOMEM, "keys reader");
	int rc = lines_open(&r->l, path);
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
	int got = lines_next(&r->l, key, len);
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
	lines_close(&r->l);
	free(r);
}
