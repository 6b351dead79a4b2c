/* shard_test.c — shard files: multi-part round trips, part streams (with a
 * real Faiss index), every corruption case, the IDS/KEYS codecs, and a full
 * disk (tmpfs) when the test may mount one. */
#define _GNU_SOURCE
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <sys/stat.h>
#include <unistd.h>

#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/index_factory_c.h>
#include <faiss/c_api/index_io_c.h>

#include "shard/shard.h"

#define BIG_BYTES    ((size_t) 12 << 20) /* three 4 MB lz4 blocks */
#define UNKNOWN_KIND 200u

/* big_data: compressible but not trivial — 64-byte records drawn from 512
 * random templates with a few bytes changed each — so the frame really
 * spans several blocks and holds both literals and matches. */
static uint8_t *
big_data(size_t n, uint64_t seed)
{
	enum { REC = 64, NT = 512 }; /* 32 KB of templates: inside lz4's 64 KB window */
	uint8_t *p = malloc(n), *tpl = malloc((size_t) REC * NT);
	assert_non_null(p);
	cdx_rng r;
	cdx_rng_seed(&r, seed);
	for (size_t i = 0; i < (size_t) REC * NT; i++)
		tpl[i] = (uint8_t) cdx_rng_next(&r);
	for (size_t i = 0; i < n; i += REC) {
		uint64_t v = cdx_rng_next(&r);
		size_t take = CDX_MIN((size_t) REC, n - i);
		memcpy(p + i, tpl + (v % NT) * REC, take);
		p[i] = (uint8_t) (v >> 32);
		if (take > 40)
			p[i + 40] = (uint8_t) (v >> 40);
	}
	free(tpl);
	return p;
}

static struct cdx_shard_info
test_info(void)
{
	struct cdx_shard_info info;
	memset(&info, 0, sizeof(info));
	snprintf(info.collection, sizeof(info.collection), "tracks");
	info.metric = CDX_METRIC_IP;
	info.dim = 32;
	info.shard_index = 1;
	info.shard_count = 4;
	info.rows = 1000;
	return info;
}

struct fixture {
	char *dir;
	char *path;
	uint8_t *big;
	int64_t ids[1000];
	cdx_buf ids_enc;
	cdx_buf keys_enc;
};

/* write_test_shard writes FAISS (big, in odd-sized pieces), IDS, KEYS, an
 * empty REFINE part and an unknown optional part. */
static void
write_test_shard(struct fixture *f, const char *path)
{
	struct cdx_shard_info info = test_info(), out;
	cdx_shard_writer *w;
	assert_int_equal(cdx_shard_writer_open(&w, path, &info), CDX_OK);
	assert_int_equal(cdx_shard_writer_begin_part(w, CDX_PART_FAISS, CDX_PART_FLAG_REQUIRED), CDX_OK);
	size_t off = 0, step = 1;
	while (off < BIG_BYTES) {
		size_t n = CDX_MIN(step, BIG_BYTES - off);
		assert_int_equal(cdx_shard_writer_write(w, f->big + off, n), CDX_OK);
		off += n;
		step = step * 7 + 3;
	}
	assert_int_equal(cdx_shard_writer_end_part(w), CDX_OK);
	assert_int_equal(cdx_shard_writer_begin_part(w, CDX_PART_IDS, CDX_PART_FLAG_REQUIRED), CDX_OK);
	assert_int_equal(cdx_shard_writer_write(w, f->ids_enc.data, f->ids_enc.len), CDX_OK);
	assert_int_equal(cdx_shard_writer_end_part(w), CDX_OK);
	/* a second part of the same kind is refused */
	assert_int_equal(cdx_shard_writer_begin_part(w, CDX_PART_IDS, 0), CDX_EINVAL);
	assert_int_equal(cdx_shard_writer_begin_part(w, CDX_PART_KEYS, 0), CDX_OK);
	assert_int_equal(cdx_shard_writer_write(w, f->keys_enc.data, f->keys_enc.len), CDX_OK);
	assert_int_equal(cdx_shard_writer_end_part(w), CDX_OK);
	assert_int_equal(cdx_shard_writer_begin_part(w, CDX_PART_REFINE, 0), CDX_OK);
	assert_int_equal(cdx_shard_writer_end_part(w), CDX_OK);
	assert_int_equal(cdx_shard_writer_begin_part(w, UNKNOWN_KIND, 0), CDX_OK);
	assert_int_equal(cdx_shard_writer_write(w, "future", 6), CDX_OK);
	assert_int_equal(cdx_shard_writer_end_part(w), CDX_OK);
	assert_int_equal(cdx_shard_writer_commit(w, &out), CDX_OK);
	assert_int_equal(out.nparts, 5);
	assert_int_equal(out.parts[0].raw_size, BIG_BYTES);
	assert_true(out.parts[0].stored_size < BIG_BYTES);
	assert_int_equal(out.parts[0].offset, CDX_SHARD_HEADER_SIZE);
	assert_int_equal(out.parts[1].offset, out.parts[0].offset + out.parts[0].stored_size);
}

static int
setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	f->dir = tu_tmpdir("shard");
	f->path = tu_path(f->dir, "shard-001.cdx");
	f->big = big_data(BIG_BYTES, 7);
	for (int i = 0; i < 1000; i++)
		f->ids[i] = 1000000 + i * 3 - (i % 10 == 0 ? 5000 : 0);
	assert_int_equal(cdx_ids_encode(f->ids, 1000, &f->ids_enc), CDX_OK);
	for (int i = 0; i < 1000; i++) {
		char key[64];
		int n = snprintf(key, sizeof(key), "spotify:track:%08d", i * 17);
		assert_int_equal(cdx_keys_encode_one(key, (size_t) n, &f->keys_enc), CDX_OK);
	}
	write_test_shard(f, f->path);
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	struct fixture *f = *state;
	free(f->big);
	cdx_buf_fini(&f->ids_enc);
	cdx_buf_fini(&f->keys_enc);
	free(f->path);
	tu_rmdir(f->dir);
	free(f);
	return 0;
}

static char *
copy_shard(struct fixture *f, const char *name)
{
	char *dst = tu_path(f->dir, name);
	assert_int_equal(tu_run(NULL, "cp '%s' '%s'", f->path, dst), 0);
	return dst;
}

static void
patch_byte(const char *path, uint64_t off, uint8_t xor_mask)
{
	int fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	uint8_t b;
	assert_int_equal(pread(fd, &b, 1, (off_t) off), 1);
	b ^= xor_mask;
	assert_int_equal(pwrite(fd, &b, 1, (off_t) off), 1);
	close(fd);
}

/* rehash_header recomputes the header checksum after a deliberate edit. */
static void
rehash_header(const char *path)
{
	uint8_t hdr[CDX_SHARD_HEADER_SIZE];
	int fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, hdr, sizeof(hdr), 0), (ssize_t) sizeof(hdr));
	cdx_put_le64(hdr + CDX_SHARD_HDR_CHECKSUM_OFFSET, cdx_xxh64(hdr, CDX_SHARD_HDR_CHECKSUM_OFFSET, 0));
	assert_int_equal(pwrite(fd, hdr, sizeof(hdr), 0), (ssize_t) sizeof(hdr));
	close(fd);
}

static void
test_round_trip(void **state)
{
	struct fixture *f = *state;
	cdx_shard *s;
	assert_int_equal(cdx_shard_open(&s, f->path), CDX_OK);
	const struct cdx_shard_info *info = cdx_shard_info(s);
	assert_string_equal(info->collection, "tracks");
	assert_int_equal(info->format_version, CDX_SHARD_FORMAT_VERSION);
	assert_int_equal(info->metric, CDX_METRIC_IP);
	assert_int_equal(info->dim, 32);
	assert_int_equal(info->shard_index, 1);
	assert_int_equal(info->shard_count, 4);
	assert_int_equal(info->rows, 1000);
	assert_int_equal(info->nparts, 5);
	assert_string_equal(cdx_shard_path(s), f->path);
	uint64_t file_hash = 0;
	assert_int_equal(cdx_shard_verify(s, &file_hash), CDX_OK);
	char *whole;
	size_t wlen;
	assert_int_equal(cdx_read_file(f->path, &whole, &wlen), CDX_OK);
	assert_int_equal(cdx_shard_file_bytes(s), wlen);
	assert_true(file_hash == cdx_xxh64(whole, wlen, 0));
	free(whole);
	assert_non_null(cdx_shard_find_part(s, UNKNOWN_KIND));
	assert_null(cdx_shard_find_part(s, 77));

	void *data;
	size_t len;
	assert_int_equal(cdx_shard_read_part(s, CDX_PART_FAISS, &data, &len), CDX_OK);
	assert_int_equal(len, BIG_BYTES);
	assert_memory_equal(data, f->big, BIG_BYTES);
	free(data);

	assert_int_equal(cdx_shard_read_part(s, CDX_PART_IDS, &data, &len), CDX_OK);
	int64_t ids[1000];
	assert_int_equal(cdx_ids_decode(data, len, ids, 1000), CDX_OK);
	assert_memory_equal(ids, f->ids, sizeof(ids));
	free(data);

	assert_int_equal(cdx_shard_read_part(s, CDX_PART_KEYS, &data, &len), CDX_OK);
	char *strings;
	uint64_t *offsets;
	assert_int_equal(cdx_keys_decode(data, len, 1000, &strings, &offsets), CDX_OK);
	assert_string_equal(strings + offsets[0], "spotify:track:00000000");
	assert_string_equal(strings + offsets[999], "spotify:track:00016983");
	assert_int_equal(offsets[1000] - offsets[999] - 1, strlen("spotify:track:00016983"));
	free(strings);
	free(offsets);
	free(data);

	assert_int_equal(cdx_shard_read_part(s, CDX_PART_REFINE, &data, &len), CDX_OK);
	assert_int_equal(len, 0);
	free(data);
	assert_int_equal(cdx_shard_read_part(s, UNKNOWN_KIND, &data, &len), CDX_OK);
	assert_int_equal(len, 6);
	assert_memory_equal(data, "future", 6);
	free(data);
	assert_int_equal(cdx_shard_read_part(s, 77, &data, &len), CDX_ENOTFOUND);
	cdx_shard_close(s);
	cdx_shard_close(NULL);
}

static void
test_stream_equals_read_part(void **state)
{
	struct fixture *f = *state;
	cdx_shard *s;
	assert_int_equal(cdx_shard_open(&s, f->path), CDX_OK);
	FILE *fp;
	assert_int_equal(cdx_shard_open_part_stream(s, CDX_PART_FAISS, &fp), CDX_OK);
	uint8_t *got = malloc(BIG_BYTES + 16);
	size_t off = 0, step = 1;
	for (;;) {
		size_t n = fread(got + off, 1, CDX_MIN(step, BIG_BYTES + 16 - off), fp);
		off += n;
		if (n == 0)
			break;
		step = step * 5 + 1;
		if (off == 1)
			assert_int_equal(ftell(fp), 1);
	}
	assert_false(ferror(fp));
	assert_true(feof(fp));
	assert_int_equal(off, BIG_BYTES);
	assert_memory_equal(got, f->big, BIG_BYTES);
	assert_int_equal(fclose(fp), 0);
	free(got);
	assert_int_equal(cdx_shard_open_part_stream(s, 77, &fp), CDX_ENOTFOUND);
	assert_null(fp);
	cdx_shard_close(s);
}

static void
test_decompress_speed(void **state)
{
	struct fixture *f = *state;
	cdx_shard *s;
	assert_int_equal(cdx_shard_open(&s, f->path), CDX_OK);
	const int reps = 5;
	void *data;
	size_t len;
	uint64_t t0 = cdx_now_us();
	for (int i = 0; i < reps; i++) {
		assert_int_equal(cdx_shard_read_part(s, CDX_PART_FAISS, &data, &len), CDX_OK);
		free(data);
	}
	uint64_t t1 = cdx_now_us();
	uint8_t *buf = malloc(1 << 20);
	for (int i = 0; i < reps; i++) {
		FILE *fp;
		assert_int_equal(cdx_shard_open_part_stream(s, CDX_PART_FAISS, &fp), CDX_OK);
		while (fread(buf, 1, 1 << 20, fp) > 0) { }
		fclose(fp);
	}
	uint64_t t2 = cdx_now_us();
	uint64_t t3 = cdx_now_us();
	for (int i = 0; i < reps; i++)
		assert_int_equal(cdx_shard_verify(s, NULL), CDX_OK);
	uint64_t t4 = cdx_now_us();
	free(buf);
	double bytes = (double) BIG_BYTES * reps; /* bytes per microsecond / 1e3 = GB/s */
	const struct cdx_part_desc *pd = cdx_shard_find_part(s, CDX_PART_FAISS);
	print_message("decompress (lz4, content checksum): read_part %.2f GB/s, stream %.2f GB/s; "
	              "verify (xxh64 of stored) %.2f GB/s; ratio %.2f\n",
	    bytes / (double) (t1 - t0 + 1) / 1e3, bytes / (double) (t2 - t1 + 1) / 1e3,
	    (double) pd->stored_size * reps / 1e3 / (double) (t4 - t3 + 1),
	    (double) pd->stored_size / BIG_BYTES);
	cdx_shard_close(s);
}

static void
test_faiss_part(void **state)
{
	struct fixture *f = *state;
	enum { N = 2000, D = 16, K = 5 };
	float *x = malloc(sizeof(float) * N * D);
	tu_clustered(x, N, D, 20, 3);
	FaissIndex *idx;
	assert_int_equal(faiss_index_factory(&idx, D, "Flat", METRIC_L2), 0);
	assert_int_equal(faiss_Index_add(idx, N, x), 0);

	char *path = tu_path(f->dir, "faiss.cdx");
	struct cdx_shard_info info = test_info();
	info.dim = D;
	info.rows = N;
	cdx_shard_writer *w;
	FILE *fp;
	assert_int_equal(cdx_shard_writer_open(&w, path, &info), CDX_OK);
	assert_int_equal(
	    cdx_shard_writer_part_stream(w, CDX_PART_FAISS, CDX_PART_FLAG_REQUIRED, &fp), CDX_OK);
	assert_int_equal(faiss_write_index(idx, fp), 0);
	assert_int_equal(fclose(fp), 0);
	assert_int_equal(cdx_shard_writer_commit(w, NULL), CDX_OK);

	cdx_shard *s;
	assert_int_equal(cdx_shard_open(&s, path), CDX_OK);
	assert_int_equal(cdx_shard_open_part_stream(s, CDX_PART_FAISS, &fp), CDX_OK);
	FaissIndex *back;
	assert_int_equal(faiss_read_index(fp, 0, &back), 0);
	fclose(fp);
	assert_int_equal(faiss_Index_ntotal(back), N);
	float d1[K * 4], d2[K * 4];
	idx_t l1[K * 4], l2[K * 4];
	assert_int_equal(faiss_Index_search(idx, 4, x + 100 * D, K, d1, l1), 0);
	assert_int_equal(faiss_Index_search(back, 4, x + 100 * D, K, d2, l2), 0);
	assert_memory_equal(l1, l2, sizeof(l1));
	assert_memory_equal(d1, d2, sizeof(d1));
	const struct cdx_part_desc *pd = cdx_shard_find_part(s, CDX_PART_FAISS);
	uint64_t mid = pd->offset + pd->stored_size / 2, last = pd->offset + pd->stored_size - 1;
	cdx_shard_close(s);
	faiss_Index_free(back);

	/* A flipped byte anywhere in the frame (here: the middle, and the
	 * content checksum itself) makes faiss_read_index fail, not crash. */
	uint64_t spots[] = { mid, last };
	for (size_t i = 0; i < CDX_ARRAY_LEN(spots); i++) {
		patch_byte(path, spots[i], 0x40);
		assert_int_equal(cdx_shard_open(&s, path), CDX_OK);
		assert_int_equal(cdx_shard_verify(s, NULL), CDX_ECORRUPT);
		assert_int_equal(cdx_shard_open_part_stream(s, CDX_PART_FAISS, &fp), CDX_OK);
		back = NULL;
		assert_int_not_equal(faiss_read_index(fp, 0, &back), 0);
		assert_null(back);
		fclose(fp);
		cdx_shard_close(s);
		patch_byte(path, spots[i], 0x40);
	}
	faiss_Index_free(idx);
	free(x);
	free(path);
}

static void
test_corrupt_part(void **state)
{
	struct fixture *f = *state;
	char *path = copy_shard(f, "flip.cdx");
	cdx_shard *s;
	assert_int_equal(cdx_shard_open(&s, path), CDX_OK);
	const struct cdx_part_desc *pd = cdx_shard_find_part(s, CDX_PART_FAISS);
	uint64_t spot = pd->offset + pd->stored_size / 3;
	cdx_shard_close(s);
	patch_byte(path, spot, 0x01);

	assert_int_equal(cdx_shard_open(&s, path), CDX_OK); /* open reads only the header */
	assert_int_equal(cdx_shard_verify(s, NULL), CDX_ECORRUPT);
	assert_non_null(strstr(cdx_last_error(), path));
	assert_non_null(strstr(cdx_last_error(), "faiss"));
	void *data;
	size_t len;
	assert_int_equal(cdx_shard_read_part(s, CDX_PART_FAISS, &data, &len), CDX_ECORRUPT);
	assert_null(data);
	/* other parts are unaffected */
	assert_int_equal(cdx_shard_read_part(s, CDX_PART_IDS, &data, &len), CDX_OK);
	free(data);
	FILE *fp;
	assert_int_equal(cdx_shard_open_part_stream(s, CDX_PART_FAISS, &fp), CDX_OK);
	uint8_t *buf = malloc(1 << 20);
	size_t total = 0, n;
	while ((n = fread(buf, 1, 1 << 20, fp)) > 0)
		total += n;
	assert_true(ferror(fp));
	assert_true(total < BIG_BYTES);
	/* the failure is sticky */
	clearerr(fp);
	assert_int_equal(fread(buf, 1, 16, fp), 0);
	assert_true(ferror(fp));
	fclose(fp);
	free(buf);
	cdx_shard_close(s);
	free(path);
}

static void
test_truncated(void **state)
{
	struct fixture *f = *state;
	char *path = copy_shard(f, "trunc.cdx");
	struct stat st;
	assert_int_equal(stat(path, &st), 0);
	cdx_shard *s = (cdx_shard *) 1;
	/* cut inside the last part, then inside the header */
	off_t cuts[] = { st.st_size - 1, st.st_size / 2, CDX_SHARD_HEADER_SIZE, 100, 0 };
	for (size_t i = 0; i < CDX_ARRAY_LEN(cuts); i++) {
		assert_int_equal(truncate(path, cuts[i]), 0);
		assert_int_equal(cdx_shard_open(&s, path), CDX_ECORRUPT);
		assert_null(s);
		assert_non_null(strstr(cdx_last_error(), path));
	}
	free(path);
	assert_int_equal(cdx_shard_open(&s, "/nonexistent/shard.cdx"), CDX_ENOTFOUND);
}

static void
test_bad_header(void **state)
{
	struct fixture *f = *state;
	cdx_shard *s;
	char *path = copy_shard(f, "magic.cdx");
	patch_byte(path, 3, 0x20);
	assert_int_equal(cdx_shard_open(&s, path), CDX_ECORRUPT);
	assert_non_null(strstr(cdx_last_error(), "magic"));
	free(path);

	/* any header byte, including the padding, is covered by the checksum */
	uint64_t spots[]
	    = { 20, 96, CDX_SHARD_HDR_PARTS_OFFSET + 8, 2000, CDX_SHARD_HDR_CHECKSUM_OFFSET + 3 };
	for (size_t i = 0; i < CDX_ARRAY_LEN(spots); i++) {
		path = copy_shard(f, "sum.cdx");
		patch_byte(path, spots[i], 0x04);
		assert_int_equal(cdx_shard_open(&s, path), CDX_ECORRUPT);
		assert_non_null(strstr(cdx_last_error(), "checksum"));
		unlink(path);
		free(path);
	}

	/* a newer format: refused as a version problem, not as corruption */
	path = copy_shard(f, "newer.cdx");
	uint8_t v[4];
	cdx_put_le32(v, CDX_SHARD_FORMAT_VERSION + 1);
	int fd = open(path, O_RDWR);
	assert_int_equal(pwrite(fd, v, 4, CDX_SHARD_HDR_VERSION_OFFSET), 4);
	close(fd);
	rehash_header(path);
	assert_int_equal(cdx_shard_open(&s, path), CDX_EVERSION);
	free(path);

	uint8_t sz[8];
	/* a raw size lz4 could never reach (would make read_part allocate huge) */
	path = copy_shard(f, "rawlie.cdx");
	cdx_put_le64(sz, (uint64_t) 1 << 50);
	fd = open(path, O_RDWR);
	assert_int_equal(pwrite(fd, sz, 8, CDX_SHARD_HDR_PARTS_OFFSET + 24), 8); /* part 0 raw size */
	close(fd);
	rehash_header(path);
	assert_int_equal(cdx_shard_open(&s, path), CDX_ECORRUPT);
	free(path);

	/* part bounds beyond the file, with a valid checksum */
	path = copy_shard(f, "bounds.cdx");
	cdx_put_le64(sz, UINT64_MAX - 10);
	fd = open(path, O_RDWR);
	assert_int_equal(pwrite(fd, sz, 8, CDX_SHARD_HDR_PARTS_OFFSET + 16), 8); /* part 0 stored size */
	close(fd);
	rehash_header(path);
	assert_int_equal(cdx_shard_open(&s, path), CDX_ECORRUPT);
	free(path);
}

static void
test_required_unknown_part(void **state)
{
	struct fixture *f = *state;
	char *path = tu_path(f->dir, "required.cdx");
	struct cdx_shard_info info = test_info();
	cdx_shard_writer *w;
	assert_int_equal(cdx_shard_writer_open(&w, path, &info), CDX_OK);
	assert_int_equal(cdx_shard_writer_begin_part(w, UNKNOWN_KIND, CDX_PART_FLAG_REQUIRED), CDX_OK);
	assert_int_equal(cdx_shard_writer_write(w, "x", 1), CDX_OK);
	assert_int_equal(cdx_shard_writer_end_part(w), CDX_OK);
	assert_int_equal(cdx_shard_writer_commit(w, NULL), CDX_OK);
	cdx_shard *s;
	assert_int_equal(cdx_shard_open(&s, path), CDX_EVERSION);
	free(path);
}

/* read_everything reads every part both ways; each must succeed or fail
 * cleanly. Returns the number of parts that failed. */
static int
read_everything(const char *path)
{
	cdx_shard *s;
	int rc = cdx_shard_open(&s, path);
	if (rc != CDX_OK) {
		assert_true(rc == CDX_ECORRUPT || rc == CDX_EVERSION);
		return -1;
	}
	int failed = 0;
	const struct cdx_shard_info *info = cdx_shard_info(s);
	char buf[4096];
	for (uint32_t i = 0; i < info->nparts; i++) {
		void *data;
		size_t len;
		rc = cdx_shard_read_part(s, info->parts[i].kind, &data, &len);
		assert_true(rc == CDX_OK || rc == CDX_ECORRUPT);
		failed += rc != CDX_OK;
		free(data);
		FILE *fp;
		assert_int_equal(cdx_shard_open_part_stream(s, info->parts[i].kind, &fp), CDX_OK);
		size_t total = 0, n;
		while ((n = fread(buf, 1, sizeof(buf), fp)) > 0)
			total += n;
		/* the stream agrees with read_part */
		assert_int_equal(ferror(fp) != 0, rc != CDX_OK);
		if (rc == CDX_OK)
			assert_int_equal(total, len);
		fclose(fp);
	}
	cdx_shard_close(s);
	return failed;
}

/* Random single-byte damage anywhere in a small shard, with the header
 * checksum repaired half of the time so the damage reaches the part
 * table and the frames: never a crash, never a silent wrong read. */
static void
test_random_damage(void **state)
{
	struct fixture *f = *state;
	char *path = tu_path(f->dir, "small.cdx"), *work = tu_path(f->dir, "damaged.cdx");
	struct cdx_shard_info info = test_info();
	cdx_shard_writer *w;
	assert_int_equal(cdx_shard_writer_open(&w, path, &info), CDX_OK);
	assert_int_equal(cdx_shard_writer_begin_part(w, CDX_PART_FAISS, 0), CDX_OK);
	assert_int_equal(cdx_shard_writer_write(w, f->big, 20000), CDX_OK);
	assert_int_equal(cdx_shard_writer_end_part(w), CDX_OK);
	assert_int_equal(cdx_shard_writer_begin_part(w, CDX_PART_IDS, 0), CDX_OK);
	assert_int_equal(cdx_shard_writer_write(w, f->ids_enc.data, f->ids_enc.len), CDX_OK);
	assert_int_equal(cdx_shard_writer_end_part(w), CDX_OK);
	assert_int_equal(cdx_shard_writer_commit(w, NULL), CDX_OK);
	char *orig;
	size_t len;
	assert_int_equal(cdx_read_file(path, &orig, &len), CDX_OK);
	cdx_rng r;
	cdx_rng_seed(&r, 99);
	int opened_bad = 0, parts_bad = 0;
	for (int t = 0; t < 300; t++) {
		uint8_t *d = malloc(len);
		memcpy(d, orig, len);
		int in_header = t % 3 == 0;
		size_t at = in_header
		    ? (size_t) (cdx_rng_next(&r) % CDX_SHARD_HDR_CHECKSUM_OFFSET)
		    : CDX_SHARD_HEADER_SIZE + (size_t) (cdx_rng_next(&r) % (len - CDX_SHARD_HEADER_SIZE));
		d[at] ^= (uint8_t) (1u << (cdx_rng_next(&r) % 8));
		if (in_header && t % 2 == 0)
			cdx_put_le64(d + CDX_SHARD_HDR_CHECKSUM_OFFSET,
			    cdx_xxh64(d, CDX_SHARD_HDR_CHECKSUM_OFFSET, 0));
		unlink(work);
		int fd = open(work, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		assert_int_equal(write(fd, d, len), (ssize_t) len);
		close(fd);
		int bad = read_everything(work);
		if (bad < 0)
			opened_bad++;
		else
			parts_bad += bad;
		/* damage inside a frame is always caught by verify */
		if (!in_header) {
			cdx_shard *s;
			assert_int_equal(cdx_shard_open(&s, work), CDX_OK);
			assert_int_equal(cdx_shard_verify(s, NULL), CDX_ECORRUPT);
			cdx_shard_close(s);
		}
		free(d);
	}
	print_message("random damage: %d refused at open, %d part reads failed\n", opened_bad, parts_bad);
	assert_true(opened_bad > 0 && parts_bad > 0);
	free(orig);
	free(path);
	free(work);
}

/* The most compressible input (zeros) stays within the 256x bound open checks. */
static void
test_zeros_part(void **state)
{
	struct fixture *f = *state;
	char *path = tu_path(f->dir, "zeros.cdx");
	struct cdx_shard_info info = test_info();
	uint8_t *z = calloc(1, 9 << 20);
	cdx_shard_writer *w;
	assert_int_equal(cdx_shard_writer_open(&w, path, &info), CDX_OK);
	assert_int_equal(cdx_shard_writer_begin_part(w, CDX_PART_FAISS, 0), CDX_OK);
	assert_int_equal(cdx_shard_writer_write(w, z, 9 << 20), CDX_OK);
	assert_int_equal(cdx_shard_writer_end_part(w), CDX_OK);
	assert_int_equal(cdx_shard_writer_commit(w, NULL), CDX_OK);
	cdx_shard *s;
	assert_int_equal(cdx_shard_open(&s, path), CDX_OK);
	void *data;
	size_t len;
	assert_int_equal(cdx_shard_read_part(s, CDX_PART_FAISS, &data, &len), CDX_OK);
	assert_int_equal(len, 9 << 20);
	assert_memory_equal(data, z, len);
	print_message("9 MB of zeros stored in %llu bytes\n",
	    (unsigned long long) cdx_shard_find_part(s, CDX_PART_FAISS)->stored_size);
	free(data);
	cdx_shard_close(s);
	free(z);
	free(path);
}

static void
test_writer_misuse_and_abort(void **state)
{
	struct fixture *f = *state;
	struct cdx_shard_info info = test_info();
	cdx_shard_writer *w = (cdx_shard_writer *) 1;
	/* O_EXCL: never overwrite */
	assert_int_equal(cdx_shard_writer_open(&w, f->path, &info), CDX_EIO);
	assert_null(w);
	assert_non_null(strstr(cdx_last_error(), f->path));
	info.shard_index = 4;
	char *path = tu_path(f->dir, "aborted.cdx");
	assert_int_equal(cdx_shard_writer_open(&w, path, &info), CDX_EINVAL);
	info = test_info();
	assert_int_equal(cdx_shard_writer_open(&w, path, &info), CDX_OK);
	assert_int_equal(cdx_shard_writer_write(w, "x", 1), CDX_EINVAL);
	assert_int_equal(cdx_shard_writer_end_part(w), CDX_EINVAL);
	assert_int_equal(cdx_shard_writer_begin_part(w, CDX_PART_IDS, 0), CDX_OK);
	assert_int_equal(cdx_shard_writer_begin_part(w, CDX_PART_KEYS, 0), CDX_EINVAL);
	assert_int_equal(cdx_shard_writer_write(w, f->big, 5 << 20), CDX_OK);
	assert_int_equal(access(path, F_OK), 0);
	cdx_shard_writer_abort(w);
	assert_int_equal(access(path, F_OK), -1);
	cdx_shard_writer_abort(NULL);
	/* commit inside a part fails and leaves nothing */
	assert_int_equal(cdx_shard_writer_open(&w, path, &info), CDX_OK);
	assert_int_equal(cdx_shard_writer_begin_part(w, CDX_PART_IDS, 0), CDX_OK);
	assert_int_equal(cdx_shard_writer_commit(w, NULL), CDX_EINVAL);
	assert_int_equal(access(path, F_OK), -1);
	/* a crash before commit leaves a zero header, which readers refuse */
	assert_int_equal(cdx_shard_writer_open(&w, path, &info), CDX_OK);
	cdx_shard *s;
	assert_int_equal(cdx_shard_open(&s, path), CDX_ECORRUPT);
	cdx_shard_writer_abort(w);
	free(path);
}

static void
test_disk_full(void **state)
{
	struct fixture *f = *state;
	char *mnt = tu_path(f->dir, "tiny");
	assert_int_equal(mkdir(mnt, 0755), 0);
	if (mount("candex-test", mnt, "tmpfs", 0, "size=1m") != 0) {
		print_message(
		    "cannot mount a tmpfs here (%s): skipping the disk-full test\n", strerror(errno));
		rmdir(mnt);
		free(mnt);
		skip();
	}
	uint8_t *noise = malloc(6 << 20);
	cdx_rng r;
	cdx_rng_seed(&r, 11);
	for (size_t i = 0; i < (6 << 20) / 8; i++) {
		uint64_t v = cdx_rng_next(&r);
		memcpy(noise + i * 8, &v, 8);
	}
	struct cdx_shard_info info = test_info();
	char *path = tu_path(mnt, "shard-000.cdx");
	/* two ways to meet the full disk: by write/end_part (then abort), and
	 * with the error surfacing only at commit */
	for (int variant = 0; variant < 2; variant++) {
		cdx_shard_writer *w;
		assert_int_equal(cdx_shard_writer_open(&w, path, &info), CDX_OK);
		assert_int_equal(cdx_shard_writer_begin_part(w, CDX_PART_FAISS, 0), CDX_OK);
		int rc = CDX_OK;
		for (size_t off = 0; off < (6u << 20) && rc == CDX_OK; off += 1 << 20)
			rc = cdx_shard_writer_write(w, noise + off, 1 << 20);
		if (rc == CDX_OK)
			rc = cdx_shard_writer_end_part(w);
		assert_int_equal(rc, CDX_ENOSPC);
		assert_non_null(strstr(cdx_last_error(), path));
		/* sticky */
		assert_int_equal(cdx_shard_writer_begin_part(w, CDX_PART_IDS, 0), CDX_ENOSPC);
		if (variant == 0)
			cdx_shard_writer_abort(w);
		else
			assert_int_equal(cdx_shard_writer_commit(w, NULL), CDX_ENOSPC);
		assert_int_equal(access(path, F_OK), -1);
	}
	free(noise);
	free(path);
	assert_int_equal(umount2(mnt, MNT_DETACH), 0);
	rmdir(mnt);
	free(mnt);
}

/* The disk-full paths without privileges: a child process with a 1 MiB
 * RLIMIT_FSIZE (and SIGXFSZ ignored, as candex build does) meets EFBIG,
 * which the writer reports as CDX_ENOSPC naming the file, and abort
 * leaves no file behind. The child reports the first failed check. */
static int
fsize_child(const char *path)
{
	signal(SIGXFSZ, SIG_IGN);
	struct rlimit rl = { 1 << 20, 1 << 20 };
	if (setrlimit(RLIMIT_FSIZE, &rl) != 0)
		return 10;
	uint8_t *noise = malloc(4 << 20);
	cdx_rng r;
	cdx_rng_seed(&r, 12);
	for (size_t i = 0; i < (4u << 20) / 8; i++) {
		uint64_t v = cdx_rng_next(&r);
		memcpy(noise + i * 8, &v, 8);
	}
	struct cdx_shard_info info = test_info();
	cdx_shard_writer *w;
	if (cdx_shard_writer_open(&w, path, &info) != CDX_OK)
		return 11;
	if (cdx_shard_writer_begin_part(w, CDX_PART_REFINE, 0) != CDX_OK)
		return 12;
	int rc = CDX_OK;
	for (size_t off = 0; off < (4u << 20) && rc == CDX_OK; off += 1 << 18)
		rc = cdx_shard_writer_write(w, noise + off, 1 << 18);
	if (rc == CDX_OK)
		rc = cdx_shard_writer_end_part(w);
	free(noise);
	if (rc != CDX_ENOSPC)
		return 13;
	if (strstr(cdx_last_error(), path) == NULL || strstr(cdx_last_error(), "File too large") == NULL)
		return 14;
	if (cdx_shard_writer_commit(w, NULL) != CDX_ENOSPC) /* sticky, and commit unlinks */
		return 15;
	if (access(path, F_OK) == 0)
		return 16;
	return 0;
}

static void
test_file_size_limit(void **state)
{
	struct fixture *f = *state;
	char *path = tu_path(f->dir, "limited.cdx");
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		_exit(fsize_child(path));
	int status;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
	assert_int_equal(access(path, F_OK), -1);
	free(path);
}

/* --- codecs ------------------------------------------------------------- */

static void
test_ids_codec(void **state)
{
	(void) state;
	int64_t ids[] = { 0, 1, 2, 3, 1000, 999, -5, INT64_MAX, INT64_MIN, INT64_MIN, 0, 42, 43, 44 };
	size_t n = CDX_ARRAY_LEN(ids);
	cdx_buf b = { 0 };
	assert_int_equal(cdx_ids_encode(ids, n, &b), CDX_OK);
	int64_t back[CDX_ARRAY_LEN(ids)];
	assert_int_equal(cdx_ids_decode(b.data, b.len, back, n), CDX_OK);
	assert_memory_equal(back, ids, sizeof(ids));
	/* consecutive ids take one byte each */
	cdx_buf b2 = { 0 };
	int64_t seq[500];
	for (int i = 0; i < 500; i++)
		seq[i] = 7000000 + i;
	assert_int_equal(cdx_ids_encode(seq, 500, &b2), CDX_OK);
	assert_true(b2.len <= 499 + 4);
	cdx_buf_fini(&b2);

	/* malformed: truncated, trailing, too few bytes, too many rows */
	assert_int_equal(cdx_ids_decode(b.data, b.len - 1, back, n), CDX_ECORRUPT);
	assert_int_equal(cdx_ids_decode(b.data, b.len, back, n - 1), CDX_ECORRUPT);
	assert_int_equal(cdx_ids_decode(b.data, b.len, back, n + 1), CDX_ECORRUPT);
	assert_int_equal(cdx_ids_decode(NULL, 0, back, 0), CDX_OK);
	assert_int_equal(cdx_ids_decode(NULL, 0, back, 1), CDX_ECORRUPT);
	uint8_t overlong[11];
	memset(overlong, 0xff, sizeof(overlong));
	overlong[10] = 0x01;
	assert_int_equal(cdx_ids_decode(overlong, sizeof(overlong), back, 1), CDX_ECORRUPT);
	/* 10th byte carrying more than the 64th bit */
	uint8_t wide[10];
	memset(wide, 0xff, 9);
	wide[9] = 0x02;
	assert_int_equal(cdx_ids_decode(wide, sizeof(wide), back, 1), CDX_ECORRUPT);
	wide[9] = 0x01;
	assert_int_equal(cdx_ids_decode(wide, sizeof(wide), back, 1), CDX_OK);
	cdx_buf_fini(&b);

	/* random garbage never crashes and never reads past the end */
	cdx_rng r;
	cdx_rng_seed(&r, 5);
	for (int t = 0; t < 2000; t++) {
		size_t len = (size_t) (cdx_rng_next(&r) % 40);
		uint8_t *g = malloc(len ? len : 1);
		for (size_t i = 0; i < len; i++)
			g[i] = (uint8_t) cdx_rng_next(&r);
		int64_t out[40];
		int rc = cdx_ids_decode(g, len, out, (size_t) (cdx_rng_next(&r) % 40));
		assert_true(rc == CDX_OK || rc == CDX_ECORRUPT);
		free(g);
	}
}

static void
test_keys_codec(void **state)
{
	(void) state;
	char longkey[300];
	memset(longkey, 'k', sizeof(longkey) - 1);
	longkey[sizeof(longkey) - 1] = 0;
	const char *keys[] = { "a", "", "spotify:track:4uLU6hMCjMI75M1A2tKUQC", longkey, "ünïcode" };
	size_t n = CDX_ARRAY_LEN(keys);
	cdx_buf b = { 0 };
	for (size_t i = 0; i < n; i++)
		assert_int_equal(cdx_keys_encode_one(keys[i], strlen(keys[i]), &b), CDX_OK);
	assert_int_equal(cdx_keys_encode_one("a\0b", 3, &b), CDX_EINVAL);
	char *str;
	uint64_t *off;
	assert_int_equal(cdx_keys_decode(b.data, b.len, n, &str, &off), CDX_OK);
	for (size_t i = 0; i < n; i++) {
		assert_string_equal(str + off[i], keys[i]);
		assert_int_equal(off[i + 1] - off[i] - 1, strlen(keys[i]));
	}
	free(str);
	free(off);

	assert_int_equal(cdx_keys_decode(b.data, b.len - 1, n, &str, &off), CDX_ECORRUPT);
	assert_null(str);
	assert_null(off);
	assert_int_equal(cdx_keys_decode(b.data, b.len, n - 1, &str, &off), CDX_ECORRUPT);
	assert_int_equal(cdx_keys_decode(b.data, b.len, n + 1, &str, &off), CDX_ECORRUPT);
	assert_int_equal(cdx_keys_decode(b.data, b.len, (size_t) -1, &str, &off), CDX_ECORRUPT);
	uint8_t huge[] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 'x' };
	assert_int_equal(cdx_keys_decode(huge, sizeof(huge), 1, &str, &off), CDX_ECORRUPT);
	uint8_t nul[] = { 3, 'a', 0, 'b' };
	assert_int_equal(cdx_keys_decode(nul, sizeof(nul), 1, &str, &off), CDX_ECORRUPT);
	/* keys go out in protobuf strings: not UTF-8 is corrupt */
	uint8_t latin1[] = { 3, 'a', 0xe9, 'b' };
	assert_int_equal(cdx_keys_decode(latin1, sizeof(latin1), 1, &str, &off), CDX_ECORRUPT);
	assert_non_null(strstr(cdx_last_error(), "not valid UTF-8"));
	assert_int_equal(cdx_keys_decode(NULL, 0, 0, &str, &off), CDX_OK);
	assert_int_equal(off[0], 0);
	free(str);
	free(off);
	cdx_buf_fini(&b);
}

static void
test_names(void **state)
{
	(void) state;
	int v;
	assert_string_equal(cdx_metric_name(CDX_METRIC_COS), "cos");
	assert_int_equal(cdx_metric_parse("ip", &v), CDX_OK);
	assert_int_equal(v, CDX_METRIC_IP);
	assert_int_equal(cdx_metric_parse("cosine", &v), CDX_EINVAL);
	assert_string_equal(cdx_metric_name(9), "unknown");
	assert_string_equal(cdx_part_name(CDX_PART_KEYS), "keys");
	assert_string_equal(cdx_refine_name(CDX_REFINE_SQ8), "sq8");
	assert_int_equal(cdx_refine_parse("fp16", &v), CDX_OK);
	assert_int_equal(v, CDX_REFINE_FP16);
	assert_int_equal(cdx_refine_parse("int8", &v), CDX_EINVAL);
	assert_int_equal(cdx_refine_bytes_per_vector(CDX_REFINE_FP16, 10), 20);
	assert_int_equal(cdx_refine_bytes_per_vector(CDX_REFINE_NONE, 10), 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stream_equals_read_part, setup, teardown),
		cmocka_unit_test_setup_teardown(test_decompress_speed, setup, teardown),
		cmocka_unit_test_setup_teardown(test_faiss_part, setup, teardown),
		cmocka_unit_test_setup_teardown(test_corrupt_part, setup, teardown),
		cmocka_unit_test_setup_teardown(test_truncated, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_header, setup, teardown),
		cmocka_unit_test_setup_teardown(test_required_unknown_part, setup, teardown),
		cmocka_unit_test_setup_teardown(test_zeros_part, setup, teardown),
		cmocka_unit_test_setup_teardown(test_random_damage, setup, teardown),
		cmocka_unit_test_setup_teardown(test_writer_misuse_and_abort, setup, teardown),
		cmocka_unit_test_setup_teardown(test_disk_full, setup, teardown),
		cmocka_unit_test_setup_teardown(test_file_size_limit, setup, teardown),
		cmocka_unit_test(test_ids_codec),
		cmocka_unit_test(test_keys_codec),
		cmocka_unit_test(test_names),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
