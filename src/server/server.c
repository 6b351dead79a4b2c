/*
 * server.c — start, graceful stop, and `candex serve`'s main loop (signals
 * arrive through src/common/signals.c's self-pipe).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/signals.h"
#include "server/server.h"

#include "recall/online.h"

static char *
dup_or_null(const char *s)
{
	return s != NULL ? strdup(s) : NULL;
}

static void
config_copy(struct cdx_server_config *dst, const struct cdx_server_config *src)
{
	*dst = *src;
	dst->index_dir = dup_or_null(src->index_dir);
	for (unsigned i = 0; i < src->nlisten; i++)
		dst->listen[i] = dup_or_null(src->listen[i]);
	dst->admin_listen = dup_or_null(src->admin_listen);
	dst->http_listen = dup_or_null(src->http_listen);
	dst->http_search_listen = dup_or_null(src->http_search_listen);
	dst->tls_cert = dup_or_null(src->tls_cert);
	dst->tls_key = dup_or_null(src->tls_key);
	dst->tls_ca = dup_or_null(src->tls_ca);
	dst->ipc_mode = dup_or_null(src->ipc_mode);
	dst->query_ipc_mode = dup_or_null(src->query_ipc_mode);
	dst->config_file = dup_or_null(src->config_file);
	dst->impression_log = dup_or_null(src->impression_log);
	dst->shards = dup_or_null(src->shards);
}

static void
sleep_ms(unsigned ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long) (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static void
server_free(cdx_server *s)
{
	cdx__srv_set_free(s->set);
	cdx__srv_previous_free(s);
	cdx__srv_adapt_free(s->adapt); /* after the online checker, its caller, stopped */
	pthread_mutex_destroy(&s->set_mu);
	pthread_mutex_destroy(&s->cm_mu);
	pthread_mutex_destroy(&s->q_mu);
	pthread_cond_destroy(&s->q_cv);
	pthread_mutex_destroy(&s->i_mu);
	pthread_cond_destroy(&s->i_cv);
	pthread_mutex_destroy(&s->snd_mu);
	pthread_cond_destroy(&s->snd_cv);
	pthread_mutex_destroy(&s->r_mu);
	pthread_cond_destroy(&s->r_cv);
	pthread_mutex_destroy(&s->w_mu);
	pthread_cond_destroy(&s->w_cv);
	cdx_server_config_fini(&s->cfg);
	free(s);
}

/* teardown stops everything that start got going, in dependency order. */
static void
teardown(cdx_server *s)
{
	cdx__srv_http_search_stop(s); /* answers its open requests through sock */
	cdx__srv_http_stop(s);
	cdx__srv_watchdog_stop(s);
	cdx__srv_reloader_stop(s);
	cdx__srv_intake_stop(s);   /* before the workers: it feeds their queue */
	cdx__srv_workers_stop(s);  /* before the contexts go: a worker may hold one */
	cdx__srv_rec_stop(s);      /* after the workers: nothing appends any more */
	cdx__srv_sockets_close(s); /* and the sender thread, once the sockets are closed */
	cdx_online_recall_stop(s->online);
	s->online = NULL;
	server_free(s);
}

int
cdx_server_start(cdx_server **sp, const struct cdx_server_config *cfg)
{
	cdx_server *s;
	int rc;

	*sp = NULL;
	if ((s = calloc(1, sizeof(*s))) == NULL)
		return cdx_error(CDX_ENOMEM, "out of memory");
	config_copy(&s->cfg, cfg);
	s->nworkers = cfg->threads ? cfg->threads : (uint32_t) cdx_cpu_count();
	if (s->cfg.queue_max == 0)
		s->cfg.queue_max = 16 * s->nworkers;
	s->start_ms = cdx_wall_ms();
	atomic_store(&s->searches_end, UINT64_MAX);
	pthread_mutex_init(&s->set_mu, NULL);
	pthread_mutex_init(&s->cm_mu, NULL);
	pthread_mutex_init(&s->q_mu, NULL);
	pthread_cond_init(&s->q_cv, NULL);
	pthread_mutex_init(&s->i_mu, NULL);
	pthread_mutex_init(&s->snd_mu, NULL);
	pthread_cond_init(&s->snd_cv, NULL);
	pthread_mutex_init(&s->r_mu, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&s->r_cv, &ca);
	pthread_mutex_init(&s->w_mu, NULL);
	pthread_cond_init(&s->w_cv, &ca);
	pthread_cond_init(&s->i_cv, &ca);
	pthread_condattr_destroy(&ca);

	/* Workers use every core already; OpenBLAS's own pool would only
	 * compete with them (refine and coarse assignment call BLAS). */
	cdx_blas_set_threads(1);

	if ((rc = cdx__srv_limits_init(s)) != CDX_OK
	    || (rc = cdx__srv_adapt_alloc(&s->adapt, &s->cfg)) != CDX_OK
	    || (rc = cdx__srv_load_initial(s)) != CDX_OK) {
		server_free(s);
		return rc;
	}
	if (s->cfg.online_recall_fraction > 0) {
		struct cdx_online_recall_config oc = {
			.sample_fraction = s->cfg.online_recall_fraction,
			.cpu_budget = s->cfg.online_recall_cpu,
			.queue_max = 256,
			.on_check = s->adapt != NULL ? cdx__srv_adapt_check : NULL,
			.on_check_arg = s->adapt,
		};
		cdx_online_recall *o = NULL;
		if ((rc = cdx_online_recall_start(&o, &oc)) != CDX_OK) {
			teardown(s);
			return rc;
		}
		s->online = o;
		cdx_info("SRV-RECALL",
		    "online recall: re-running %.3g%% of queries exactly within %.3g of a core",
		    100.0 * s->cfg.online_recall_fraction, s->cfg.online_recall_cpu);
	}
	if ((rc = cdx__srv_rec_start(s)) != CDX_OK || (rc = cdx__srv_workers_start(s)) != CDX_OK
	    || (rc = cdx__srv_intake_start(s)) != CDX_OK || (rc = cdx__srv_sender_start(s)) != CDX_OK
	    || (rc = cdx__srv_reloader_start(s)) != CDX_OK || (rc = cdx__srv_sockets_open(s)) != CDX_OK
	    || (rc = cdx__srv_watchdog_start(s)) != CDX_OK || (rc = cdx__srv_http_start(s)) != CDX_OK
	    || (rc = cdx__srv_http_search_start(s)) != CDX_OK) {
		char msg[1024];
		snprintf(msg, sizeof(msg), "%s", cdx_last_error());
		atomic_store(&s->stopping, 1);
		teardown(s);
		return cdx_error(rc, "%s", msg);
	}
	cdx_info("SRV-READY",
	    "candex %s serving %s with %u workers, queue %u, %zu contexts, up to %u connections, receive "
	    "budget %zu MiB",
	    CANDEX_VERSION, s->cfg.index_dir, s->nworkers, s->cfg.queue_max, s->nctxs, s->conns.limit,
	    (size_t) (s->cfg.max_receive_memory >> 20));
	*sp = s;
	return CDX_OK;
}

/* The closer thread runs teardown, so that cdx_server_stop can give up on
 * it at the drain deadline. */
struct closer {
	cdx_server *s;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int done;
};

static void *
closer_main(void *arg)
{
	struct closer *c = arg;
	teardown(c->s);
	pthread_mutex_lock(&c->mu);
	c->done = 1;
	pthread_cond_signal(&c->cv);
	pthread_mutex_unlock(&c->mu);
	return NULL;
}

int
cdx_server_stop(cdx_server *s)
{
	if (s == NULL)
		return CDX_OK;
	/* New requests are answered UNAVAILABLE from now on; the listeners stay
	 * open until the end because closing one also closes its connections. */
	atomic_store(&s->stopping, 1);
	uint32_t drain_ms = s->cfg.drain_ms;
	uint64_t t0 = cdx_now_us(), deadline = t0 + (uint64_t) drain_ms * 1000u;
	/* what is kept for closing: a quarter of the drain time, at most 1 s;
	 * searches still running when it begins are stopped (UNAVAILABLE) and
	 * get half of it to answer */
	uint64_t keep = CDX_MIN((uint64_t) drain_ms * 250u, (uint64_t) 1000000u);
	cdx__srv_searches_end(s, deadline - keep);
	int pending = atomic_load(&s->in_flight);
	cdx_info("SRV-STOP", "stopping: draining %d in-flight request(s)", pending);
	while (atomic_load(&s->in_flight) > 0 && cdx_now_us() + keep / 2 < deadline)
		sleep_ms(2);
	if (atomic_load(&s->in_flight) > 0)
		cdx_warn("SRV-DRAIN", "%d request(s) still in flight after %.0f ms; closing anyway",
		    atomic_load(&s->in_flight), (double) (cdx_now_us() - t0) / 1000.0);
	/* A reply handed to nng is queued on its connection, not yet written:
	 * give the transports a moment before the sockets close. */
	sleep_ms((unsigned) CDX_MIN((uint64_t) 50, keep / 4000u));

	/* nng 1.5's close can hang (nanomsg/nng#1543, #1813: fixed upstream
	 * later): close on another thread and give up at the deadline, leaving
	 * the server's memory to the process exit. */
	struct closer *c = calloc(1, sizeof(*c));
	pthread_t t;
	if (c == NULL) {
		teardown(s);
		cdx_info("SRV-STOPPED", "stopped");
		return CDX_OK;
	}
	c->s = s;
	pthread_mutex_init(&c->mu, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&c->cv, &ca);
	pthread_condattr_destroy(&ca);
	if (pthread_create(&t, NULL, closer_main, c) != 0) {
		teardown(s);
		c->done = 1;
	} else {
		struct timespec ts = { .tv_sec = (time_t) (deadline / 1000000u),
			.tv_nsec = (long) (deadline % 1000000u) * 1000L };
		pthread_mutex_lock(&c->mu);
		while (!c->done && pthread_cond_timedwait(&c->cv, &c->mu, &ts) == 0)
			;
		int done = c->done;
		pthread_mutex_unlock(&c->mu);
		if (!done) {
			pthread_detach(t);
			cdx_warn("SRV-STOP-STUCK",
			    "closing the sockets did not finish within --drain-ms %u; giving up on it",
			    drain_ms);
			return CDX_ETIMEDOUT; /* c stays with the closer thread */
		}
		pthread_join(t, NULL);
	}
	pthread_mutex_destroy(&c->mu);
	pthread_cond_destroy(&c->cv);
	free(c);
	cdx_info("SRV-STOPPED", "stopped in %.0f ms", (double) (cdx_now_us() - t0) / 1000.0);
	return CDX_OK;
}

int
cdx_server_run(const struct cdx_server_config *cfg)
{
	cdx_server *s;
	sigset_t saved;

	cdx_log_set_level(cfg->log_level);
	/* A fixed mmap threshold: blocks of 256 KiB and more (request frames,
	 * a version's arrays) get their own mappings and go back to the
	 * system when freed. glibc's default raises the threshold after such
	 * a free, and from then on big blocks come from the heap, where a
	 * reload or a burst of large requests leaves RSS higher for good. */
	mallopt(M_MMAP_THRESHOLD, 256 * 1024);
	if (cdx_signals_open(&saved) != CDX_OK) {
		cdx_err("SRV-START-FAIL", "%s", cdx_last_error());
		return 1;
	}
	int rc = 0;
	int started = cdx_server_start(&s, cfg);
	cdx_signals_started(&saved);
	if (started != CDX_OK) {
		cdx_err("SRV-START-FAIL", "%s", cdx_last_error());
		rc = 1;
		goto out;
	}
	for (;;) {
		int signo = cdx_signals_wait();
		if (signo < 0) {
			cdx_err("SRV-SIGNAL", "%s", cdx_last_error());
			break;
		}
		if (signo == SIGHUP) {
			cdx_info("SRV-SIGHUP", "SIGHUP: reloading changed collections");
			cdx_server_request_reload(s);
			continue;
		}
		cdx_info("SRV-SIGNAL", "%s: shutting down", signo == SIGINT ? "SIGINT" : "SIGTERM");
		break;
	}
	if (cdx_server_stop(s) == CDX_ETIMEDOUT) {
		/* nng threads may be stuck holding its locks: exit() would run
		 * nng_fini (atexit) and wait on them */
		fflush(NULL);
		_exit(0);
	}
out:
	cdx_signals_close();
	return rc;
}
