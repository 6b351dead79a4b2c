/*
 * router.c — start, graceful stop, and `candex route`'s main loop.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/signals.h"
#include "router/router_int.h"

static void
config_copy(struct cdx_router_config *dst, const struct cdx_router_config *src)
{
	*dst = *src;
	for (unsigned i = 0; i < src->nlisten; i++)
		dst->listen[i] = strdup(src->listen[i]);
	for (unsigned i = 0; i < src->ngroups; i++)
		dst->group[i] = strdup(src->group[i]);
	dst->http_listen = src->http_listen ? strdup(src->http_listen) : NULL;
	dst->config_file = src->config_file ? strdup(src->config_file) : NULL;
}

static void
sleep_ms(unsigned ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long) (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

/* teardown undoes what start did, in dependency order: nothing calls into
 * the groups once the front and the poller are gone. */
static void
teardown(cdx_router *r)
{
	cdx__rt_http_stop(r);
	cdx__rt_poller_stop(r);
	cdx__rt_front_close(r); /* also closes the group sockets */
	cdx__rt_groups_close(r);
	pthread_mutex_destroy(&r->mu);
	pthread_mutex_destroy(&r->p_mu);
	pthread_cond_destroy(&r->p_cv);
	cdx_router_config_fini(&r->cfg);
	free(r);
}

int
cdx_router_start(cdx_router **rp, const struct cdx_router_config *cfg)
{
	cdx_router *r = calloc(1, sizeof(*r));
	int rc;
	*rp = NULL;
	if (r == NULL)
		return cdx_error(CDX_ENOMEM, "out of memory");
	config_copy(&r->cfg, cfg);
	r->start_ms = cdx_wall_ms();
	pthread_mutex_init(&r->mu, NULL);
	pthread_mutex_init(&r->p_mu, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&r->p_cv, &ca);
	pthread_condattr_destroy(&ca);
	if ((rc = cdx__rt_groups_open(r)) != CDX_OK || (rc = cdx__rt_front_open(r)) != CDX_OK
	    || (rc = cdx__rt_poller_start(r)) != CDX_OK || (rc = cdx__rt_http_start(r)) != CDX_OK) {
		char msg[1024];
		snprintf(msg, sizeof(msg), "%s", cdx_last_error());
		atomic_store(&r->stopping, 1);
		teardown(r);
		return cdx_error(rc, "%s", msg);
	}
	cdx_info("RT-READY", "candex %s routing to %zu shard group(s) with %zu contexts", CANDEX_VERSION,
	    r->ngroups, r->nfronts);
	*rp = r;
	return CDX_OK;
}

void
cdx_router_stop(cdx_router *r)
{
	if (r == NULL)
		return;
	atomic_store(&r->stopping, 1);
	cdx_info("RT-STOP", "stopping: draining %d in-flight request(s)", atomic_load(&r->in_flight));
	uint64_t until = cdx_now_us() + (uint64_t) r->cfg.drain_ms * 1000u;
	while (atomic_load(&r->in_flight) > 0 && cdx_now_us() < until)
		sleep_ms(2);
	if (atomic_load(&r->in_flight) > 0)
		cdx_warn("RT-DRAIN", "%d request(s) still in flight after %u ms; closing anyway",
		    atomic_load(&r->in_flight), r->cfg.drain_ms);
	sleep_ms(50); /* replies handed to nng are still to be written */
	teardown(r);
	cdx_info("RT-STOPPED", "stopped");
}

int
cdx_router_run(const struct cdx_router_config *cfg)
{
	cdx_router *r;
	sigset_t saved;
	cdx_log_set_level(cfg->log_level);
	if (cdx_signals_open(&saved) != CDX_OK) {
		cdx_err("RT-START-FAIL", "%s", cdx_last_error());
		return 1;
	}
	int rc = cdx_router_start(&r, cfg);
	cdx_signals_started(&saved);
	if (rc != CDX_OK) {
		cdx_err("RT-START-FAIL", "%s", cdx_last_error());
		cdx_signals_close();
		return 1;
	}
	for (;;) {
		int signo = cdx_signals_wait();
		if (signo == SIGHUP) {
			cdx_info("RT-SIGHUP", "SIGHUP: nothing to reload (the poller follows the groups)");
			continue;
		}
		if (signo < 0)
			cdx_err("RT-SIGNAL", "%s", cdx_last_error());
		else
			cdx_info("RT-SIGNAL", "%s: shutting down", signo == SIGINT ? "SIGINT" : "SIGTERM");
		break;
	}
	cdx_router_stop(r);
	cdx_signals_close();
	return 0;
}
