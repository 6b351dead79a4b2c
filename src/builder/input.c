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

/* --- attributes ------------------------------------------------------------ */

/* A tab-separated attributes file (docs/recommenders.md, "Attributes"): a
 * header of name:type columns, then one line per input row. scan collects
 * each enum and set column's values (a growing hash table per column), read
 * turns a line into the stored column values. */

struct valset {
	char **values;
	uint32_t n, cap;
	uint32_t *slots; /* value index + 1, open addressing; 0 = empty */
	uint32_t mask;
};

static void
valset_fini(struct valset *v)
{
	for (uint32_t i = 0; i < v->n; i++)
		free(v->values[i]);
	free(v->values);
	free(v->slots);
	memset(v, 0, sizeof(*v));
}

static int
valset_add(struct valset *v, const char *s, size_t len)
{
	if (v->slots == NULL || (uint64_t) (v->n + 1) * 2 > (uint64_t) v->mask + 1) {
		uint32_t cap = v->slots ? (v->mask + 1) * 2 : 64;
		uint32_t *slots = calloc(cap, sizeof(uint32_t));
		if (slots == NULL)
			return CDX_ENOMEM;
		for (uint32_t i = 0; i < v->n; i++) {
			uint64_t h = cdx_xxh64(v->values[i], strlen(v->values[i]), 0) & (cap - 1);
			while (slots[h] != 0)
				h = (h + 1) & (cap - 1);
			slots[h] = i + 1;
		}
		free(v->slots);
		v->slots = slots;
		v->mask = cap - 1;
	}
	uint64_t h = cdx_xxh64(s, len, 0) & v->mask;
	for (; v->slots[h] != 0; h = (h + 1) & v->mask) {
		const char *have = v->values[v->slots[h] - 1];
		if (strncmp(have, s, len) == 0 && have[len] == '\0')
			return CDX_OK;
	}
	if (v->n == v->cap) {
		uint32_t cap = v->cap ? v->cap * 2 : 16;
		char **grown = realloc(v->values, cap * sizeof(char *));
		if (grown == NULL)
			return CDX_ENOMEM;
		v->values = grown;
		v->cap = cap;
	}
	if ((v->values[v->n] = strndup(s, len)) == NULL)
		return CDX_ENOMEM;
	v->slots[h] = ++v->n;
	return CDX_OK;
}

/* attrs_header parses the header line into s (no values yet). */
static int
attrs_header(const char *path, const char *line, size_t len, struct cdx_attr_schema *s)
{
	const char *p = line, *end = line + len;
	while (p <= end) {
		const char *tab = memchr(p, '\t', (size_t) (end - p));
		const char *fe = tab ? tab : end, *colon = memchr(p, ':', (size_t) (fe - p));
		if (s->ncols == CDX_ATTR_MAX_COLUMNS)
			return cdx_error(CDX_EINVAL, "%s: line 1: more than %d attribute columns", path,
			    CDX_ATTR_MAX_COLUMNS);
		struct cdx_attr_column *c = &s->cols[s->ncols];
		size_t nl = colon ? (size_t) (colon - p) : 0;
		if (colon == NULL || !cdx_attr_name_valid(p, nl)
		    || cdx_attr_type_parse(colon + 1, (size_t) (fe - colon - 1), &c->type) != CDX_OK)
			return cdx_error(CDX_EINVAL,
			    "%s: line 1, column %u: '%.*s' is not name:type (a name of letters, digits and "
			    "_; "
			    "a type of int, bool, enum, set or group)",
			    path, s->ncols + 1, (int) CDX_MIN((size_t) (fe - p), (size_t) 80), p);
		memcpy(c->name, p, nl);
		c->name[nl] = '\0';
		if (cdx_attr_find(s, c->name, nl) >= 0)
			return cdx_error(CDX_EINVAL, "%s: line 1: attribute %s appears twice", path, c->name);
		s->ncols++;
		if (tab == NULL)
			break;
		p = tab + 1;
	}
	return CDX_OK;
}

/* value_ok: enum, set and group values are 1..128 printable bytes without
 * tabs or commas (a set's separator). */
static int
value_ok(const char *s, size_t len)
{
	if (len == 0 || len > CDX_ATTR_VALUE_MAX)
		return 0;
	for (size_t i = 0; i < len; i++)
		if ((unsigned char) s[i] < 0x20 || s[i] == ',' || s[i] == 0x7f)
			return 0;
	return 1;
}

/* attrs_line splits one data line and checks each field. With sets (scan)
 * it collects enum and set values; with out (read) it stores each column's
 * value as cdx_attr_get returns it. */
static int
attrs_line(const char *path, uint64_t lineno, const char *line, size_t len, const struct cdx_attr_schema *s,
    struct valset *sets, int64_t *out)
{
	const char *p = line, *end = line + len;
	for (uint32_t c = 0; c < s->ncols; c++) {
		const struct cdx_attr_column *col = &s->cols[c];
		const char *tab = memchr(p, '\t', (size_t) (end - p)), *fe = tab ? tab : end;
		size_t fl = (size_t) (fe - p);
		if ((tab == NULL) != (c + 1 == s->ncols))
			return cdx_error(CDX_EINVAL, "%s: line %llu: %s fields, the header has %u", path,
			    (unsigned long long) lineno, tab == NULL ? "fewer" : "more", s->ncols);
		int64_t v = 0;
		char tmp[24];
		switch (col->type) {
		case CDX_ATTR_INT: {
			char *e;
			if (fl == 0 || fl >= sizeof(tmp))
				goto bad;
			memcpy(tmp, p, fl);
			tmp[fl] = '\0';
			errno = 0;
			long long x = strtoll(tmp, &e, 10);
			if (errno != 0 || *e != '\0' || x < INT32_MIN || x > INT32_MAX)
				goto bad;
			v = x;
			break;
		}
		case CDX_ATTR_BOOL:
			if ((fl == 4 && memcmp(p, "true", 4) == 0) || (fl == 1 && *p == '1'))
				v = 1;
			else if (!((fl == 5 && memcmp(p, "false", 5) == 0) || (fl == 1 && *p == '0')))
				goto bad;
			break;
		case CDX_ATTR_ENUM:
		case CDX_ATTR_GROUP:
			if (!value_ok(p, fl))
				goto bad;
			if (col->type == CDX_ATTR_GROUP)
				v = (int64_t) cdx_attr_group_hash(p, fl);
			else if (sets != NULL && valset_add(&sets[c], p, fl) != CDX_OK)
				return cdx_error(CDX_ENOMEM, "%s: values of %s", path, col->name);
			else if (out != NULL && (v = cdx_attr_value_code(col, p, fl)) < 0)
				goto changed;
			break;
		case CDX_ATTR_SET:
			for (const char *q = p; q < fe;) {
				const char *comma = memchr(q, ',', (size_t) (fe - q)),
				           *ve = comma ? comma : fe;
				if (!value_ok(q, (size_t) (ve - q)))
					goto bad;
				if (sets != NULL && valset_add(&sets[c], q, (size_t) (ve - q)) != CDX_OK)
					return cdx_error(CDX_ENOMEM, "%s: values of %s", path, col->name);
				if (out != NULL) {
					int code = cdx_attr_value_code(col, q, (size_t) (ve - q));
					if (code < 0)
						goto changed;
					v |= (int64_t) ((uint64_t) 1 << code);
				}
				q = comma ? comma + 1 : fe;
			}
			if (sets != NULL && sets[c].n > CDX_ATTR_SET_MAX)
				return cdx_error(CDX_EINVAL,
				    "%s: line %llu: set attribute %s has more than %d distinct values", path,
				    (unsigned long long) lineno, col->name, CDX_ATTR_SET_MAX);
			break;
		}
		if (sets != NULL && col->type == CDX_ATTR_ENUM && sets[c].n > CDX_ATTR_ENUM_MAX)
			return cdx_error(CDX_EINVAL,
			    "%s: line %llu: enum attribute %s has more than %u values", path,
			    (unsigned long long) lineno, col->name, CDX_ATTR_ENUM_MAX);
		if (out != NULL)
			out[c] = v;
		p = fe + 1;
		continue;
	bad:
		return cdx_error(CDX_EINVAL, "%s: line %llu: %s '%.*s' is not a valid %s value%s", path,
		    (unsigned long long) lineno, col->name, (int) CDX_MIN(fl, (size_t) 80), p,
		    cdx_attr_type_name(col->type),
		    col->type == CDX_ATTR_BOOL      ? " (true, false, 1 or 0)"
		        : col->type == CDX_ATTR_INT ? " (a 32-bit integer)"
		        : col->type == CDX_ATTR_SET
		        ? " (comma-separated values, or empty for none)"
		        : " (1 to 128 bytes, no tab, comma or control character)");
	changed:
		return cdx_error(CDX_ECORRUPT,
		    "%s: line %llu: %s value '%.*s' was not there when the build scanned the file (the "
		    "file changed during the build?)",
		    path, (unsigned long long) lineno, col->name, (int) CDX_MIN(fl, (size_t) 80), p);
	}
	return CDX_OK;
}

int
cdx_attrs_scan(const char *path, uint64_t rows, struct cdx_attr_schema **schemap, uint64_t *bytes)
{
	*schemap = NULL;
	struct lines l;
	struct valset sets[CDX_ATTR_MAX_COLUMNS];
	memset(sets, 0, sizeof(sets));
	struct cdx_attr_schema *s = calloc(1, sizeof(*s));
	if (s == NULL)
		return cdx_error(CDX_ENOMEM, "attributes of %s", path);
	int rc = lines_open(&l, path);
	if (rc != CDX_OK) {
		free(s);
		return rc;
	}
	struct stat st;
	if (bytes != NULL && fstat(l.fd, &st) == 0)
		*bytes = (uint64_t) st.st_size;
	const char *line;
	size_t len;
	int r = lines_next(&l, &line, &len);
	if (r <= 0) {
		rc = r < 0 ? -r
		           : cdx_error(CDX_EEMPTY, "%s: empty attributes file (want a header line)", path);
		goto done;
	}
	if ((rc = attrs_header(path, line, len, s)) != CDX_OK)
		goto done;
	uint64_t n = 0;
	while ((r = lines_next(&l, &line, &len)) == 1) {
		if (++n > rows)
			continue; /* counted for the message below */
		if ((rc = attrs_line(path, l.line, line, len, s, sets, NULL)) != CDX_OK)
			goto done;
	}
	if (r < 0) {
		rc = -r;
		goto done;
	}
	if (n != rows) {
		rc = cdx_error(CDX_EDIM, "%s: %llu attribute lines, but the input has %llu rows", path,
		    (unsigned long long) n, (unsigned long long) rows);
		goto done;
	}
	for (uint32_t c = 0; c < s->ncols; c++) {
		struct cdx_attr_column *col = &s->cols[c];
		if (sets[c].n == 0)
			continue;
		qsort(sets[c].values, sets[c].n, sizeof(char *), cdx_cmp_str);
		col->values = sets[c].values;
		col->nvalues = sets[c].n;
		sets[c].values = NULL;
		sets[c].n = 0;
	}
done:
	for (uint32_t c = 0; c < CDX_ATTR_MAX_COLUMNS; c++)
		valset_fini(&sets[c]);
	lines_close(&l);
	if (rc != CDX_OK) {
		cdx_attr_schema_free(s);
		return rc;
	}
	*schemap = s;
	return CDX_OK;
}

int
cdx_attrs_read_shard(const char *path, const struct cdx_attr_schema *s, uint64_t rows, const int64_t *ids,
    uint32_t shard, uint32_t nshards, uint64_t nrows, void **cols)
{
	struct lines l;
	for (uint32_t c = 0; c < s->ncols; c++)
		cols[c] = NULL;
	int rc = lines_open(&l, path);
	if (rc != CDX_OK)
		return rc;
	for (uint32_t c = 0; c < s->ncols; c++) {
		if ((cols[c] = calloc(nrows ? nrows : 1, cdx_attr_type_width(s->cols[c].type))) == NULL) {
			rc = cdx_error(CDX_ENOMEM, "%s: attribute columns", path);
			goto done;
		}
	}
	const char *line;
	size_t len;
	int r = lines_next(&l, &line, &len); /* the header, checked by scan */
	uint64_t have = 0;
	for (uint64_t row = 0; r >= 0 && row < rows; row++) {
		if ((r = lines_next(&l, &line, &len)) != 1)
			break;
		if (cdx_build_shard_of(ids ? ids[row] : (int64_t) row, nshards) != shard)
			continue;
		int64_t v[CDX_ATTR_MAX_COLUMNS];
		if ((rc = attrs_line(path, l.line, line, len, s, NULL, v)) != CDX_OK)
			goto done;
		if (have == nrows) {
			rc = cdx_error(CDX_ECORRUPT,
			    "%s: more attribute rows for shard %u than the %llu expected", path, shard,
			    (unsigned long long) nrows);
			goto done;
		}
		for (uint32_t c = 0; c < s->ncols; c++) {
			switch (s->cols[c].type) {
			case CDX_ATTR_INT:
				((int32_t *) cols[c])[have] = (int32_t) v[c];
				break;
			case CDX_ATTR_BOOL:
				((uint8_t *) cols[c])[have] = (uint8_t) v[c];
				break;
			case CDX_ATTR_ENUM:
				((uint16_t *) cols[c])[have] = (uint16_t) v[c];
				break;
			default:
				((uint64_t *) cols[c])[have] = (uint64_t) v[c];
				break;
			}
		}
		have++;
	}
	if (r < 0)
		rc = -r;
	else if (have != nrows)
		rc = cdx_error(CDX_ECORRUPT,
		    "%s: %llu attribute rows for this shard, expected %llu (the file "
		    "changed during the build?)",
		    path, (unsigned long long) have, (unsigned long long) nrows);
done:
	lines_close(&l);
	if (rc != CDX_OK) {
		for (uint32_t c = 0; c < s->ncols; c++) {
			free(cols[c]);
			cols[c] = NULL;
		}
	}
	return rc;
}
