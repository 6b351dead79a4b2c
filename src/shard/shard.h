/*
 * shard.h — the candex shard file and the version directory layout. This is
 * the only module that knows the on-disk format; docs/design.md describes it.
 *
 * DESIGN
 * A collection lives in DIR/<collection>/. Each build publishes a version
 * directory DIR/<collection>/<version>/ holding manifest.json and N shard
 * files, and then swaps the symlink DIR/<collection>/CURRENT -> <version>
 * atomically (rename(2) of a fresh symlink). Readers resolve CURRENT once
 * and then only read files that never change again.
 *
 * A shard file is self-contained:
 *
 *   [header: struct cdx_shard_disk_header, little-endian, 4096 bytes]
 *   [part 0: one LZ4 frame, content checksum on]
 *   [part 1 ...]
 *
 * The header holds magic, format version, collection, dim, metric, rows,
 * shard i of n, and a table of parts {kind, offset, stored bytes, raw bytes,
 * xxh64 of the stored bytes}, then an xxh64 of the header itself. Parts:
 *
 *   FAISS   the shard's Faiss index, as faiss_write_index() writes it. Its
 *           labels are shard-local row numbers 0..rows-1.
 *   IDS     rows x int64 external ids, delta + zigzag + LEB128 varint coded
 *           (ids are mostly increasing, so this is ~1-2 bytes a row).
 *   KEYS    rows string keys, each a LEB128 length + bytes (prefix-heavy
 *           "spotify:track:..." keys compress well under lz4).
 *   REFINE  a cdx_refine_disk_header then rows x dim values in fp32, fp16
 *           or sq8 (sq8: per-dimension min and scale, then uint8 codes).
 *   ATTRS   item attributes, one column each (attrs.h); optional.
 *
 * Unknown part kinds are skipped by readers (a flag marks parts a reader
 * must understand), so later formats can add parts (e.g. propensities,
 * takedown bitmaps) without breaking older servers.
 */
#ifndef CANDEX_SHARD_H
#define CANDEX_SHARD_H

#include <stdint.h>
#include <stdio.h>

#include "common/common.h"

#define CDX_SHARD_MAGIC          "CDXSHARD"
#define CDX_SHARD_FORMAT_VERSION 1
#define CDX_SHARD_HEADER_SIZE    4096
#define CDX_SHARD_MAX_PARTS      16
#define CDX_NAME_MAX             64 /* collection names, version names: [A-Za-z0-9_.-]{1,63} */

enum cdx_metric { CDX_METRIC_L2 = 0, CDX_METRIC_IP = 1, CDX_METRIC_COS = 2 };
const char *cdx_metric_name(int metric);             /* "l2" "ip" "cos" */
int cdx_metric_parse(const char *name, int *metric); /* CDX_EINVAL if unknown */
/* cdx_metric_higher_is_better: 1 for ip/cos (scores are similarities), 0 for l2. */
static inline int
cdx_metric_higher_is_better(int metric)
{
	return metric != CDX_METRIC_L2;
}

/* How item and query vectors are changed before Faiss sees them. */
enum cdx_transform {
	CDX_TRANSFORM_NONE = 0,
	/* inner product reduced to L2: items get one more coordinate
	 * sqrt(max_norm2 - |x|^2), queries a 0, so that |q - x|^2 =
	 * |q|^2 + max_norm2 - 2<q, x> orders items as <q, x> does */
	CDX_TRANSFORM_MIPS_L2 = 1,
};
const char *cdx_transform_name(int transform); /* "none" "mips-l2" */
int cdx_transform_parse(const char *name, int *transform);

enum cdx_part_kind {
	CDX_PART_FAISS = 1,
	CDX_PART_IDS = 2,
	CDX_PART_KEYS = 3,
	CDX_PART_REFINE = 4,
	CDX_PART_ATTRS = 5, /* item attributes for filters and crowding (attrs.h) */
};
#define CDX_PART_FLAG_REQUIRED 1u    /* a reader that does not know the kind must refuse */
const char *cdx_part_name(int kind); /* "faiss" "ids" "keys" "refine" "attrs" */

enum cdx_refine_kind { CDX_REFINE_NONE = 0, CDX_REFINE_FP32 = 1, CDX_REFINE_FP16 = 2, CDX_REFINE_SQ8 = 3 };
const char *cdx_refine_name(int kind); /* "none" "fp32" "fp16" "sq8" */
int cdx_refine_parse(const char *name, int *kind);
size_t cdx_refine_bytes_per_vector(int kind, uint32_t dim);

struct cdx_part_desc {
	uint32_t kind;
	uint32_t flags;
	uint64_t offset;      /* from the start of the file */
	uint64_t stored_size; /* bytes on disk (lz4 frame) */
	uint64_t raw_size;    /* bytes after decompression */
	uint64_t xxh64;       /* of the stored bytes */
};

struct cdx_shard_info {
	char collection[CDX_NAME_MAX];
	uint32_t format_version;
	uint32_t metric;
	uint32_t dim;
	uint32_t shard_index;
	uint32_t shard_count;
	uint64_t rows;
	uint32_t nparts;
	struct cdx_part_desc parts[CDX_SHARD_MAX_PARTS];
};

/* --- writing --------------------------------------------------------- */

typedef struct cdx_shard_writer cdx_shard_writer;

/* cdx_shard_writer_open creates path (O_EXCL) for a shard described by info
 * (parts/nparts ignored). On success *wp is set; finish with _commit or _abort. */
int cdx_shard_writer_open(cdx_shard_writer **wp, const char *path, const struct cdx_shard_info *info);
/* Parts are written one at a time, streaming through LZ4F: begin, write*, end. */
int cdx_shard_writer_begin_part(cdx_shard_writer *w, uint32_t kind, uint32_t flags);
int cdx_shard_writer_write(cdx_shard_writer *w, const void *data, size_t len);
int cdx_shard_writer_end_part(cdx_shard_writer *w);
/* cdx_shard_writer_part_stream begins a part and returns a write-only FILE*
 * feeding it (fopencookie), for faiss_write_index(). fclose() ends the part;
 * it returns EOF on failure, and the error code is then also returned by
 * every later writer call, including _commit. Do not use the writer until
 * the FILE* is closed. */
int cdx_shard_writer_part_stream(cdx_shard_writer *w, uint32_t kind, uint32_t flags, FILE **fp);
/* cdx_shard_writer_status is the writer's first error (CDX_OK if none);
 * its message was recorded with cdx_error() when it happened. */
int cdx_shard_writer_status(const cdx_shard_writer *w);
/* _commit writes the header, fsyncs and closes; *info_out (may be NULL) gets
 * the final header. The writer is freed whatever the result. */
int cdx_shard_writer_commit(cdx_shard_writer *w, struct cdx_shard_info *info_out);
/* _abort closes and unlinks the file. NULL is a no-op. */
void cdx_shard_writer_abort(cdx_shard_writer *w);

/* --- reading --------------------------------------------------------- */

/* A cdx_shard is immutable once open: several threads may read parts and
 * open part streams at once (each has its own decompression context). */
typedef struct cdx_shard cdx_shard;

/* cdx_shard_open opens path and validates the header (magic, version,
 * header checksum, part bounds within the file size). It does not read the
 * parts. The file is read with pread, never mapped: a file that shrinks
 * while it is read gives CDX_ECORRUPT, not SIGBUS. */
int cdx_shard_open(cdx_shard **sp, const char *path);
void cdx_shard_close(cdx_shard *s); /* NULL is a no-op */
const struct cdx_shard_info *cdx_shard_info(const cdx_shard *s);
const char *cdx_shard_path(const cdx_shard *s);
/* cdx_shard_file_bytes is the size of the file when it was opened: the
 * bytes a manifest records for a shard. */
uint64_t cdx_shard_file_bytes(const cdx_shard *s);
/* cdx_shard_find_part returns the part of that kind or NULL. */
const struct cdx_part_desc *cdx_shard_find_part(const cdx_shard *s, uint32_t kind);
/* cdx_shard_verify reads the whole file once and checks the xxh64 of every
 * part (not decompressing). *file_xxh64 (may be NULL) gets the xxh64 (seed
 * 0) of the whole file, which a manifest records for a shard. The bytes go
 * through a 1 MiB buffer, so checking a shard of many GB does not hold it
 * in our RSS. */
int cdx_shard_verify(const cdx_shard *s, uint64_t *file_xxh64);
/* cdx_shard_read_part decompresses a whole part into a malloc'd buffer the
 * caller frees; the lz4 content checksum is verified. */
int cdx_shard_read_part(const cdx_shard *s, uint32_t kind, void **data, size_t *len);
/* cdx_shard_open_part_stream returns a read-only FILE* that decompresses the
 * part on the fly (fopencookie), for faiss_read_index() without a second
 * in-memory copy. A checksum failure shows as a read error. fclose() it. */
int cdx_shard_open_part_stream(const cdx_shard *s, uint32_t kind, FILE **fp);

/* Codecs for the IDS and KEYS parts (used by the builder and the loader). */
int cdx_ids_encode(const int64_t *ids, size_t n, cdx_buf *out);
int cdx_ids_decode(const void *data, size_t len, int64_t *ids, size_t n);
int cdx_keys_encode_one(const char *key, size_t keylen, cdx_buf *out);
/* cdx_keys_decode fills offsets[n+1] so key i is data[offsets[i] .. offsets[i+1]),
 * with the length prefixes stripped into a packed string area strings (malloc'd,
 * each key NUL-terminated; offsets index into it, so key i is the C string
 * strings + offsets[i] of length offsets[i+1] - offsets[i] - 1). Both are
 * malloc'd and the caller frees them. Keys never contain NUL bytes. */
int cdx_keys_decode(const void *data, size_t len, size_t n, char **strings, uint64_t **offsets);

/* --- the header as stored ---------------------------------------------
 * Byte offsets in the 4096-byte header (all integers little-endian):
 *     0  char[8]  magic "CDXSHARD"
 *     8  u32      format version
 *    12  u32      header size (4096)
 *    16  char[64] collection, NUL-padded
 *    80  u32      metric        84  u32 dim
 *    88  u32      shard index   92  u32 shard count
 *    96  u64      rows
 *   104  u32      nparts       108  u32 reserved (0)
 *   112  part table: CDX_SHARD_MAX_PARTS x 48 bytes
 *        {u32 kind, u32 flags, u64 offset, u64 stored, u64 raw, u64 xxh64, u64 reserved}
 *   ...  zero
 *  4088  u64      xxh64 (seed 0) of bytes [0, 4088)
 * A reader refuses a newer format version (CDX_EVERSION) before checking
 * the checksum, since a later format may place it elsewhere. */
#define CDX_SHARD_HDR_VERSION_OFFSET  8
#define CDX_SHARD_HDR_PARTS_OFFSET    112
#define CDX_SHARD_HDR_PART_SIZE       48
#define CDX_SHARD_HDR_CHECKSUM_OFFSET (CDX_SHARD_HEADER_SIZE - 8)
#define CDX_SHARD_LZ4_BLOCK_BYTES     (4u << 20)

/* cdx_shard_header_encode serialises info (nparts and parts included) into
 * out, checksum included. CDX_EINVAL if info does not fit the format. */
int cdx_shard_header_encode(const struct cdx_shard_info *info, uint8_t out[CDX_SHARD_HEADER_SIZE]);
/* cdx_shard_header_decode validates and parses a header (magic, version,
 * checksum, field ranges; not part bounds). path only names the file in
 * error messages. */
int cdx_shard_header_decode(const uint8_t *buf, struct cdx_shard_info *info, const char *path);

/* Little-endian helpers shared by the codecs. */
static inline void
cdx_put_le32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t) (v >> (8 * i));
}
static inline void
cdx_put_le64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t) (v >> (8 * i));
}
static inline uint32_t
cdx_get_le32(const uint8_t *p)
{
	return (uint32_t) p[0] | (uint32_t) p[1] << 8 | (uint32_t) p[2] << 16 | (uint32_t) p[3] << 24;
}
static inline uint64_t
cdx_get_le64(const uint8_t *p)
{
	return (uint64_t) cdx_get_le32(p) | (uint64_t) cdx_get_le32(p + 4) << 32;
}

#endif
