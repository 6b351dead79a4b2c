/*
 * vectors.c — vector files (.fvecs, .npy float32/float16/float64, raw
 * float32) and .ivecs ground truth, by the rules of input.h.
 *
 * Files are mapped read-only and read in row ranges; the caller drops pages
 * it has finished with (cdx_input_release), so a scan of a file far larger
 * than memory keeps a bounded RSS. Every check that can be done from the
 * file size is done at open (truncation, trailing bytes, empty input, a
 * dimension change in an fvecs that makes the size inconsistent); the
 * per-row checks (fvecs dimension field, NaN/Inf) happen as rows are read.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "input/input_int.h"

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

static const struct {
	int format;
	const char *name;
} format_names[] = {
	{ CDX_INPUT_AUTO, "auto" },
	{ CDX_INPUT_FVECS, "fvecs" },
	{ CDX_INPUT_NPY_F32, "npy-f32" },
	{ CDX_INPUT_NPY_F16, "npy-f16" },
	{ CDX_INPUT_NPY_F64, "npy-f64" },
	{ CDX_INPUT_RAW_F32, "raw-f32" },
	{ CDX_INPUT_NPY, "npy" },
};

const char *
cdx_input_format_name(int format)
{
	for (size_t i = 0; i < CDX_ARRAY_LEN(format_names); i++)
		if (format_names[i].format == format)
			return format_names[i].name;
	return "unknown";
}

int
cdx_input_format_from_name(const char *name)
{
	for (size_t i = 0; i < CDX_ARRAY_LEN(format_names); i++)
		if (format_names[i].format != CDX_INPUT_AUTO && format_names[i].format != CDX_INPUT_NPY
		    && strcmp(format_names[i].name, name) == 0)
			return format_names[i].format;
	return 0;
}

int
cdx_input_format_family(int format)
{
	switch (format) {
	case CDX_INPUT_NPY_F32:
	case CDX_INPUT_NPY_F16:
	case CDX_INPUT_NPY_F64:
		return CDX_INPUT_NPY;
	default:
		return format;
	}
}

int
cdx_input_format_parse(const char *s, int *format)
{
	if (strcmp(s, "fvecs") == 0)
		*format = CDX_INPUT_FVECS;
	else if (strcmp(s, "npy") == 0)
		*format = CDX_INPUT_NPY;
	else if (strcmp(s, "raw") == 0)
		*format = CDX_INPUT_RAW_F32;
	else
		return cdx_error(CDX_EINVAL, "unknown vector format '%s' (fvecs, npy or raw)", s);
	return CDX_OK;
}

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
check_dim(const cdx_input *in, uint32_t dim_opt)
{
	if (dim_opt != 0 && dim_opt != in->dim)
		return cdx_error(CDX_EDIM, "%s: dimension %u, but %u was expected (--dim or the index)",
		    in->path, in->dim, dim_opt);
	return CDX_OK;
}

static int
layout_fvecs(cdx_input *in, uint64_t size, uint32_t dim_opt)
{
	in->format = CDX_INPUT_FVECS;
	if (size == 0)
		return cdx_error(CDX_EEMPTY, "%s: empty input (0 rows)", in->path);
	if (size < 4)
		return cdx_error(CDX_ECORRUPT, "%s: truncated: the file ends inside row 0", in->path);
	int32_t d;
	memcpy(&d, in->map, 4);
	if (d <= 0 || d > CDX_INPUT_MAX_DIM)
		return cdx_error(CDX_ECORRUPT, "%s: row 0 has dimension %d: not an fvecs file?%s", in->path,
		    d, cdx__looks_like_text(in->map, size) ? " (it looks like a text file)" : "");
	in->dim = (uint32_t) d;
	in->row_bytes = 4 + 4 * (uint64_t) d;
	in->data_off = 0;
	int rc = check_dim(in, dim_opt);
	if (rc != CDX_OK)
		return rc;
	if (size % in->row_bytes != 0)
		return fvecs_check_dims(in, size);
	in->rows = size / in->row_bytes;
	return CDX_OK;
}

static int
layout_npy(cdx_input *in, uint64_t size, uint32_t dim_opt)
{
	struct cdx__npy h;
	int rc = cdx__npy_parse(in->map, size, in->path, &h);
	if (rc != CDX_OK)
		return rc;
	size_t elem;
	/* '=' is native order, little-endian on every machine candex builds for */
	const char *t = h.descr[0] == '<' || h.descr[0] == '=' ? h.descr + 1 : NULL;
	if (t != NULL && strcmp(t, "f4") == 0) {
		in->format = CDX_INPUT_NPY_F32;
		elem = 4;
	} else if (t != NULL && strcmp(t, "f2") == 0) {
		in->format = CDX_INPUT_NPY_F16;
		elem = 2;
	} else if (t != NULL && strcmp(t, "f8") == 0) {
		in->format = CDX_INPUT_NPY_F64;
		elem = 8;
	} else if (h.descr[0] == '>') {
		return cdx_error(CDX_EINVAL, "%s: big-endian .npy ('%s') is not supported: save it as '<%s'",
		    in->path, h.descr, h.descr + 1);
	} else {
		return cdx_error(CDX_EINVAL,
		    "%s: .npy dtype '%s' is not supported (float32 '<f4', float16 '<f2' or float64 '<f8')",
		    in->path, h.descr);
	}
	if (h.fortran)
		return cdx_error(
		    CDX_EINVAL, "%s: Fortran-order .npy is not supported (save with C order)", in->path);
	if (h.ndim != 2)
		return cdx_error(CDX_EINVAL, "%s: .npy must be 2-D (rows x dim), has %d dimension%s%s",
		    in->path, h.ndim, h.ndim == 1 ? "" : "s",
		    h.ndim == 1 ? " (one vector? reshape it to (1, dim))" : "");
	if (h.shape[1] == 0 || h.shape[1] > CDX_INPUT_MAX_DIM)
		return cdx_error(CDX_EINVAL, "%s: .npy dimension %llu is out of range (1..%d)", in->path,
		    (unsigned long long) h.shape[1], CDX_INPUT_MAX_DIM);
	in->dim = (uint32_t) h.shape[1];
	in->rows = h.shape[0];
	in->row_bytes = elem * in->dim;
	in->data_off = h.data_off;
	if ((rc = check_dim(in, dim_opt)) != CDX_OK)
		return rc;
	if (in->rows == 0)
		return cdx_error(CDX_EEMPTY, "%s: empty input (0 rows)", in->path);
	uint64_t have = size - h.data_off;
	if (in->rows > have / in->row_bytes)
		return cdx_error(CDX_ECORRUPT,
		    "%s: truncated: the header says %llu rows but the file ends inside row %llu", in->path,
		    (unsigned long long) in->rows, (unsigned long long) (have / in->row_bytes));
	if (have > in->rows * in->row_bytes)
		return cdx_error(CDX_ECORRUPT, "%s: %llu bytes after the %llu rows the header announces",
		    in->path, (unsigned long long) (have - in->rows * in->row_bytes),
		    (unsigned long long) in->rows);
	return CDX_OK;
}

static int
layout_raw(cdx_input *in, uint64_t size, uint32_t dim_opt)
{
	in->format = CDX_INPUT_RAW_F32;
	if (dim_opt == 0)
		return cdx_error(CDX_EINVAL, "%s: raw float32 input needs its dimension (--dim)", in->path);
	if (dim_opt > CDX_INPUT_MAX_DIM)
		return cdx_error(CDX_EINVAL, "%s: dimension %u is out of range (1..%d)", in->path, dim_opt,
		    CDX_INPUT_MAX_DIM);
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

static int
input_layout(cdx_input *in, uint64_t size, uint32_t dim_opt, int format)
{
	if (format == CDX_INPUT_AUTO) {
		if (cdx__has_suffix(in->path, ".fvecs"))
			format = CDX_INPUT_FVECS;
		else if (cdx__has_suffix(in->path, ".npy"))
			format = CDX_INPUT_NPY;
		else
			return cdx_error(CDX_EINVAL,
			    "%s: unknown vector format%s: name it .fvecs or .npy, or read it as raw "
			    "little-endian "
			    "float32 with --format raw and --dim",
			    in->path,
			    cdx__looks_like_text(in->map, size) ? " (it looks like a text file: CSV?)" : "");
	}
	switch (format) {
	case CDX_INPUT_FVECS:
		return layout_fvecs(in, size, dim_opt);
	case CDX_INPUT_NPY:
	case CDX_INPUT_NPY_F32:
	case CDX_INPUT_NPY_F16:
	case CDX_INPUT_NPY_F64: {
		int rc = layout_npy(in, size, dim_opt);
		if (rc == CDX_OK && format != CDX_INPUT_NPY && format != in->format)
			rc = cdx_error(CDX_EINVAL, "%s: holds %s, not %s", in->path,
			    cdx_input_format_name(in->format), cdx_input_format_name(format));
		return rc;
	}
	case CDX_INPUT_RAW_F32:
		return layout_raw(in, size, dim_opt);
	}
	return cdx_error(CDX_EINVAL, "%s: unknown input format %d", in->path, format);
}

int
cdx_input_open(cdx_input **ip, const char *path, uint32_t dim, int format)
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
		rc = cdx__open_error("input", path);
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
	if ((rc = input_layout(in, (uint64_t) st.st_size, dim, format)) != CDX_OK)
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
	case CDX_INPUT_NPY_F64:
		for (uint32_t j = 0; j < in->dim; j++) {
			double v;
			memcpy(&v, p + 8 * (size_t) j, 8);
			if (isfinite(v) && fabs(v) > (double) FLT_MAX)
				return cdx_error(CDX_ENONFINITE,
				    "%s: row %llu, column %u: %g is out of float32 range", in->path,
				    (unsigned long long) row, j, v);
			out[j] = (float) v;
		}
		break;
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

/* ---- whole files ------------------------------------------------------------ */

int
cdx_vecs_read(struct cdx_vecs *v, const char *path, uint32_t dim, int format, uint64_t first, size_t count)
{
	memset(v, 0, sizeof(*v));
	cdx_input *in = NULL;
	int rc = cdx_input_open(&in, path, dim, format);
	if (rc != CDX_OK)
		return rc;
	uint64_t rows = cdx_input_rows(in);
	if (first >= rows || (count > 0 && count > rows - first)) {
		rc = cdx_error(CDX_EINVAL, "%s: rows %llu..%llu are past its %llu rows", path,
		    (unsigned long long) first, (unsigned long long) (first + (count ? count : 1) - 1),
		    (unsigned long long) rows);
		goto done;
	}
	size_t n = count > 0 ? count : (size_t) (rows - first), d = cdx_input_dim(in);
	if (n > SIZE_MAX / sizeof(float) / d || (v->x = malloc(n * d * sizeof(float))) == NULL) {
		rc = cdx_error(CDX_ENOMEM, "%s: %zu x %zu floats", path, n, d);
		goto done;
	}
	/* in steps, dropping the mapping behind: one copy in memory, not two */
	size_t step = CDX_MAX((size_t) 1, ((size_t) 16 << 20) / (d * sizeof(float)));
	for (size_t i = 0; i < n && rc == CDX_OK; i += step) {
		size_t m = CDX_MIN(step, n - i);
		rc = cdx_input_read(in, first + i, m, v->x + i * d);
		cdx_input_release(in, first + i + m);
	}
	if (rc != CDX_OK) {
		free(v->x);
		v->x = NULL;
		goto done;
	}
	v->n = n;
	v->dim = (uint32_t) d;
done:
	cdx_input_close(in);
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
cdx_ivecs_read(const char *path, int32_t **rowsp, size_t *np, uint32_t *kp)
{
	*rowsp = NULL;
	if (!cdx__has_suffix(path, ".ivecs"))
		return cdx_error(CDX_EINVAL, "%s: ground truth must be an .ivecs file", path);
	/* the same framing as .fvecs, with int32 values: read it as fvecs,
	 * without the float checks */
	cdx_input *in = NULL;
	int rc = cdx_input_open(&in, path, 0, CDX_INPUT_FVECS);
	if (rc != CDX_OK)
		return rc;
	size_t n = (size_t) in->rows, k = in->dim;
	int32_t *rows = malloc(n * k * sizeof(int32_t));
	if (rows == NULL) {
		cdx_input_close(in);
		return cdx_error(CDX_ENOMEM, "%s: %zu x %zu ints", path, n, k);
	}
	for (size_t i = 0; i < n; i++) {
		const uint8_t *p = in->map + i * in->row_bytes;
		int32_t d;
		memcpy(&d, p, 4);
		if (d != (int32_t) k) {
			rc = cdx_error(
			    CDX_EDIM, "%s: row %zu has %d entries, expected %zu (as row 0)", path, i, d, k);
			break;
		}
		memcpy(rows + i * k, p + 4, k * sizeof(int32_t));
	}
	cdx_input_close(in);
	if (rc != CDX_OK) {
		free(rows);
		return rc;
	}
	*rowsp = rows;
	*np = n;
	*kp = (uint32_t) k;
	return CDX_OK;
}
