/*
 * shard_read.c — opening, verifying and decompressing shard files.
 *
 * The whole file is mapped read-only; parts are decompressed from the map,
 * either fully (read_part) or incrementally behind a FILE* (part streams,
 * for faiss_read_index). Every size read from the file is checked against
 * the file size before use, so a truncated or corrupt file yields
 * CDX_ECORRUPT, never an out-of-bounds read.
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

struct cdx_shard {
	char *path;
	const uint8_t *map;
	size_t size;
	struct cdx_shard_info info;
};

static int
known_kind(uint32_t kind)
{
	return kind >= CDX_PART_FAISS && kind <= CDX_PART_ATTRS;
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
	void *map = mmap(NULL, (size_t) st.st_size, PROT_READ, MAP_SHARED, fd, 0);
	int saved = errno;
	close(fd);
	if (map == MAP_FAILED) {
		errno = saved;
		return cdx_error_errno(CDX_EIO, "mmap %s", path);
	}
	cdx_shard *s = calloc(1, sizeof(*s));
	if (s == NULL || (s->path = strdup(path)) == NULL) {
		free(s);
		munmap(map, (size_t) st.st_size);
		return cdx_error(CDX_ENOMEM, "opening %s", path);
	}
	s->map = map;
	s->size = (size_t) st.st_size;
	int rc = cdx_shard_header_decode(s->map, &s->info, path);
	for (uint32_t i = 0; rc == CDX_OK && i < s->info.nparts; i++) {
		const struct cdx_part_desc *pd = &s->info.parts[i];
		if (pd->offset < CDX_SHARD_HEADER_SIZE || pd->offset > s->size
		    || pd->stored_size > s->size - pd->offset) {
			rc = cdx_error(CDX_ECORRUPT,
			    "%s: truncated or corrupt: part %u (%s) spans bytes %llu..+%llu but the file has "
			    "%zu",
			    path, i, cdx_part_name((int) pd->kind), (unsigned long long) pd->offset,
			    (unsigned long long) pd->stored_size, s->size);
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
	if (s->map != NULL)
		munmap((void *) s->map, s->size);
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

uint64_t
cdx_shard_file_xxh64(const cdx_shard *s)
{
	return cdx_xxh64(s->map, s->size, 0);
}

const struct cdx_part_desc *
cdx_shard_find_part(const cdx_shard *s, uint32_t kind)
{
	for (uint32_t i = 0; i < s->info.nparts; i++)
		if (s->info.parts[i].kind == kind)
			return &s->info.parts[i];
	return NULL;
}

#define VERIFY_STEP ((size_t) 1 << 20) /* mapped pages held at a time */

/* part_xxh64 hashes a part; with release, in steps whose pages are dropped
 * from this mapping once hashed (the page cache keeps them). */
static uint64_t
part_xxh64(const cdx_shard *s, const struct cdx_part_desc *pd, int release)
{
	if (!release)
		return cdx_xxh64(s->map + pd->offset, (size_t) pd->stored_size, 0);
	size_t page = (size_t) sysconf(_SC_PAGESIZE);
	cdx_xxh64_state st;
	cdx_xxh64_init(&st, 0);
	for (uint64_t off = 0; off < pd->stored_size; off += VERIFY_STEP) {
		size_t n = (size_t) CDX_MIN((uint64_t) VERIFY_STEP, pd->stored_size - off);
		const uint8_t *p = s->map + pd->offset + off;
		cdx_xxh64_update(&st, p, n);
		uintptr_t a = (uintptr_t) p - (uintptr_t) p % page, b = (uintptr_t) (p + n);
		b -= b % page;
		if (b > a)
			madvise((void *) a, b - a, MADV_DONTNEED);
	}
	return cdx_xxh64_digest(&st);
}

static int
verify(const cdx_shard *s, int release)
{
	for (uint32_t i = 0; i < s->info.nparts; i++) {
		const struct cdx_part_desc *pd = &s->info.parts[i];
		uint64_t h = part_xxh64(s, pd, release);
		if (h != pd->xxh64)
			return cdx_error(CDX_ECORRUPT,
			    "%s: part %s checksum mismatch (stored %016llx, computed %016llx)", s->path,
			    cdx_part_name((int) pd->kind), (unsigned long long) pd->xxh64,
			    (unsigned long long) h);
	}
	return CDX_OK;
}

int
cdx_shard_verify(const cdx_shard *s)
{
	return verify(s, 0);
}

int
cdx_shard_verify_release(const cdx_shard *s)
{
	return verify(s, 1);
}

static const struct cdx_part_desc *
need_part(const cdx_shard *s, uint32_t kind, int *rc)
{
	const struct cdx_part_desc *pd = cdx_shard_find_part(s, kind);
	*rc = pd ? CDX_OK : cdx_error(CDX_ENOTFOUND, "%s: no %s part", s->path, cdx_part_name((int) kind));
	return pd;
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
	uint8_t *out = alloc_part(raw);
	if (out == NULL)
		return cdx_error(CDX_ENOMEM, "%s: part %s: %zu bytes", s->path, pname, raw);
	LZ4F_dctx *dctx;
	size_t r = LZ4F_createDecompressionContext(&dctx, LZ4F_VERSION);
	if (LZ4F_isError(r)) {
		free(out);
		return cdx_error(CDX_ENOMEM, "%s: lz4 context: %s", s->path, LZ4F_getErrorName(r));
	}
	const uint8_t *src = s->map + pd->offset;
	size_t srcleft = (size_t) pd->stored_size, done = 0;
	rc = CDX_OK;
	for (;;) {
		size_t dst = raw - done, sn = srcleft;
		/* A one-byte scratch past the declared size makes overlong
		 * content an error rather than a silent stop. */
		uint8_t spare;
		uint8_t *dp = dst ? out + done : &spare;
		if (dst == 0)
			dst = 1;
		r = LZ4F_decompress(dctx, dp, &dst, src, &sn, NULL);
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
		src += sn;
		srcleft -= sn;
		if (r == 0)
			break; /* frame complete, content checksum verified */
		if (sn == 0 && dst == 0) {
			/* no progress: the frame ends early */
			rc = cdx_error(CDX_ECORRUPT, "%s: part %s: lz4 frame truncated", s->path, pname);
			break;
		}
	}
	LZ4F_freeDecompressionContext(dctx);
	if (rc == CDX_OK && (done != raw || srcleft != 0))
		rc = cdx_error(CDX_ECORRUPT,
		    "%s: part %s: %zu bytes decompressed, %zu expected, %zu trailing", s->path, pname, done,
		    raw, srcleft);
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
	const cdx_shard *s;
	LZ4F_dctx *dctx;
	const uint8_t *src;
	size_t srcleft;
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
		uint8_t spare;
		size_t one = 1, sn = ps->srcleft;
		size_t r = LZ4F_decompress(ps->dctx, &spare, &one, ps->src, &sn, NULL);
		if (LZ4F_isError(r) || one > 0)
			return -1; /* corrupt, or more content than declared */
		ps->src += sn;
		ps->srcleft -= sn;
		if (r == 0) {
			ps->done = 1;
			return ps->srcleft == 0 ? 0 : -1;
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
		size_t dst = size - got, sn = ps->srcleft;
		size_t r = LZ4F_decompress(ps->dctx, buf + got, &dst, ps->src, &sn, NULL);
		if (LZ4F_isError(r))
			return ps_fail(ps);
		ps->src += sn;
		ps->srcleft -= sn;
		got += dst;
		ps->pos += dst;
		if (ps->pos > ps->raw)
			return ps_fail(ps);
		if (r == 0) {
			/* frame complete and content checksum verified */
			if (ps->pos != ps->raw || ps->srcleft != 0)
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
	size_t r = LZ4F_createDecompressionContext(&ps->dctx, LZ4F_VERSION);
	if (LZ4F_isError(r)) {
		free(ps);
		return cdx_error(CDX_ENOMEM, "%s: lz4 context: %s", s->path, LZ4F_getErrorName(r));
	}
	ps->s = s;
	ps->src = s->map + pd->offset;
	ps->srcleft = (size_t) pd->stored_size;
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
