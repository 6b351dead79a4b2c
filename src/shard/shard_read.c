/*
 * shard_read.c — opening, verifying and decompressing shard files.
 *
 * Shards are read with pread(2) through a small buffer, never mapped: a
 * mapped file that shrinks under the reader (a copy still in progress, a
 * truncate, a full disk on a network filesystem) raises SIGBUS, which would
 * take the whole server down, every collection with it. A short read is
 * just an error: the version is refused and the old one keeps serving.
 * Every size read from the file is checked against the file size before
 * use, so a truncated or corrupt file yields CDX_ECORRUPT, never an
 * out-of-bounds read. Parts are decompressed from the buffer, either fully
 * (read_part) or incrementally behind a FILE* (part streams, for
 * faiss_read_index).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lz4frame.h>

#include "shard/shard.h"

/* Bytes read from the file at a time: large enough that the syscalls cost
 * nothing next to decompression, small enough that several part streams
 * may be open at once. */
#define READ_CHUNK ((size_t) 1 << 20)

struct cdx_shard {
	char *path;
	int fd;
	uint64_t size; /* when opened; a read past a later end is an error */
	struct cdx_shard_info info;
};

static int
known_kind(uint32_t kind)
{
	return kind >= CDX_PART_FAISS && kind <= CDX_PART_ATTRS;
}

/* read_at reads exactly len bytes at off; a file that ends early has shrunk
 * since it was opened. */
static int
read_at(const cdx_shard *s, void *buf, size_t len, uint64_t off)
{
	int rc = cdx_read_all(s->fd, buf, len, off, s->path);
	if (rc == CDX_ECORRUPT)
		rc = cdx_error(CDX_ECORRUPT,
		    "%s: ends before byte %llu, but had %llu bytes when opened: the file shrank while "
		    "being read",
		    s->path, (unsigned long long) (off + len), (unsigned long long) s->size);
	return rc;
}

int
cdx_shard_open(cdx_shard **sp, const char *path)
{
	*sp = NULL;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return cdx_error_errno(errno == ENOENT ? CDX_ENOTFOUND : CDX_EIO, "open %s", path);
	struct stat st;
	if (fstat(fd, &st) != 0) {
		int rc = cdx_error_errno(CDX_EIO, "stat %s", path);
		close(fd);
		return rc;
	}
	if (!S_ISREG(st.st_mode)) {
		close(fd);
		return cdx_error(CDX_EINVAL, "%s: not a regular file", path);
	}
	if ((uint64_t) st.st_size < CDX_SHARD_HEADER_SIZE) {
		close(fd);
		return cdx_error(CDX_ECORRUPT, "%s: truncated (%lld bytes, header needs %d)", path,
		    (long long) st.st_size, CDX_SHARD_HEADER_SIZE);
	}
	/* parts are read front to back: ask for generous readahead */
	posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
	cdx_shard *s = calloc(1, sizeof(*s));
	if (s == NULL || (s->path = strdup(path)) == NULL) {
		free(s);
		close(fd);
		return cdx_error(CDX_ENOMEM, "opening %s", path);
	}
	s->fd = fd;
	s->size = (uint64_t) st.st_size;
	uint8_t header[CDX_SHARD_HEADER_SIZE];
	int rc = read_at(s, header, sizeof(header), 0);
	if (rc == CDX_OK)
		rc = cdx_shard_header_decode(header, &s->info, path);
	for (uint32_t i = 0; rc == CDX_OK && i < s->info.nparts; i++) {
		const struct cdx_part_desc *pd = &s->info.parts[i];
		if (pd->offset < CDX_SHARD_HEADER_SIZE || pd->offset > s->size
		    || pd->stored_size > s->size - pd->offset) {
			rc = cdx_error(CDX_ECORRUPT,
			    "%s: truncated or corrupt: part %u (%s) spans bytes %llu..+%llu but the file has "
			    "%llu",
			    path, i, cdx_part_name((int) pd->kind), (unsigned long long) pd->offset,
			    (unsigned long long) pd->stored_size, (unsigned long long) s->size);
		} else if (!known_kind(pd->kind) && (pd->flags & CDX_PART_FLAG_REQUIRED)) {
			rc = cdx_error(CDX_EVERSION,
			    "%s: part kind %u is required but unknown to this candex", path, pd->kind);
		} else if (pd->raw_size > SIZE_MAX / 2 || pd->raw_size / 256 > pd->stored_size) {
			/* lz4 never expands more than 255x: a larger claim is a
			 * lie that would only make read_part allocate huge. */
			rc = cdx_error(CDX_ECORRUPT, "%s: part %u raw size %llu", path, i,
			    (unsigned long long) pd->raw_size);
		}
		for (uint32_t j = 0; rc == CDX_OK && j < i; j++)
			if (s->info.parts[j].kind == pd->kind)
				rc = cdx_error(CDX_ECORRUPT, "%s: duplicate part kind %u", path, pd->kind);
	}
	if (rc != CDX_OK) {
		cdx_shard_close(s);
		return rc;
	}
	*sp = s;
	return CDX_OK;
}

void
cdx_shard_close(cdx_shard *s)
{
	if (s == NULL)
		return;
	close(s->fd);
	free(s->path);
	free(s);
}

const struct cdx_shard_info *
cdx_shard_info(const cdx_shard *s)
{
	return &s->info;
}

const char *
cdx_shard_path(const cdx_shard *s)
{
	return s->path;
}

uint64_t
cdx_shard_file_bytes(const cdx_shard *s)
{
	return s->size;
}

const struct cdx_part_desc *
cdx_shard_find_part(const cdx_shard *s, uint32_t kind)
{
	for (uint32_t i = 0; i < s->info.nparts; i++)
		if (s->info.parts[i].kind == kind)
			return &s->info.parts[i];
	return NULL;
}

int
cdx_shard_verify(const cdx_shard *s, uint64_t *file_xxh64)
{
	/* One pass over the file feeds the whole-file hash and, for the
	 * bytes that belong to a part, that part's hash. */
	cdx_xxh64_state whole, part[CDX_SHARD_MAX_PARTS];
	size_t chunk = (size_t) CDX_MIN((uint64_t) READ_CHUNK, s->size);
	uint8_t *buf = malloc(chunk);
	if (buf == NULL)
		return cdx_error(CDX_ENOMEM, "%s: verify buffer", s->path);
	cdx_xxh64_init(&whole, 0);
	for (uint32_t i = 0; i < s->info.nparts; i++)
		cdx_xxh64_init(&part[i], 0);
	int rc = CDX_OK;
	for (uint64_t off = 0; rc == CDX_OK && off < s->size;) {
		size_t n = (size_t) CDX_MIN((uint64_t) chunk, s->size - off);
		if ((rc = read_at(s, buf, n, off)) != CDX_OK)
			break;
		cdx_xxh64_update(&whole, buf, n);
		for (uint32_t i = 0; i < s->info.nparts; i++) {
			const struct cdx_part_desc *pd = &s->info.parts[i];
			uint64_t a = CDX_MAX(off, pd->offset),
			         b = CDX_MIN(off + n, pd->offset + pd->stored_size);
			if (a < b)
				cdx_xxh64_update(&part[i], buf + (a - off), (size_t) (b - a));
		}
		off += n;
	}
	free(buf);
	for (uint32_t i = 0; rc == CDX_OK && i < s->info.nparts; i++) {
		const struct cdx_part_desc *pd = &s->info.parts[i];
		uint64_t h = cdx_xxh64_digest(&part[i]);
		if (h != pd->xxh64)
			rc = cdx_error(CDX_ECORRUPT,
			    "%s: part %s checksum mismatch (stored %016llx, computed %016llx)", s->path,
			    cdx_part_name((int) pd->kind), (unsigned long long) pd->xxh64,
			    (unsigned long long) h);
	}
	if (rc == CDX_OK && file_xxh64 != NULL)
		*file_xxh64 = cdx_xxh64_digest(&whole);
	return rc;
}

static const struct cdx_part_desc *
need_part(const cdx_shard *s, uint32_t kind, int *rc)
{
	const struct cdx_part_desc *pd = cdx_shard_find_part(s, kind);
	*rc = pd ? CDX_OK : cdx_error(CDX_ENOTFOUND, "%s: no %s part", s->path, cdx_part_name((int) kind));
	return pd;
}

/* --- a part's stored bytes, read through a buffer -------------------- */

struct part_src {
	const cdx_shard *s;
	uint64_t off;    /* next file offset to read */
	uint64_t left;   /* stored bytes not read from the file yet */
	uint8_t *buf;    /* cap bytes */
	size_t cap;      /* READ_CHUNK, or less for a smaller part */
	size_t pos, len; /* buf[pos, len) is read but not consumed */
};

static int
src_init(struct part_src *src, const cdx_shard *s, const struct cdx_part_desc *pd)
{
	*src = (struct part_src) { .s = s, .off = pd->offset, .left = pd->stored_size };
	src->cap = (size_t) CDX_MAX(1, CDX_MIN((uint64_t) READ_CHUNK, pd->stored_size));
	if ((src->buf = malloc(src->cap)) == NULL)
		return cdx_error(CDX_ENOMEM, "%s: read buffer", s->path);
	return CDX_OK;
}

/* src_fill reads the next chunk once the buffer is consumed. */
static int
src_fill(struct part_src *src)
{
	if (src->pos < src->len || src->left == 0)
		return CDX_OK;
	size_t n = (size_t) CDX_MIN((uint64_t) src->cap, src->left);
	int rc = read_at(src->s, src->buf, n, src->off);
	if (rc != CDX_OK)
		return rc;
	src->off += n;
	src->left -= n;
	src->pos = 0;
	src->len = n;
	return CDX_OK;
}

static uint64_t
src_remaining(const struct part_src *src)
{
	return src->left + (src->len - src->pos);
}

/* alloc_part allocates a part's decompressed bytes (freed with free()).
 * Large parts get transparent huge pages where the kernel offers them
 * (madvise mode): first-touch faults on 4 KiB pages otherwise cost as much
 * as the decompression (1M x 128 fp16 refine store: 0.79 -> see
 * BENCHMARKS.md, bench_load). */
static uint8_t *
alloc_part(size_t raw)
{
	const size_t huge = (size_t) 2 << 20;
	if (raw < 4 * huge)
		return malloc(raw ? raw : 1);
	void *p = NULL;
	if (posix_memalign(&p, huge, raw) != 0)
		return NULL;
	madvise(p, raw / huge * huge, MADV_HUGEPAGE);
	return p;
}

int
cdx_shard_read_part(const cdx_shard *s, uint32_t kind, void **data, size_t *len)
{
	*data = NULL;
	*len = 0;
	int rc;
	const struct cdx_part_desc *pd = need_part(s, kind, &rc);
	if (pd == NULL)
		return rc;
	const char *pname = cdx_part_name((int) kind);
	size_t raw = (size_t) pd->raw_size;
	struct part_src src;
	if ((rc = src_init(&src, s, pd)) != CDX_OK)
		return rc;
	uint8_t *out = alloc_part(raw);
	if (out == NULL) {
		free(src.buf);
		return cdx_error(CDX_ENOMEM, "%s: part %s: %zu bytes", s->path, pname, raw);
	}
	LZ4F_dctx *dctx;
	size_t r = LZ4F_createDecompressionContext(&dctx, LZ4F_VERSION);
	if (LZ4F_isError(r)) {
		free(out);
		free(src.buf);
		return cdx_error(CDX_ENOMEM, "%s: lz4 context: %s", s->path, LZ4F_getErrorName(r));
	}
	size_t done = 0;
	for (;;) {
		if ((rc = src_fill(&src)) != CDX_OK)
			break;
		size_t dst = raw - done, sn = src.len - src.pos;
		/* A one-byte scratch past the declared size makes overlong
		 * content an error rather than a silent stop. */
		uint8_t spare;
		uint8_t *dp = dst ? out + done : &spare;
		if (dst == 0)
			dst = 1;
		r = LZ4F_decompress(dctx, dp, &dst, src.buf + src.pos, &sn, NULL);
		if (LZ4F_isError(r)) {
			rc = cdx_error(
			    CDX_ECORRUPT, "%s: part %s: lz4: %s", s->path, pname, LZ4F_getErrorName(r));
			break;
		}
		if (dp == &spare && dst > 0) {
			rc = cdx_error(CDX_ECORRUPT, "%s: part %s decompresses to more than %zu bytes",
			    s->path, pname, raw);
			break;
		}
		done += dp == &spare ? 0 : dst;
		src.pos += sn;
		if (r == 0)
			break; /* frame complete, content checksum verified */
		if (sn == 0 && dst == 0) {
			/* no progress: the frame ends early */
			rc = cdx_error(CDX_ECORRUPT, "%s: part %s: lz4 frame truncated", s->path, pname);
			break;
		}
	}
	LZ4F_freeDecompressionContext(dctx);
	uint64_t trailing = src_remaining(&src);
	free(src.buf);
	if (rc == CDX_OK && (done != raw || trailing != 0))
		rc = cdx_error(CDX_ECORRUPT,
		    "%s: part %s: %zu bytes decompressed, %zu expected, %llu trailing", s->path, pname, done,
		    raw, (unsigned long long) trailing);
	if (rc != CDX_OK) {
		free(out);
		return rc;
	}
	*data = out;
	*len = raw;
	return CDX_OK;
}

/* --- part streams ------------------------------------------------------ */

struct part_stream {
	struct part_src src;
	LZ4F_dctx *dctx;
	uint64_t pos; /* bytes handed out */
	uint64_t raw; /* declared raw size */
	int done;     /* frame finished and checked */
	int failed;   /* sticky: every later read fails */
};

static ssize_t
ps_fail(struct part_stream *ps)
{
	ps->failed = 1;
	errno = EIO;
	return -1;
}

/* ps_finish runs the frame to its end once all declared bytes are out, so
 * the read that hands out the last byte also checks the content checksum:
 * Faiss stops reading at its last field and would otherwise never reach
 * the checksum at the end of the frame. */
static int
ps_finish(struct part_stream *ps)
{
	for (;;) {
		if (src_fill(&ps->src) != CDX_OK)
			return -1;
		uint8_t spare;
		size_t one = 1, sn = ps->src.len - ps->src.pos;
		size_t r = LZ4F_decompress(ps->dctx, &spare, &one, ps->src.buf + ps->src.pos, &sn, NULL);
		if (LZ4F_isError(r) || one > 0)
			return -1; /* corrupt, or more content than declared */
		ps->src.pos += sn;
		if (r == 0) {
			ps->done = 1;
			return src_remaining(&ps->src) == 0 ? 0 : -1;
		}
		if (sn == 0)
			return -1; /* truncated */
	}
}

static ssize_t
ps_read(void *cookie, char *buf, size_t size)
{
	struct part_stream *ps = cookie;
	if (ps->failed)
		return ps_fail(ps);
	size_t got = 0;
	while (got < size && !ps->done) {
		if (src_fill(&ps->src) != CDX_OK)
			return ps_fail(ps); /* a read error, or the file shrank */
		size_t dst = size - got, sn = ps->src.len - ps->src.pos;
		size_t r = LZ4F_decompress(ps->dctx, buf + got, &dst, ps->src.buf + ps->src.pos, &sn, NULL);
		if (LZ4F_isError(r))
			return ps_fail(ps);
		ps->src.pos += sn;
		got += dst;
		ps->pos += dst;
		if (ps->pos > ps->raw)
			return ps_fail(ps);
		if (r == 0) {
			/* frame complete and content checksum verified */
			if (ps->pos != ps->raw || src_remaining(&ps->src) != 0)
				return ps_fail(ps);
			ps->done = 1;
		} else if (sn == 0 && dst == 0) {
			return ps_fail(ps); /* truncated frame: no progress possible */
		} else if (ps->pos == ps->raw && ps_finish(ps) != 0) {
			return ps_fail(ps);
		}
	}
	return (ssize_t) got;
}

/* Only the no-op seek that ftell() issues is supported. */
static int
ps_seek(void *cookie, off64_t *off, int whence)
{
	struct part_stream *ps = cookie;
	if ((whence == SEEK_CUR && *off == 0) || (whence == SEEK_SET && (uint64_t) *off == ps->pos)) {
		*off = (off64_t) ps->pos;
		return 0;
	}
	errno = ESPIPE;
	return -1;
}

static int
ps_close(void *cookie)
{
	struct part_stream *ps = cookie;
	LZ4F_freeDecompressionContext(ps->dctx);
	free(ps->src.buf);
	free(ps);
	return 0;
}

int
cdx_shard_open_part_stream(const cdx_shard *s, uint32_t kind, FILE **fp)
{
	*fp = NULL;
	int rc;
	const struct cdx_part_desc *pd = need_part(s, kind, &rc);
	if (pd == NULL)
		return rc;
	struct part_stream *ps = calloc(1, sizeof(*ps));
	if (ps == NULL)
		return cdx_error(CDX_ENOMEM, "%s: part stream", s->path);
	if ((rc = src_init(&ps->src, s, pd)) != CDX_OK) {
		free(ps);
		return rc;
	}
	size_t r = LZ4F_createDecompressionContext(&ps->dctx, LZ4F_VERSION);
	if (LZ4F_isError(r)) {
		free(ps->src.buf);
		free(ps);
		return cdx_error(CDX_ENOMEM, "%s: lz4 context: %s", s->path, LZ4F_getErrorName(r));
	}
	ps->raw = pd->raw_size;
	cookie_io_functions_t io = { .read = ps_read, .write = NULL, .seek = ps_seek, .close = ps_close };
	FILE *f = fopencookie(ps, "r", io);
	if (f == NULL) {
		rc = cdx_error_errno(CDX_ENOMEM, "%s: fopencookie", s->path);
		ps_close(ps);
		return rc;
	}
	/* Faiss reads many small headers between its big arrays; a larger
	 * buffer keeps those from becoming tiny LZ4F calls. */
	setvbuf(f, NULL, _IOFBF, 1u << 16);
	*fp = f;
	return CDX_OK;
}
