/*
 * encode.c — the encode step: one pass over the input for one shard.
 *
 * The whole input is streamed (every row validated and fingerprinted, so
 * every shard job checks the same input), and the rows whose id maps to
 * this shard are compacted in place, written to the REFINE part as they
 * come and added to the shard's copy of the trained index. Faiss labels
 * are therefore shard-local row numbers in input order. After the pass the
 * index is serialised straight into the FAISS part through a stdio cookie
 * stream (no temporary file, no second in-memory copy), then the IDS and
 * KEYS parts follow. Part order in the file does not matter to readers.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <faiss/c_api/clone_index_c.h>
#include <faiss/c_api/index_io_c.h>

#include "builder/build.h"
#include "faissx/faissx.h"
#include "shard/refine.h"
#include "faissx/error.h"
#include "shard/transform.h"

#define KEYS_FLUSH_BYTES (1u << 20)

/* write_faiss_part serialises the index into the FAISS part, through the
 * shard writer's part stream. */
static int
write_faiss_part(cdx_shard_writer *w, const FaissIndex *index, const char *path)
{
	FILE *f = NULL;
	int rc = cdx_shard_writer_part_stream(w, CDX_PART_FAISS, CDX_PART_FLAG_REQUIRED, &f);
	if (rc != CDX_OK)
		return rc;
	/* a failed write (a full disk) makes Faiss fail too: the writer's
	 * error, recorded first, is the one that explains it */
	if (faiss_write_index(index, f) != 0 && cdx_shard_writer_status(w) == CDX_OK)
		rc = cdx_error_faiss(path);
	if (fclose(f) != 0 && rc == CDX_OK)
		rc = cdx_shard_writer_status(w) != CDX_OK ? cdx_shard_writer_status(w)
		                                          : cdx_error_errno(CDX_EIO, "%s: faiss part", path);
	if (rc == CDX_OK)
		rc = cdx_shard_writer_status(w);
	return rc;
}

static int
write_keys_part(cdx_shard_writer *w, const struct cdx_build_plan *p, const int64_t *ids, uint32_t shard)
{
	cdx_keys_reader *kr = NULL;
	int rc = cdx_keys_reader_open(&kr, p->keys);
	if (rc != CDX_OK)
		return rc;
	cdx_buf buf = { 0 };
	if ((rc = cdx_shard_writer_begin_part(w, CDX_PART_KEYS, 0)) != CDX_OK)
		goto done;
	for (uint64_t r = 0; r < p->rows; r++) {
		const char *key;
		size_t len;
		if ((rc = cdx_keys_reader_next(kr, &key, &len)) != CDX_OK)
			goto done;
		int64_t id = ids ? ids[r] : (int64_t) r;
		if (cdx_build_shard_of(id, p->nshards) != shard)
			continue;
		if ((rc = cdx_keys_encode_one(key, len, &buf)) != CDX_OK)
			goto done;
		if (buf.len >= KEYS_FLUSH_BYTES) {
			if ((rc = cdx_shard_writer_write(w, buf.data, buf.len)) != CDX_OK)
				goto done;
			buf.len = 0;
		}
	}
	if (buf.len > 0 && (rc = cdx_shard_writer_write(w, buf.data, buf.len)) != CDX_OK)
		goto done;
	rc = cdx_shard_writer_end_part(w);
done:
	cdx_buf_fini(&buf);
	cdx_keys_reader_close(kr);
	return rc;
}

struct shard_rows {
	const int64_t *ids; /* NULL = row numbers */
	uint32_t shard, nshards;
};

static int
in_shard(uint64_t row, const void *ctx)
{
	const struct shard_rows *sr = ctx;
	return cdx_build_shard_of(sr->ids ? sr->ids[row] : (int64_t) row, sr->nshards) == sr->shard;
}

/* write_attrs_part writes the ATTRS part: this shard's rows of the
 * attributes file, as columns (shard/attrs.h). */
static int
write_attrs_part(
    cdx_shard_writer *w, const struct cdx_build_plan *p, const int64_t *ids, uint32_t shard, uint64_t nrows)
{
	void *cols[CDX_ATTR_MAX_COLUMNS];
	const struct cdx_attr_schema *s = p->attrs_schema;
	struct shard_rows sr = { ids, shard, p->nshards };
	int rc = cdx_attrs_read_rows(p->attrs, s, p->rows, in_shard, &sr, nrows, cols);
	if (rc != CDX_OK)
		return rc;
	cdx_buf buf = { 0 };
	if ((rc = cdx_attr_part_encode(s, nrows, (const void *const *) cols, &buf)) == CDX_OK
	    && (rc = cdx_shard_writer_begin_part(w, CDX_PART_ATTRS, 0)) == CDX_OK
	    && (rc = cdx_shard_writer_write(w, buf.data, buf.len)) == CDX_OK)
		rc = cdx_shard_writer_end_part(w);
	cdx_buf_fini(&buf);
	for (uint32_t c = 0; c < s->ncols; c++)
		free(cols[c]);
	return rc;
}

size_t
cdx_build_chunk_bytes(void)
{
	const char *env = getenv("CANDEX_BUILD_CHUNK_BYTES");
	if (env == NULL || *env == 0)
		return CDX_BUILD_CHUNK_BYTES;
	char *end;
	errno = 0;
	unsigned long long v = strtoull(env, &end, 10);
	if (errno != 0 || *end != 0 || v < 4096 || v > ((unsigned long long) 1 << 40)) {
		cdx_warn("BLD-CHUNK", "CANDEX_BUILD_CHUNK_BYTES='%s' ignored (4096 .. 2^40 bytes)", env);
		return CDX_BUILD_CHUNK_BYTES;
	}
	return (size_t) v;
}

int
cdx_build_encode_shard(struct cdx_build_plan *p, uint32_t shard, const char *dir, const char *input_override,
    int consume, int quiet, struct cdx_encode_result *res)
{
	memset(res, 0, sizeof(*res));
	res->shard = shard;
	if (shard >= p->nshards)
		return cdx_error(CDX_EINVAL, "shard %u of %u does not exist", shard, p->nshards);
	const char *input = input_override ? input_override : p->input;
	uint64_t t0 = cdx_now_us();
	cdx_input *in = NULL;
	int64_t *ids = NULL, *shard_ids = NULL;
	FaissIndex *index = NULL;
	cdx_shard_writer *w = NULL;
	float *chunk = NULL, *mapped = NULL;
	uint8_t *rbuf = NULL;
	cdx_buf hdr = { 0 };
	char name[CDX_NAME_MAX], path[PATH_MAX];
	int rc;

	cdx_build_shard_name(name, shard, p->nshards);
	if (snprintf(path, sizeof(path), "%s/%s", dir, name) >= (int) sizeof(path))
		return cdx_error(CDX_EINVAL, "path too long: %s", dir);
	/* dim and dtype from the file itself (raw float32 has none), so that
	 * another dimension or dtype reads as what it is: a different input */
	int raw = p->input_format == CDX_INPUT_RAW_F32;
	if ((rc = cdx_input_open(&in, input, raw ? p->dim : 0, cdx_input_format_family(p->input_format)))
	    != CDX_OK)
		goto fail;
	if (cdx_input_rows(in) != p->rows || cdx_input_dim(in) != p->dim
	    || cdx_input_file_bytes(in) != p->input_bytes || cdx_input_format(in) != p->input_format) {
		rc = cdx_error(CDX_EDIM,
		    "%s: %llu rows of dimension %u (%llu bytes, %s), but the trained plan has %llu rows of "
		    "dimension %u (%llu bytes, %s): the input changed since training",
		    input, (unsigned long long) cdx_input_rows(in), cdx_input_dim(in),
		    (unsigned long long) cdx_input_file_bytes(in),
		    cdx_input_format_name(cdx_input_format(in)), (unsigned long long) p->rows, p->dim,
		    (unsigned long long) p->input_bytes, cdx_input_format_name(p->input_format));
		goto fail;
	}
	const char *side[3] = { p->keys, p->ids, p->attrs };
	const uint64_t side_bytes[3] = { p->keys_bytes, p->ids_bytes, p->attrs_bytes };
	for (int i = 0; i < 3; i++) {
		struct stat st;
		if (side[i][0] == 0)
			continue;
		if (stat(side[i], &st) != 0) {
			rc = cdx_error_errno(CDX_ENOTFOUND, "cannot read %s", side[i]);
			goto fail;
		}
		if ((uint64_t) st.st_size != side_bytes[i]) {
			rc = cdx_error(CDX_EDIM,
			    "%s: %llu bytes, the trained plan saw %llu: the file changed since training",
			    side[i], (unsigned long long) st.st_size, (unsigned long long) side_bytes[i]);
			goto fail;
		}
	}
	uint64_t nids;
	if (p->ids[0] && (rc = cdx_ids_load(p->ids, p->rows, &ids, &nids)) != CDX_OK)
		goto fail;
	uint64_t nrows = 0;
	for (uint64_t r = 0; r < p->rows; r++)
		nrows += cdx_build_shard_of(ids ? ids[r] : (int64_t) r, p->nshards) == shard;
	shard_ids = malloc((nrows ? nrows : 1) * sizeof(int64_t));
	if (shard_ids == NULL) {
		rc = cdx_error(CDX_ENOMEM, "%s: ids of %llu rows", path, (unsigned long long) nrows);
		goto fail;
	}

	if (p->index == NULL) {
		rc = cdx_error(CDX_EINVAL, "plan has no trained index");
		goto fail;
	}
	if (consume) {
		index = p->index;
		p->index = NULL;
	} else if (cdx_fx_clone(p->index, &index) != 0) {
		rc = cdx_error_faiss("clone of the trained index");
		goto fail;
	}

	struct cdx_shard_info info;
	memset(&info, 0, sizeof(info));
	snprintf(info.collection, sizeof(info.collection), "%s", p->collection);
	info.metric = (uint32_t) p->metric;
	info.dim = p->dim;
	info.shard_index = shard;
	info.shard_count = p->nshards;
	info.rows = nrows;
	if ((rc = cdx_shard_writer_open(&w, path, &info)) != CDX_OK)
		goto fail;

	size_t chunk_rows = CDX_MAX((size_t) 1, cdx_build_chunk_bytes() / ((size_t) p->dim * sizeof(float)));
	chunk = malloc(chunk_rows * p->dim * sizeof(float));
	if (chunk == NULL) {
		rc = cdx_error(CDX_ENOMEM, "input chunk");
		goto fail;
	}
	/* the vectors as the index holds them (transform.h): only the Faiss
	 * index sees them; the refine store keeps the user's (normalised) ones */
	struct cdx_vector_map vm
	    = { p->metric, p->transform, p->dim, p->index_dim ? p->index_dim : p->dim, p->max_norm2 };
	if (!cdx_map_identity(&vm) && (mapped = malloc(chunk_rows * vm.index_dim * sizeof(float))) == NULL) {
		rc = cdx_error(CDX_ENOMEM, "input chunk in index space");
		goto fail;
	}
	struct cdx_refine_store st = { 0 };
	if (p->refine != CDX_REFINE_NONE) {
		st.kind = p->refine;
		st.dim = p->dim;
		st.rows = nrows;
		st.vmin = p->sq8_vmin;
		st.vdiff = p->sq8_vdiff;
		st.bytes_per_vector = cdx_refine_bytes_per_vector(p->refine, p->dim);
		rbuf = malloc(chunk_rows * st.bytes_per_vector);
		if (rbuf == NULL) {
			rc = cdx_error(CDX_ENOMEM, "refine chunk");
			goto fail;
		}
		if ((rc = cdx_refine_header_write(&hdr, p->refine, p->dim, nrows, p->sq8_vmin, p->sq8_vdiff))
		        != CDX_OK
		    || (rc = cdx_shard_writer_begin_part(w, CDX_PART_REFINE, 0)) != CDX_OK
		    || (rc = cdx_shard_writer_write(w, hdr.data, hdr.len)) != CDX_OK)
			goto fail;
	}

	/* Adding assigns vectors with one big sgemm per block, outside any
	 * OpenMP region: give it every core (1M x 128 into IVF4096: 22.4 s
	 * with one BLAS thread, 16.7 s with two and passive OpenMP waits). */
	cdx_blas_set_threads(omp_get_max_threads());
	char what[48];
	snprintf(what, sizeof(what), p->nshards > 1 ? "encode %u/%u" : "encode", shard + 1, p->nshards);
	struct cdx_progress pr;
	cdx_progress_begin(&pr, what, p->rows, quiet);
	cdx_xxh64_state fp;
	cdx_xxh64_init(&fp, 0);
	uint64_t have = 0;
	for (uint64_t r0 = 0; r0 < p->rows; r0 += chunk_rows) {
		size_t n = (size_t) CDX_MIN((uint64_t) chunk_rows, p->rows - r0);
		cdx_input_prefetch(in, r0 + n, chunk_rows);
		if ((rc = cdx_input_read(in, r0, n, chunk)) != CDX_OK)
			goto fail;
		cdx_xxh64_update(&fp, chunk, n * p->dim * sizeof(float));
		size_t m = 0;
		if (p->nshards == 1) {
			for (size_t i = 0; i < n; i++)
				shard_ids[have + i] = ids ? ids[r0 + i] : (int64_t) (r0 + i);
			m = n;
		} else {
			for (size_t i = 0; i < n; i++) {
				int64_t id = ids ? ids[r0 + i] : (int64_t) (r0 + i);
				if (cdx_build_shard_of(id, p->nshards) != shard)
					continue;
				if (m != i)
					memcpy(
					    chunk + m * p->dim, chunk + i * p->dim, p->dim * sizeof(float));
				shard_ids[have + m] = id;
				m++;
			}
		}
		if (m > 0) {
			if (p->metric == CDX_METRIC_COS)
				cdx_normalize_rows(chunk, m, p->dim);
			if (p->refine != CDX_REFINE_NONE) {
				cdx_refine_encode(&st, chunk, m, rbuf);
				if ((rc = cdx_shard_writer_write(w, rbuf, m * st.bytes_per_vector)) != CDX_OK)
					goto fail;
			}
			if (mapped != NULL)
				cdx_map_items(&vm, chunk, m, mapped);
			if (faiss_Index_add(index, (idx_t) m, mapped != NULL ? mapped : chunk) != 0) {
				rc = cdx_error_faiss("adding vectors");
				goto fail;
			}
		}
		have += m;
		cdx_input_release(in, r0 + n);
		cdx_progress_update(&pr, r0 + n);
	}
	cdx_progress_end(&pr);
	free(chunk);
	chunk = NULL;
	free(mapped);
	mapped = NULL;
	free(rbuf);
	rbuf = NULL;
	cdx_input_close(in);
	in = NULL;
	if (have != nrows) {
		rc = cdx_error(CDX_EINTERNAL, "%s: encoded %llu rows, expected %llu", path,
		    (unsigned long long) have, (unsigned long long) nrows);
		goto fail;
	}
	if (p->refine != CDX_REFINE_NONE && (rc = cdx_shard_writer_end_part(w)) != CDX_OK)
		goto fail;

	if ((rc = write_faiss_part(w, index, path)) != CDX_OK)
		goto fail;
	faiss_Index_free(index);
	index = NULL;

	hdr.len = 0;
	if ((rc = cdx_ids_encode(shard_ids, nrows, &hdr)) != CDX_OK
	    || (rc = cdx_shard_writer_begin_part(w, CDX_PART_IDS, CDX_PART_FLAG_REQUIRED)) != CDX_OK
	    || (rc = cdx_shard_writer_write(w, hdr.data, hdr.len)) != CDX_OK
	    || (rc = cdx_shard_writer_end_part(w)) != CDX_OK)
		goto fail;
	free(shard_ids);
	shard_ids = NULL;
	cdx_buf_fini(&hdr);

	if (p->keys[0] && (rc = write_keys_part(w, p, ids, shard)) != CDX_OK)
		goto fail;
	if (p->attrs_schema != NULL && (rc = write_attrs_part(w, p, ids, shard, nrows)) != CDX_OK)
		goto fail;
	rc = cdx_shard_writer_commit(w, NULL);
	w = NULL;
	if (rc != CDX_OK)
		goto fail;
	free(ids);
	res->rows = nrows;
	res->input_rows = p->rows;
	res->fingerprint = cdx_xxh64_digest(&fp);
	res->seconds = (double) (cdx_now_us() - t0) / 1e6;
	cdx_info("BLD-ENCODE", "%s: %llu rows in %.1f s", path, (unsigned long long) nrows, res->seconds);
	return CDX_OK;
fail:
	cdx_shard_writer_abort(w);
	if (index != NULL)
		faiss_Index_free(index);
	free(chunk);
	free(mapped);
	free(rbuf);
	free(ids);
	free(shard_ids);
	cdx_buf_fini(&hdr);
	cdx_input_close(in);
	return rc;
}
