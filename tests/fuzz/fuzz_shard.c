/*
 * fuzz_shard.c — libFuzzer target: the bytes of a shard file -> the shard
 * loader, as `candex serve` runs it short of Faiss: open (header, part
 * table), verify (part and whole-file checksums), decompress every part,
 * decode ids and keys and parse the refine store, and read the FAISS part
 * through its FILE* stream to the end.
 *
 * The first byte chooses a mode. Odd: the header's part checksums and its
 * own checksum are recomputed before the file is written, so that mutations
 * get past verification into the decompressors and codecs (a damaged file
 * never does: its checksums do not match). Even: the bytes as they are.
 * faiss_read_index itself is not fuzzed: Faiss does not claim to survive
 * hostile index files, and candex only hands it a part whose checksums
 * matched (docs/security.md).
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "shard/refine.h"
#include "shard/shard.h"

#define CHECK(cond)                       \
	do {                              \
		if (!(cond))              \
			__builtin_trap(); \
	} while (0)

static int fd = -1;
static char path[64];

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	fd = memfd_create("fuzz-shard", MFD_CLOEXEC);
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	return fd < 0 ? -1 : 0;
}

/* fix_checksums makes the part table's xxh64s and the header checksum
 * match the bytes, where the table's bounds allow. */
static void
fix_checksums(uint8_t *f, size_t size)
{
	uint32_t nparts = cdx_get_le32(f + 104);
	for (uint32_t i = 0; i < nparts && i < CDX_SHARD_MAX_PARTS; i++) {
		uint8_t *e = f + CDX_SHARD_HDR_PARTS_OFFSET + i * CDX_SHARD_HDR_PART_SIZE;
		uint64_t off = cdx_get_le64(e + 8), stored = cdx_get_le64(e + 16);
		if (off <= size && stored <= size - off)
			cdx_put_le64(e + 32, cdx_xxh64(f + off, (size_t) stored, 0));
	}
	cdx_put_le64(f + CDX_SHARD_HDR_CHECKSUM_OFFSET, cdx_xxh64(f, CDX_SHARD_HDR_CHECKSUM_OFFSET, 0));
}

static void
read_parts(const cdx_shard *s)
{
	const struct cdx_shard_info *info = cdx_shard_info(s);
	void *data;
	size_t len;
	if (cdx_shard_read_part(s, CDX_PART_IDS, &data, &len) == CDX_OK) {
		/* every id takes at least a byte: larger claims are refused first */
		if (info->rows <= len) {
			int64_t *ids = malloc((size_t) info->rows * sizeof(int64_t) + 1);
			CHECK(ids != NULL);
			cdx_ids_decode(data, len, ids, (size_t) info->rows);
			free(ids);
		}
		free(data);
	}
	if (cdx_shard_read_part(s, CDX_PART_KEYS, &data, &len) == CDX_OK) {
		char *strings = NULL;
		uint64_t *offsets = NULL;
		if (cdx_keys_decode(data, len, (size_t) info->rows, &strings, &offsets) == CDX_OK) {
			for (uint64_t r = 0; r < info->rows; r++) {
				const char *k = strings + offsets[r];
				CHECK(strlen(k) == offsets[r + 1] - offsets[r] - 1
				    && cdx_utf8_valid(k, strlen(k)));
			}
		}
		free(strings);
		free(offsets);
		free(data);
	}
	if (cdx_shard_read_part(s, CDX_PART_REFINE, &data, &len) == CDX_OK) {
		struct cdx_refine_store st;
		if (cdx_refine_store_parse(&st, data, len, info->rows, info->dim) == CDX_OK && info->rows > 0
		    && info->dim <= 4096) {
			float v[4096];
			cdx_refine_decode(&st, 0, v);
			cdx_refine_decode(&st, info->rows - 1, v);
		}
		free(data);
	}
	FILE *f = NULL;
	if (cdx_shard_open_part_stream(s, CDX_PART_FAISS, &f) == CDX_OK) {
		char buf[4096];
		while (fread(buf, 1, sizeof(buf), f) == sizeof(buf))
			;
		fclose(f);
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	int fix = data[0] & 1;
	size--;
	data++;
	uint8_t *file = malloc(size ? size : 1);
	CHECK(file != NULL);
	memcpy(file, data, size);
	if (fix && size >= CDX_SHARD_HEADER_SIZE)
		fix_checksums(file, size);
	CHECK(ftruncate(fd, 0) == 0);
	CHECK(pwrite(fd, file, size, 0) == (ssize_t) size);
	free(file);

	cdx_shard *s = NULL;
	if (cdx_shard_open(&s, path) != CDX_OK) {
		CHECK(s == NULL);
		return 0;
	}
	uint64_t h;
	if (cdx_shard_verify(s, &h) == CDX_OK) {
		CHECK(h == cdx_xxh64(data, size, 0) || fix);
		read_parts(s);
	}
	cdx_shard_close(s);
	return 0;
}
