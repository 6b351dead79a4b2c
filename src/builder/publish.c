/*
 * publish.c — staging, verification and the atomic publish of a version,
 * and the three entry points the CLI runs (one-shot, encode job, publish
 * job).
 *
 * Order of operations (see build.h DESIGN): shards are complete and
 * fsynced in DIR/NAME/.staging-<pid>-<version>/; each is re-opened, its
 * header checked against the plan and every part checksum verified; the
 * whole-file xxh64 and size go into manifest.json, written last (atomically
 * and fsynced); the staging directory is renamed to DIR/NAME/<version> and
 * DIR/NAME fsynced; only then does CURRENT move. A crash at any point
 * leaves either the old CURRENT or the new one, and at worst a staging
 * directory that readers ignore and gc removes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "builder/build.h"
#include "builder/tune.h"

static int
join(char *out, const char *a, const char *b)
{
	if (snprintf(out, PATH_MAX, "%s/%s", a, b) >= PATH_MAX)
		return cdx_error(CDX_EINVAL, "path too long: %s/%s", a, b);
	return CDX_OK;
}

/* version_name: "v" + UTC time + "-" + 4 hex digits that grow with the
 * millisecond (x65, leaving room for 65 bumps per millisecond), so names
 * sort by creation time and gc's "newest" is a string comparison. */
static void
version_name(char out[CDX_NAME_MAX], uint64_t ms, unsigned bump)
{
	time_t secs = (time_t) (ms / 1000);
	struct tm tm;
	gmtime_r(&secs, &tm);
	char ts[32];
	strftime(ts, sizeof(ts), "%Y%m%dT%H%M%SZ", &tm);
	snprintf(out, CDX_NAME_MAX, "v%s-%04x", ts, (unsigned) ((ms % 1000) * 65 + CDX_MIN(bump, 64u)));
}

/* next_version picks a version name not used in coll_dir yet, later than after
 * (may be empty). */
static int
next_version(const char *coll_dir, const char *after, char out[CDX_NAME_MAX])
{
	for (int tries = 0; tries < 10000; tries++) {
		uint64_t ms = cdx_wall_ms();
		for (unsigned bump = 0; bump < 65; bump++) {
			char path[PATH_MAX];
			struct stat st;
			version_name(out, ms, bump);
			if (after != NULL && strcmp(out, after) <= 0)
				continue;
			if (join(path, coll_dir, out) != CDX_OK)
				return CDX_EINVAL;
			if (lstat(path, &st) != 0 && errno == ENOENT)
				return CDX_OK;
		}
		usleep(1000);
	}
	return cdx_error(CDX_EINTERNAL, "%s: no free version name", coll_dir);
}

int
cdx_build_staging_create(const struct cdx_build_plan *p, char *staging, char *version)
{
	char coll_dir[PATH_MAX], name[PATH_MAX];
	int rc;
	if ((rc = join(coll_dir, p->out, p->collection)) != CDX_OK
	    || (rc = cdx_mkdir_p(coll_dir, 0755)) != CDX_OK)
		return rc;
	for (int tries = 0; tries < 100; tries++) {
		if ((rc = next_version(coll_dir, NULL, version)) != CDX_OK
		    || (rc = cdx_version_staging_name(name, sizeof(name), version)) != CDX_OK
		    || (rc = join(staging, coll_dir, name)) != CDX_OK)
			return rc;
		cdx_build_cleanup_add(staging);
		if (mkdir(staging, 0755) == 0)
			return CDX_OK;
		int e = errno;
		cdx_build_cleanup_remove(staging);
		if (e != EEXIST) {
			errno = e;
			return cdx_error_errno(CDX_EIO, "mkdir %s", staging);
		}
	}
	return cdx_error(CDX_EINTERNAL, "%s: cannot create a staging directory", coll_dir);
}

int
cdx_file_xxh64(const char *path, uint64_t *bytes, uint64_t *hash)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return cdx_error_errno(CDX_EIO, "open %s", path);
	size_t cap = 4u << 20;
	char *buf = malloc(cap);
	if (buf == NULL) {
		close(fd);
		return cdx_error(CDX_ENOMEM, "reading %s", path);
	}
	cdx_xxh64_state st;
	cdx_xxh64_init(&st, 0);
	uint64_t total = 0;
	int rc = CDX_OK;
	for (;;) {
		ssize_t n = read(fd, buf, cap);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			rc = cdx_error_errno(CDX_EIO, "read %s", path);
			break;
		}
		if (n == 0)
			break;
		cdx_xxh64_update(&st, buf, (size_t) n);
		total += (uint64_t) n;
	}
	/* the page cache copy is not ours to keep around */
	posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
	free(buf);
	close(fd);
	*bytes = total;
	*hash = cdx_xxh64_digest(&st);
	return rc;
}

/* verify_shard re-opens a finished shard file and checks it against the
 * plan and what encode reported, before anything is published. */
static int
verify_shard(
    const struct cdx_build_plan *p, const char *path, uint32_t i, const struct cdx_encode_result *res)
{
	cdx_shard *s = NULL;
	int rc = cdx_shard_open(&s, path);
	if (rc != CDX_OK)
		return rc;
	const struct cdx_shard_info *info = cdx_shard_info(s);
	if (strcmp(info->collection, p->collection) != 0 || info->dim != p->dim
	    || (int) info->metric != p->metric || info->shard_index != i || info->shard_count != p->nshards
	    || info->rows != res->rows) {
		rc = cdx_error(CDX_ECORRUPT,
		    "%s: header (collection %s, dim %u, metric %s, shard %u/%u, rows %llu) does "
		    "not match the build (%s, %u, %s, %u/%u, %llu)",
		    path, info->collection, info->dim, cdx_metric_name((int) info->metric), info->shard_index,
		    info->shard_count, (unsigned long long) info->rows, p->collection, p->dim,
		    cdx_metric_name(p->metric), i, p->nshards, (unsigned long long) res->rows);
	} else if (cdx_shard_find_part(s, CDX_PART_FAISS) == NULL
	    || cdx_shard_find_part(s, CDX_PART_IDS) == NULL
	    || (p->keys[0] && cdx_shard_find_part(s, CDX_PART_KEYS) == NULL)
	    || (p->refine != CDX_REFINE_NONE && cdx_shard_find_part(s, CDX_PART_REFINE) == NULL)) {
		rc = cdx_error(CDX_ECORRUPT, "%s: a part is missing", path);
	} else {
		rc = cdx_shard_verify(s, NULL);
	}
	cdx_shard_close(s);
	return rc;
}

int
cdx_build_publish_staged(const struct cdx_build_plan *p, const char *staging, const char *version_in,
    const struct cdx_encode_result *res, char *version_out)
{
	char coll_dir[PATH_MAX], path[PATH_MAX], final[PATH_MAX], version[CDX_NAME_MAX];
	struct cdx_manifest m;
	int rc;
	memset(&m, 0, sizeof(m));
	snprintf(version, sizeof(version), "%s", version_in);
	if ((rc = join(coll_dir, p->out, p->collection)) != CDX_OK)
		return rc;
	m.shards = calloc(p->nshards, sizeof(*m.shards));
	if (m.shards == NULL)
		return cdx_error(CDX_ENOMEM, "manifest");

	uint64_t total = 0;
	for (uint32_t i = 0; i < p->nshards; i++) {
		struct cdx_manifest_shard *ms = &m.shards[i];
		cdx_build_shard_name(ms->file, i, p->nshards);
		if ((rc = join(path, staging, ms->file)) != CDX_OK)
			goto fail;
		if (res[i].shard != i || res[i].input_rows != p->rows) {
			rc = cdx_error(
			    CDX_EINTERNAL, "%s: encode result does not belong to this shard", path);
			goto fail;
		}
		if (res[i].fingerprint != res[0].fingerprint) {
			rc = cdx_error(CDX_ECORRUPT,
			    "shard %u saw input fingerprint %016llx, shard 0 saw %016llx: the input "
			    "changed between encode jobs",
			    i, (unsigned long long) res[i].fingerprint,
			    (unsigned long long) res[0].fingerprint);
			goto fail;
		}
		if ((rc = verify_shard(p, path, i, &res[i])) != CDX_OK)
			goto fail;
		if ((rc = cdx_file_xxh64(path, &ms->bytes, &ms->xxh64)) != CDX_OK)
			goto fail;
		ms->rows = res[i].rows;
		total += ms->rows;
	}
	if (total != p->rows) {
		rc = cdx_error(CDX_EINTERNAL, "shards hold %llu rows, the input has %llu",
		    (unsigned long long) total, (unsigned long long) p->rows);
		goto fail;
	}

	m.format_version = CDX_MANIFEST_FORMAT_VERSION;
	snprintf(m.collection, sizeof(m.collection), "%s", p->collection);
	snprintf(m.model_version, sizeof(m.model_version), "%s", p->model_version);
	snprintf(m.factory, sizeof(m.factory), "%s", p->params.factory);
	m.metric = p->metric;
	m.dim = p->dim;
	m.items = p->rows;
	m.nlist = p->params.nlist;
	m.pq_m = p->params.pq_m;
	m.pq_nbits = p->params.pq_nbits;
	m.default_nprobe = p->params.default_nprobe;
	m.refine = p->refine;
	m.default_refine_factor = p->refine != CDX_REFINE_NONE ? 4.0f : 0.0f;
	m.transform = p->transform;
	m.index_dim = p->index_dim ? p->index_dim : p->dim;
	m.max_norm2 = p->max_norm2;
	m.default_recall_target = p->default_recall_target;
	m.ntuned_k = p->ntuned_k;
	memcpy(m.tuned_k, p->tuned_k, sizeof(m.tuned_k));
	m.tuning = p->tuning;      /* borrowed: never freed through m */
	m.attrs = p->attrs_schema; /* borrowed too */
	if (p->npoints > 0) {
		if ((m.points = malloc(p->npoints * sizeof(*m.points))) == NULL) {
			rc = cdx_error(CDX_ENOMEM, "manifest");
			goto fail;
		}
		memcpy(m.points, p->points, p->npoints * sizeof(*m.points));
		m.npoints = p->npoints;
	}
	m.nshards = p->nshards;
	m.seed = p->seed;
	m.train_sample = p->params.train_sample;
	if (snprintf(m.input_path, sizeof(m.input_path), "%s", p->input) >= (int) sizeof(m.input_path))
		cdx_warn("BLD-PUBLISH", "input path truncated in the manifest: %s", p->input);
	m.input_bytes = p->input_bytes;
	m.input_fingerprint = res[0].fingerprint;
	cdx_iso8601_utc(m.created, cdx_wall_ms());
	snprintf(m.candex_version, sizeof(m.candex_version), "%s", CANDEX_VERSION);

	if (p->check != NULL) {
		/* the tuner's choice, checked on queries it did not see, through
		 * the version itself, before anyone can load it */
		snprintf(m.version, sizeof(m.version), "%s", version);
		int64_t *ids = NULL;
		uint64_t nids = 0;
		if ((rc = cdx_manifest_save(&m, staging)) != CDX_OK
		    || (p->ids[0] && (rc = cdx_ids_load(p->ids, p->rows, &ids, &nids)) != CDX_OK)
		    || (rc = cdx_tune_check_version(
		            p->check, staging, p->input, p->input_format, p->dim, ids, p->rows, &m))
		        != CDX_OK) {
			free(ids);
			goto fail;
		}
		free(ids);
	}
	for (int tries = 0;; tries++) {
		snprintf(m.version, sizeof(m.version), "%s", version);
		if ((rc = cdx_manifest_save(&m, staging)) != CDX_OK
		    || (rc = cdx_fsync_path(staging)) != CDX_OK
		    || (rc = join(final, coll_dir, version)) != CDX_OK)
			goto fail;
		cdx_build_publish_lock();
		if (rename(staging, final) == 0) {
			rc = cdx_fsync_path(coll_dir);
			if (rc == CDX_OK)
				rc = cdx_version_publish(coll_dir, version);
			if (rc == CDX_OK)
				cdx_build_mark_published();
			cdx_build_publish_unlock();
			if (rc != CDX_OK) {
				/* complete but not live: remove it, so nothing of this build is left */
				cdx_rm_rf(final);
				goto fail;
			}
			break;
		}
		int e = errno;
		cdx_build_publish_unlock();
		if ((e != EEXIST && e != ENOTEMPTY) || tries >= 100) {
			errno = e;
			rc = cdx_error_errno(CDX_EIO, "rename %s -> %s", staging, final);
			goto fail;
		}
		/* another builder took the name meanwhile: take a later one */
		char prev[CDX_NAME_MAX];
		snprintf(prev, sizeof(prev), "%s", version);
		if ((rc = next_version(coll_dir, prev, version)) != CDX_OK)
			goto fail;
	}
	cdx_build_cleanup_remove(staging);
	cdx_info("BLD-PUBLISH", "%s: published version %s (%llu items, %u shard(s))", coll_dir, version,
	    (unsigned long long) p->rows, p->nshards);
	if (version_out != NULL)
		snprintf(version_out, CDX_NAME_MAX, "%s", version);
	free(m.shards);
	free(m.points);
	if (cdx_build_prune_takedowns(p, coll_dir) != CDX_OK)
		cdx_warn("BLD-TAKEDOWN", "%s: takedowns not pruned: %s", coll_dir, cdx_last_error());
	if (cdx_version_gc(coll_dir, p->keep) != CDX_OK)
		cdx_warn("BLD-GC", "%s: garbage collection failed: %s", coll_dir, cdx_last_error());
	return CDX_OK;
fail:
	free(m.shards);
	free(m.points);
	return rc;
}

/* abort_staging removes a staging directory after a failure, keeping the
 * error message of the failure. */
static void
abort_staging(const char *staging)
{
	if (staging == NULL || staging[0] == 0)
		return;
	char msg[1024];
	snprintf(msg, sizeof(msg), "%s", cdx_last_error());
	cdx_rm_rf(staging);
	cdx_build_cleanup_remove(staging);
	cdx_error(CDX_OK, "%s", msg);
}

int
cdx_build_run(const struct cdx_build_opts *o, char *version_out)
{
	struct cdx_build_plan *p = NULL;
	struct cdx_encode_result *res = NULL;
	char staging[PATH_MAX] = "", version[CDX_NAME_MAX];
	uint64_t t0 = cdx_now_us();
	int rc = cdx_build_train(o, &p);
	if (rc != CDX_OK)
		return rc;
	res = calloc(p->nshards, sizeof(*res));
	if (res == NULL) {
		rc = cdx_error(CDX_ENOMEM, "encode results");
		goto fail;
	}
	if ((rc = cdx_build_staging_create(p, staging, version)) != CDX_OK) {
		staging[0] = 0;
		goto fail;
	}
	for (uint32_t s = 0; s < p->nshards; s++)
		if ((rc = cdx_build_encode_shard(p, s, staging, NULL, s + 1 == p->nshards, o->quiet, &res[s]))
		    != CDX_OK)
			goto fail;
	if ((rc = cdx_build_publish_staged(p, staging, version, res, version_out)) != CDX_OK)
		goto fail;
	cdx_info("BLD-DONE", "%s: %llu items built and published in %.1f s", p->collection,
	    (unsigned long long) p->rows, (double) (cdx_now_us() - t0) / 1e6);
	free(res);
	cdx_build_plan_free(p);
	return CDX_OK;
fail:
	abort_staging(staging);
	free(res);
	cdx_build_plan_free(p);
	return rc;
}

/* --- distributed steps -------------------------------------------------- */

static int
sidecar_path(char *out, const char *workdir, uint32_t i, uint32_t n)
{
	char name[CDX_NAME_MAX];
	cdx_build_shard_name(name, i, n);
	if (snprintf(out, PATH_MAX, "%s/%s.json", workdir, name) >= PATH_MAX)
		return cdx_error(CDX_EINVAL, "path too long: %s", workdir);
	return CDX_OK;
}

int
cdx_build_encode_work(const char *workdir, uint32_t shard, uint32_t of, const char *input, int quiet)
{
	struct cdx_build_plan *p = NULL;
	struct cdx_encode_result res;
	char tmpdir[PATH_MAX] = "", name[CDX_NAME_MAX], from[PATH_MAX], to[PATH_MAX], side[PATH_MAX];
	int rc = cdx_build_plan_load(&p, workdir, 1);
	if (rc != CDX_OK)
		return rc;
	if (of != p->nshards) {
		rc = cdx_error(
		    CDX_EINVAL, "--of %u does not match the plan's %u shards (%s)", of, p->nshards, workdir);
		goto fail;
	}
	if (shard >= of) {
		rc = cdx_error(CDX_EINVAL, "--shard %u: must be below --of %u", shard, of);
		goto fail;
	}
	cdx_build_shard_name(name, shard, of);
	/* A unique name, not the pid: pods of a Kubernetes job all tend to be
	 * pid 1, and a retried job must not trip over the half-written file of
	 * the attempt that was killed (train removes such leftovers). */
	if (snprintf(tmpdir, sizeof(tmpdir), "%s/.encode-%u-XXXXXX", workdir, shard)
	    >= (int) sizeof(tmpdir)) {
		rc = cdx_error(CDX_EINVAL, "path too long: %s", workdir);
		tmpdir[0] = 0;
		goto fail;
	}
	if (mkdtemp(tmpdir) == NULL) {
		rc = cdx_error_errno(CDX_EIO, "mkdir %s", tmpdir);
		tmpdir[0] = 0;
		goto fail;
	}
	cdx_build_cleanup_add(tmpdir);
	if ((rc = cdx_build_encode_shard(p, shard, tmpdir, input, 1, quiet, &res)) != CDX_OK)
		goto fail;
	if ((rc = join(from, tmpdir, name)) != CDX_OK || (rc = join(to, workdir, name)) != CDX_OK
	    || (rc = sidecar_path(side, workdir, shard, of)) != CDX_OK)
		goto fail;
	/* sidecar last: its presence means the shard file next to it is whole */
	unlink(side);
	if (rename(from, to) != 0) {
		rc = cdx_error_errno(CDX_EIO, "rename %s -> %s", from, to);
		goto fail;
	}
	json_t *o = json_object();
	char fp[17];
	snprintf(fp, sizeof(fp), "%016llx", (unsigned long long) res.fingerprint);
	json_object_set_new(o, "plan_id", json_string(p->plan_id));
	json_object_set_new(o, "shard", json_integer(shard));
	json_object_set_new(o, "of", json_integer(of));
	json_object_set_new(o, "rows", json_integer((json_int_t) res.rows));
	json_object_set_new(o, "input_rows", json_integer((json_int_t) res.input_rows));
	json_object_set_new(o, "fingerprint", json_string(fp));
	json_object_set_new(o, "seconds", json_real(res.seconds));
	char *s = json_dumps(o, JSON_INDENT(2) | JSON_SORT_KEYS);
	json_decref(o);
	rc = s ? cdx_write_file_atomic(side, s, strlen(s)) : cdx_error(CDX_ENOMEM, "%s", side);
	free(s);
	if (rc != CDX_OK)
		goto fail;
	cdx_rm_rf(tmpdir);
	cdx_build_cleanup_remove(tmpdir);
	cdx_build_plan_free(p);
	return CDX_OK;
fail:
	abort_staging(tmpdir);
	cdx_build_plan_free(p);
	return rc;
}

static int
read_sidecar(const struct cdx_build_plan *p, const char *workdir, uint32_t i, struct cdx_encode_result *res)
{
	char side[PATH_MAX];
	int rc = sidecar_path(side, workdir, i, p->nshards);
	if (rc != CDX_OK)
		return rc;
	json_error_t jerr;
	json_t *o = json_load_file(side, 0, &jerr);
	if (o == NULL)
		return cdx_error(CDX_ENOTFOUND,
		    "%s: shard %u of %u has not been encoded (run `candex build encode --work "
		    "%s --shard %u --of %u`)",
		    side, i, p->nshards, workdir, i, p->nshards);
	const char *pid = json_string_value(json_object_get(o, "plan_id"));
	const char *fp = json_string_value(json_object_get(o, "fingerprint"));
	if (pid == NULL || fp == NULL || strcmp(pid, p->plan_id) != 0) {
		rc = cdx_error(CDX_ECORRUPT,
		    "%s: made for another plan (plan_id %s, current %s): re-run encode", side,
		    pid ? pid : "?", p->plan_id);
	} else {
		res->shard = (uint32_t) json_integer_value(json_object_get(o, "shard"));
		res->rows = (uint64_t) json_integer_value(json_object_get(o, "rows"));
		res->input_rows = (uint64_t) json_integer_value(json_object_get(o, "input_rows"));
		res->fingerprint = strtoull(fp, NULL, 16);
		res->seconds = json_number_value(json_object_get(o, "seconds"));
	}
	json_decref(o);
	return rc;
}

/* place_file puts a shard into staging without moving it out of the work
 * directory (a failed publish can be retried): a hard link when both are
 * on one file system, else a copy, fsynced. */
static int
place_file(const char *from, const char *to)
{
	if (link(from, to) == 0)
		return CDX_OK;
	if (errno != EXDEV && errno != EPERM && errno != EMLINK && errno != ENOTSUP)
		return cdx_error_errno(CDX_EIO, "link %s -> %s", from, to);
	int in = open(from, O_RDONLY | O_CLOEXEC);
	if (in < 0)
		return cdx_error_errno(CDX_EIO, "open %s", from);
	int out = open(to, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (out < 0) {
		close(in);
		return cdx_error_errno(CDX_EIO, "create %s", to);
	}
	size_t cap = 4u << 20;
	char *buf = malloc(cap);
	int rc = buf ? CDX_OK : cdx_error(CDX_ENOMEM, "copy %s", from);
	while (rc == CDX_OK) {
		ssize_t n = read(in, buf, cap);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			rc = cdx_error_errno(CDX_EIO, "read %s", from);
		if (n <= 0)
			break;
		rc = cdx_write_all(out, buf, (size_t) n, to);
	}
	if (rc == CDX_OK && fsync(out) != 0)
		rc = cdx_error_errno(CDX_EIO, "fsync %s", to);
	free(buf);
	close(in);
	if (close(out) != 0 && rc == CDX_OK)
		rc = cdx_error_errno(CDX_EIO, "close %s", to);
	return rc;
}

int
cdx_build_publish_work(
    const char *workdir, const char *out_override, unsigned keep_override, char *version_out)
{
	struct cdx_build_plan *p = NULL;
	struct cdx_encode_result *res = NULL;
	char staging[PATH_MAX] = "", version[CDX_NAME_MAX], from[PATH_MAX], to[PATH_MAX], name[CDX_NAME_MAX];
	int rc = cdx_build_plan_load(&p, workdir, 0);
	if (rc != CDX_OK)
		return rc;
	if (out_override != NULL) {
		if ((rc = cdx_mkdir_p(out_override, 0755)) != CDX_OK)
			goto fail;
		char *rp = realpath(out_override, NULL);
		snprintf(p->out, sizeof(p->out), "%s", rp ? rp : out_override);
		free(rp);
	}
	if (keep_override > 0)
		p->keep = keep_override;
	res = calloc(p->nshards, sizeof(*res));
	if (res == NULL) {
		rc = cdx_error(CDX_ENOMEM, "encode results");
		goto fail;
	}
	for (uint32_t i = 0; i < p->nshards; i++)
		if ((rc = read_sidecar(p, workdir, i, &res[i])) != CDX_OK)
			goto fail;
	if ((rc = cdx_build_staging_create(p, staging, version)) != CDX_OK) {
		staging[0] = 0;
		goto fail;
	}
	for (uint32_t i = 0; i < p->nshards; i++) {
		cdx_build_shard_name(name, i, p->nshards);
		if ((rc = join(from, workdir, name)) != CDX_OK || (rc = join(to, staging, name)) != CDX_OK
		    || (rc = place_file(from, to)) != CDX_OK)
			goto fail;
	}
	if ((rc = cdx_build_publish_staged(p, staging, version, res, version_out)) != CDX_OK)
		goto fail;
	free(res);
	cdx_build_plan_free(p);
	return CDX_OK;
fail:
	abort_staging(staging);
	free(res);
	cdx_build_plan_free(p);
	return rc;
}
