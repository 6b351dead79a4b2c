/*
 * members.c — shard groups and their replicas, the poller, and the routing
 * view with its version rule.
 *
 * DESIGN
 * Each group has one REQ socket with a dialer per replica (requests go
 * there, route.c) and each replica has a REQ socket of its own for polls:
 * every --poll-ms the poller sends an InfoRequest to every replica at once
 * and waits for the answers (at most --poll-ms, or 1 s). A replica that
 * answers is up, with the collections, versions and shards it reported; it
 * is down after RT_POLL_MISSES polls in a row time out (a busy replica is
 * not dropped for one slow poll; a lost connection looks the same to a REQ
 * socket), or at once on any other failure or an error answer.
 * DNS groups are resolved again every --dns-interval: new addresses are
 * dialed, vanished ones closed (nng resends their waiting requests to the
 * other replicas).
 *
 * The version rule, per collection, from the replicas that are up:
 *   1. a version that every replica of every group holding the collection
 *      holds (current or kept as previous): the one current on most
 *      replicas, then the newest name (names sort by creation time);
 *   2. else a version that each of those groups has on some replica (a
 *      request that lands on a replica without it is answered NOT_FOUND
 *      and tried again elsewhere);
 *   3. else no version is held everywhere (--keep-previous off, or a group
 *      two versions behind): the version whose groups cover the most
 *      items, and the other groups are left out. Answers are then partial
 *      and say so, but never mix versions.
 * Groups whose shards overlap a group earlier in the configuration are
 * left out of that collection (each shard is searched once), with a warning.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "wire/wire.h"

#include <nng/protocol/reqrep0/req.h>
#include "router/router_int.h"

static void
on_pipe_event(nng_pipe p, nng_pipe_ev ev, void *arg)
{
	struct rt_group *g = arg;
	(void) p;
	if (ev == NNG_PIPE_EV_ADD_POST) {
		atomic_fetch_add(&g->pipes, 1);
	} else {
		atomic_fetch_sub(&g->pipes, 1);
		atomic_fetch_add(&g->m.disconnects, 1);
	}
}

/* open_req opens a REQ socket as the router wants them: no timed resend (a
 * slow search is not run twice), fast redial of a replica that restarts. */
static int
open_req(nng_socket *sock, uint64_t max_message)
{
	int rv = nng_req0_open(sock);
	if (rv != 0)
		return cdx_error(cdx__nng_code(rv), "cannot open a REQ socket: %s", nng_strerror(rv));
	nng_socket_set_ms(*sock, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE);
	nng_socket_set_ms(*sock, NNG_OPT_RECONNMINT, 10);
	nng_socket_set_ms(*sock, NNG_OPT_RECONNMAXT, 500);
	nng_socket_set_size(*sock, NNG_OPT_RECVMAXSZ, (size_t) max_message);
	return CDX_OK;
}

static int
dial(nng_socket sock, const char *url, nng_dialer *d)
{
	int rv = nng_dialer_create(d, sock, url);
	if (rv == 0)
		rv = nng_dialer_start(*d, NNG_FLAG_NONBLOCK);
	if (rv != 0)
		return cdx_error(cdx__nng_code(rv), "cannot dial '%s': %s", url, nng_strerror(rv));
	return CDX_OK;
}

/* replica_add dials url as a new replica of g (r->mu held, or before the
 * poller runs). */
static int
replica_add(cdx_router *r, struct rt_group *g, const char *url)
{
	struct rt_replica *rep = calloc(1, sizeof(*rep)), **grown;
	if (rep == NULL || (grown = realloc(g->rep, (g->nrep + 1) * sizeof(*grown))) == NULL) {
		free(rep);
		return cdx_error(CDX_ENOMEM, "out of memory");
	}
	g->rep = grown;
	snprintf(rep->url, sizeof(rep->url), "%s", url);
	snprintf(rep->why, sizeof(rep->why), "not polled yet");
	rep->keep = 1;
	int rc = open_req(&rep->poll, r->cfg.max_message);
	if (rc != CDX_OK) {
		free(rep);
		return rc;
	}
	nng_dialer pd;
	if ((rc = dial(g->sock, url, &rep->dialer)) != CDX_OK || (rc = dial(rep->poll, url, &pd)) != CDX_OK) {
		nng_close(rep->poll);
		free(rep);
		return rc;
	}
	g->rep[g->nrep++] = rep;
	cdx_info("RT-MEMBER", "group %s: replica %s added", g->name, url);
	return CDX_OK;
}

static void
replica_free(struct rt_group *g, struct rt_replica *rep)
{
	nng_dialer_close(rep->dialer); /* its waiting requests go to other replicas */
	nng_close(rep->poll);          /* no poll is outstanding: the poller is the caller */
	if (rep->info != NULL)
		candex__v1__info_response__free_unpacked(rep->info, NULL);
	cdx_info("RT-MEMBER", "group %s: replica %s removed", g->name, rep->url);
	free(rep);
}

int
cdx__rt_groups_open(cdx_router *r)
{
	int rc = CDX_OK;
	if ((r->groups = calloc(r->cfg.ngroups, sizeof(*r->groups))) == NULL)
		return cdx_error(CDX_ENOMEM, "out of memory");
	for (unsigned i = 0; i < r->cfg.ngroups && rc == CDX_OK; i++) {
		struct rt_group *g = &r->groups[i];
		const char *spec = r->cfg.group[i], *eq = strchr(spec, '=');
		snprintf(g->name, sizeof(g->name), "%.*s", (int) (eq - spec), spec);
		snprintf(g->members, sizeof(g->members), "%s", eq + 1);
		if ((rc = open_req(&g->sock, r->cfg.max_message)) != CDX_OK)
			break;
		r->ngroups = i + 1;
		nng_pipe_notify(g->sock, NNG_PIPE_EV_ADD_POST, on_pipe_event, g);
		nng_pipe_notify(g->sock, NNG_PIPE_EV_REM_POST, on_pipe_event, g);
		if (strncmp(g->members, "dns:", 4) == 0) {
			const char *hp = g->members + 4, *colon = strrchr(hp, ':');
			if (colon == NULL || colon == hp || colon[1] == '\0'
			    || (size_t) (colon - hp) >= sizeof(g->dns_host)
			    || strlen(colon + 1) >= sizeof(g->dns_port))
				return cdx_error(
				    CDX_EINVAL, "group %s: '%s' is not dns:HOST:PORT", g->name, g->members);
			g->dns = 1;
			snprintf(g->dns_host, sizeof(g->dns_host), "%.*s", (int) (colon - hp), hp);
			snprintf(g->dns_port, sizeof(g->dns_port), "%s", colon + 1);
			continue;
		}
		char *copy = strdup(g->members), *save = NULL;
		if (copy == NULL)
			return cdx_error(CDX_ENOMEM, "out of memory");
		for (char *url = strtok_r(copy, ",", &save); url != NULL && rc == CDX_OK;
		     url = strtok_r(NULL, ",", &save))
			rc = replica_add(r, g, url);
		free(copy);
		if (rc == CDX_OK && g->nrep == 0)
			rc = cdx_error(CDX_EINVAL, "group %s has no replica URL", g->name);
	}
	return rc;
}

void
cdx__rt_groups_close(cdx_router *r)
{
	for (size_t i = 0; i < r->ngroups; i++) {
		struct rt_group *g = &r->groups[i];
		nng_close(g->sock);
		for (size_t j = 0; j < g->nrep; j++) {
			nng_close(g->rep[j]->poll);
			if (g->rep[j]->info != NULL)
				candex__v1__info_response__free_unpacked(g->rep[j]->info, NULL);
			free(g->rep[j]);
		}
		free(g->rep);
	}
	free(r->groups);
	r->groups = NULL;
	r->ngroups = 0;
	cdx__rt_view_put(r->view);
	r->view = NULL;
}

/* ---- DNS ---------------------------------------------------------------- */

/* resolve dials the addresses g's host resolves to that are not replicas
 * yet and closes the replicas whose address is gone. A failed lookup keeps
 * the replicas as they are (DNS trouble is not a reason to drop them). */
static void
resolve(cdx_router *r, struct rt_group *g)
{
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *res = NULL;
	int gai = getaddrinfo(g->dns_host, g->dns_port, &hints, &res);
	if (gai != 0) {
		cdx_warn("RT-DNS", "group %s: cannot resolve %s: %s; keeping %zu replica(s)", g->name,
		    g->dns_host, gai_strerror(gai), g->nrep);
		return;
	}
	pthread_mutex_lock(&r->mu);
	for (size_t j = 0; j < g->nrep; j++)
		g->rep[j]->keep = 0;
	for (struct addrinfo *a = res; a != NULL; a = a->ai_next) {
		char ip[INET6_ADDRSTRLEN], url[320];
		const void *addr = a->ai_family == AF_INET6
		    ? (const void *) &((struct sockaddr_in6 *) a->ai_addr)->sin6_addr
		    : (const void *) &((struct sockaddr_in *) a->ai_addr)->sin_addr;
		if ((a->ai_family != AF_INET && a->ai_family != AF_INET6)
		    || inet_ntop(a->ai_family, addr, ip, sizeof(ip)) == NULL)
			continue;
		snprintf(url, sizeof(url), a->ai_family == AF_INET6 ? "tcp://[%s]:%s" : "tcp://%s:%s", ip,
		    g->dns_port);
		size_t j = 0;
		while (j < g->nrep && strcmp(g->rep[j]->url, url) != 0)
			j++;
		if (j < g->nrep)
			g->rep[j]->keep = 1;
		else if (replica_add(r, g, url) != CDX_OK)
			cdx_warn("RT-MEMBER", "group %s: %s", g->name, cdx_last_error());
	}
	freeaddrinfo(res);
	struct rt_replica *gone[64];
	size_t ngone = 0;
	for (size_t j = 0; j < g->nrep;) {
		if (!g->rep[j]->keep && ngone < CDX_ARRAY_LEN(gone)) {
			gone[ngone++] = g->rep[j];
			g->rep[j] = g->rep[--g->nrep];
		} else {
			j++;
		}
	}
	pthread_mutex_unlock(&r->mu);
	for (size_t j = 0; j < ngone; j++)
		replica_free(g, gone[j]);
}

/* ---- polls -------------------------------------------------------------- */

struct poll_slot {
	struct rt_replica *rep;
	nng_aio *aio;
	int rv;
};

/* poll_all asks every replica for its collections, all at once, and
 * records who answered. Only the poller touches replicas' poll sockets. */
static void
poll_all(cdx_router *r)
{
	size_t n = 0, cap = 0;
	for (size_t i = 0; i < r->ngroups; i++)
		cap += r->groups[i].nrep;
	struct poll_slot *slots = calloc(cap ? cap : 1, sizeof(*slots));
	Candex__V1__Request req = CANDEX__V1__REQUEST__INIT;
	Candex__V1__InfoRequest ir = CANDEX__V1__INFO_REQUEST__INIT;
	req.protocol_version = CDX_PROTOCOL_VERSION;
	req.request_id = (char *) "candex-route-poll";
	req.body_case = CANDEX__V1__REQUEST__BODY_INFO;
	req.info = &ir;
	if (slots == NULL)
		return;
	nng_duration wait = (nng_duration) CDX_MIN(r->cfg.poll_ms, 1000u);
	for (size_t i = 0; i < r->ngroups; i++) {
		for (size_t j = 0; j < r->groups[i].nrep; j++) {
			struct poll_slot *sl = &slots[n];
			nng_msg *msg;
			sl->rep = r->groups[i].rep[j];
			if (nng_aio_alloc(&sl->aio, NULL, NULL) != 0)
				continue;
			n++;
			if (cdx__wire_pack(&req.base, &msg) != CDX_OK) {
				sl->rv = NNG_ENOMEM;
				continue;
			}
			nng_aio_set_timeout(sl->aio, wait);
			nng_aio_set_msg(sl->aio, msg);
			nng_send_aio(sl->rep->poll, sl->aio);
		}
	}
	for (size_t i = 0; i < n; i++) {
		if (slots[i].rv != 0)
			continue;
		nng_aio_wait(slots[i].aio);
		if ((slots[i].rv = nng_aio_result(slots[i].aio)) != 0) {
			nng_msg_free(nng_aio_get_msg(slots[i].aio));
			continue;
		}
		nng_aio_set_timeout(slots[i].aio, wait);
		nng_recv_aio(slots[i].rep->poll, slots[i].aio);
	}
	for (size_t i = 0; i < n; i++) {
		struct poll_slot *sl = &slots[i];
		Candex__V1__Response *resp = NULL;
		if (sl->rv == 0) {
			nng_aio_wait(sl->aio);
			sl->rv = nng_aio_result(sl->aio);
		}
		if (sl->rv == 0) {
			nng_msg *msg = nng_aio_get_msg(sl->aio);
			resp = candex__v1__response__unpack(NULL, nng_msg_len(msg), nng_msg_body(msg));
			nng_msg_free(msg);
		}
		pthread_mutex_lock(&r->mu);
		int was_up = sl->rep->up;
		/* A busy replica may answer a poll late: it stays up, with what it
		 * last reported, until RT_POLL_MISSES polls in a row time out.
		 * Requests to it meanwhile are bounded by their deadline, and nng
		 * sends none to a replica whose connection is gone. */
		int late = sl->rv == NNG_ETIMEDOUT && was_up && ++sl->rep->polls_timed_out < RT_POLL_MISSES;
		if (late) {
			/* keep it as it is */
		} else if (resp != NULL && resp->status == 0
		    && resp->body_case == CANDEX__V1__RESPONSE__BODY_INFO) {
			sl->rep->polls_timed_out = 0;
			if (sl->rep->info != NULL)
				candex__v1__info_response__free_unpacked(sl->rep->info, NULL);
			sl->rep->info = resp->info; /* moved out of resp */
			resp->info = NULL;
			resp->body_case = CANDEX__V1__RESPONSE__BODY__NOT_SET;
			sl->rep->up = 1;
			sl->rep->why[0] = '\0';
		} else {
			sl->rep->up = 0;
			snprintf(sl->rep->why, sizeof(sl->rep->why), "%s",
			    sl->rv != 0        ? nng_strerror(sl->rv)
			        : resp == NULL ? "answer does not decode"
			        : resp->status
			        ? (resp->message ? resp->message : cdx_errname((int) resp->status))
			        : "not an info answer");
		}
		if (was_up != sl->rep->up)
			cdx_log(sl->rep->up ? CDX_LOG_INFO : CDX_LOG_WARN, "RT-REPLICA",
			    "replica %s is %s%s%s", sl->rep->url, sl->rep->up ? "up" : "down",
			    sl->rep->up ? "" : ": ", sl->rep->why);
		pthread_mutex_unlock(&r->mu);
		if (resp != NULL)
			candex__v1__response__free_unpacked(resp, NULL);
		nng_aio_free(sl->aio);
	}
	free(slots);
}

/* ---- the view ------------------------------------------------------------- */

static const Candex__V1__CollectionInfo *
find_info(const struct rt_replica *rep, const char *name)
{
	if (!rep->up || rep->info == NULL)
		return NULL;
	for (size_t i = 0; i < rep->info->n_collections; i++)
		if (strcmp(rep->info->collections[i]->name, name) == 0)
			return rep->info->collections[i];
	return NULL;
}

/* served_before: whether a replica of g that is down served the
 * collection when it last answered (so its shards are missing now). */
static int
served_before(const struct rt_group *g, const char *name)
{
	for (size_t j = 0; j < g->nrep; j++) {
		const Candex__V1__InfoResponse *info = g->rep[j]->info;
		for (size_t i = 0; !g->rep[j]->up && info != NULL && i < info->n_collections; i++)
			if (strcmp(info->collections[i]->name, name) == 0)
				return 1;
	}
	return 0;
}

static int
holds(const Candex__V1__CollectionInfo *ci, const char *version)
{
	return strcmp(ci->version, version) == 0
	    || (ci->previous_version != NULL && strcmp(ci->previous_version, version) == 0);
}

/* A version some replica holds, with what the rule needs to know of it. */
struct candidate {
	char version[CDX_NAME_MAX];
	unsigned everywhere; /* groups where every replica up holds it */
	unsigned somewhere;  /* groups where some replica up holds it */
	unsigned current;    /* replicas serving it as current */
	uint64_t items;      /* items served by the groups that hold it (current versions' counts) */
};

struct group_part {
	int serves;                             /* some replica up holds the collection */
	const Candex__V1__CollectionInfo *info; /* one replica's view of it */
	int overlaps;
};

static void
note_candidate(struct candidate *cand, size_t *n, size_t cap, const char *version)
{
	for (size_t i = 0; i < *n; i++)
		if (strcmp(cand[i].version, version) == 0)
			return;
	if (*n < cap) {
		memset(&cand[*n], 0, sizeof(cand[*n]));
		snprintf(cand[*n].version, sizeof(cand[*n].version), "%s", version);
		(*n)++;
	}
}

static int
better(const struct candidate *a, const struct candidate *b)
{
	if (a->current != b->current)
		return a->current > b->current;
	return strcmp(a->version, b->version) > 0;
}

/* route_collection applies the version rule to one collection (r->mu held). */
static void
route_collection(cdx_router *r, const char *name, struct rt_route *rt)
{
	struct group_part part[CDX_ROUTER_MAX_GROUPS];
	struct candidate cand[32];
	size_t ncand = 0, nserving = 0;
	memset(part, 0, sizeof(part));
	memset(rt, 0, sizeof(*rt));
	snprintf(rt->name, sizeof(rt->name), "%s", name);

	/* which groups serve it, and without overlapping an earlier group */
	uint8_t taken[4096 / 8] = { 0 };
	for (size_t gi = 0; gi < r->ngroups; gi++) {
		struct rt_group *g = &r->groups[gi];
		for (size_t j = 0; j < g->nrep; j++) {
			const Candex__V1__CollectionInfo *ci = find_info(g->rep[j], name);
			if (ci == NULL)
				continue;
			part[gi].serves = 1;
			if (part[gi].info == NULL)
				part[gi].info = ci;
			note_candidate(cand, &ncand, CDX_ARRAY_LEN(cand), ci->version);
			if (ci->previous_version != NULL && ci->previous_version[0] != '\0')
				note_candidate(cand, &ncand, CDX_ARRAY_LEN(cand), ci->previous_version);
		}
		if (!part[gi].serves)
			continue;
		const Candex__V1__CollectionInfo *ci = part[gi].info;
		for (size_t s = 0; s < ci->n_shards_served; s++)
			if (ci->shards_served[s] < 4096
			    && (taken[ci->shards_served[s] / 8] >> (ci->shards_served[s] % 8) & 1))
				part[gi].overlaps = 1;
		if (part[gi].overlaps)
			continue; /* RT-ROUTE says so when the routing changes */
		for (size_t s = 0; s < ci->n_shards_served; s++)
			if (ci->shards_served[s] < 4096)
				taken[ci->shards_served[s] / 8]
				    |= (uint8_t) (1u << (ci->shards_served[s] % 8));
		nserving++;
	}
	/* how each version stands */
	for (size_t c = 0; c < ncand; c++) {
		for (size_t gi = 0; gi < r->ngroups; gi++) {
			struct rt_group *g = &r->groups[gi];
			if (!part[gi].serves || part[gi].overlaps)
				continue;
			unsigned up = 0, with = 0;
			for (size_t j = 0; j < g->nrep; j++) {
				const Candex__V1__CollectionInfo *ci = find_info(g->rep[j], name);
				if (ci == NULL)
					continue;
				up++;
				if (holds(ci, cand[c].version))
					with++;
				if (strcmp(ci->version, cand[c].version) == 0)
					cand[c].current++;
			}
			if (with > 0) {
				cand[c].somewhere++;
				cand[c].items += part[gi].info->items_served;
			}
			if (with == up)
				cand[c].everywhere++;
		}
	}
	int best = -1, tier = 0;
	for (size_t c = 0; c < ncand; c++) {
		int t = cand[c].everywhere == nserving ? 3 : cand[c].somewhere == nserving ? 2 : 1;
		if (best < 0 || t > tier
		    || (t == tier
		        && (t == 1 ? cand[c].items > cand[best].items
		                    || (cand[c].items == cand[best].items && better(&cand[c], &cand[best]))
		                   : better(&cand[c], &cand[best])))) {
			best = (int) c;
			tier = t;
		}
	}
	if (best < 0)
		return;
	if (tier == 1)
		atomic_fetch_add(&r->version_skew, 1);
	snprintf(rt->version, sizeof(rt->version), "%s", cand[best].version);
	size_t used = 0;
	for (size_t gi = 0; gi < r->ngroups; gi++) {
		struct rt_group *g = &r->groups[gi];
		const char *why = NULL;
		int with = 0;
		for (size_t j = 0; j < g->nrep && !with; j++) {
			const Candex__V1__CollectionInfo *ci = find_info(g->rep[j], name);
			with = ci != NULL && holds(ci, rt->version);
		}
		if (part[gi].overlaps)
			why = "serves shards an earlier group serves (give groups disjoint --shards)";
		else if (part[gi].serves && !with)
			why = "does not hold this version";
		else if (!part[gi].serves && served_before(g, name))
			why = "has no replica up";
		else if (!part[gi].serves)
			continue; /* not a group of this collection */
		if (why != NULL) {
			int w = snprintf(rt->left_out + used, sizeof(rt->left_out) - used, "%s%s %s",
			    used ? "; " : "", g->name, why);
			used = w > 0 ? CDX_MIN(used + (size_t) w, sizeof(rt->left_out) - 1) : used;
			continue;
		}
		rt->group[rt->ngroups++] = (uint16_t) gi;
		const Candex__V1__CollectionInfo *pi = part[gi].info;
		uint32_t *grown
		    = realloc(rt->served, (rt->nserved + pi->n_shards_served + 1) * sizeof(*grown));
		if (grown != NULL) {
			rt->served = grown;
			memcpy(rt->served + rt->nserved, pi->shards_served,
			    pi->n_shards_served * sizeof(*grown));
			rt->nserved += (uint32_t) pi->n_shards_served;
		}
		rt->items_served += pi->items_served;
		/* the version's description, preferably from a replica serving it as current */
		for (size_t j = 0; j < g->nrep; j++) {
			const Candex__V1__CollectionInfo *ci = find_info(g->rep[j], name);
			if (ci == NULL || (rt->dim != 0 && strcmp(ci->version, rt->version) != 0))
				continue;
			rt->dim = ci->dim;
			rt->shards = ci->shards;
			rt->items = ci->items;
			rt->nlist = ci->nlist;
			rt->default_nprobe = ci->default_nprobe;
			rt->loaded_unix_ms = ci->loaded_unix_ms;
			snprintf(rt->metric, sizeof(rt->metric), "%s", ci->metric ? ci->metric : "");
			snprintf(rt->factory, sizeof(rt->factory), "%s", ci->factory ? ci->factory : "");
			snprintf(rt->model_version, sizeof(rt->model_version), "%s",
			    ci->model_version ? ci->model_version : "");
			snprintf(rt->refine, sizeof(rt->refine), "%s", ci->refine ? ci->refine : "");
		}
	}
}

static int
cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *) a, y = *(const uint32_t *) b;
	return x < y ? -1 : x > y;
}

static int
cmp_route(const void *a, const void *b)
{
	return strcmp(((const struct rt_route *) a)->name, ((const struct rt_route *) b)->name);
}

/* same_routing: whether two routes send requests the same way. */
static int
same_routing(const struct rt_route *a, const struct rt_route *b)
{
	return strcmp(a->version, b->version) == 0 && a->ngroups == b->ngroups
	    && memcmp(a->group, b->group, a->ngroups * sizeof(a->group[0])) == 0
	    && strcmp(a->left_out, b->left_out) == 0;
}

/* make_view computes the routing of every collection some replica serves
 * and swaps it in, logging what changed. */
static void
make_view(cdx_router *r)
{
	struct rt_view *v = calloc(1, sizeof(*v));
	if (v == NULL)
		return;
	atomic_init(&v->refs, 1);
	pthread_mutex_lock(&r->mu);
	size_t cap = 0;
	for (size_t gi = 0; gi < r->ngroups; gi++)
		for (size_t j = 0; j < r->groups[gi].nrep; j++)
			if (r->groups[gi].rep[j]->up && r->groups[gi].rep[j]->info != NULL)
				cap += r->groups[gi].rep[j]->info->n_collections;
	v->route = calloc(cap ? cap : 1, sizeof(*v->route));
	if (v->route == NULL) {
		pthread_mutex_unlock(&r->mu);
		free(v);
		return;
	}
	for (size_t gi = 0; gi < r->ngroups; gi++) {
		for (size_t j = 0; j < r->groups[gi].nrep; j++) {
			const struct rt_replica *rep = r->groups[gi].rep[j];
			for (size_t c = 0; rep->up && rep->info != NULL && c < rep->info->n_collections;
			     c++) {
				const char *name = rep->info->collections[c]->name;
				if (cdx__rt_view_find(v, name) != NULL)
					continue;
				route_collection(r, name, &v->route[v->n]);
				if (v->route[v->n].version[0] != '\0') {
					qsort(v->route[v->n].served, v->route[v->n].nserved, sizeof(uint32_t),
					    cmp_u32);
					v->n++;
				} else {
					free(v->route[v->n].served);
				}
			}
		}
	}
	qsort(v->route, v->n, sizeof(*v->route), cmp_route);
	struct rt_view *old = r->view;
	r->view = v;
	pthread_mutex_unlock(&r->mu);
	for (size_t i = 0; i < v->n; i++) {
		const struct rt_route *rt = &v->route[i];
		const struct rt_route *was = old ? cdx__rt_view_find(old, rt->name) : NULL;
		if (was != NULL && same_routing(was, rt))
			continue;
		char groups[512] = "";
		size_t used = 0;
		for (uint32_t k = 0; k < rt->ngroups && used + 1 < sizeof(groups); k++) {
			int w = snprintf(groups + used, sizeof(groups) - used, "%s%s", k ? "," : "",
			    r->groups[rt->group[k]].name);
			used = w > 0 ? CDX_MIN(used + (size_t) w, sizeof(groups) - 1) : used;
		}
		cdx_log(rt->left_out[0] ? CDX_LOG_WARN : CDX_LOG_INFO, "RT-ROUTE",
		    "collection %s: version %s from group(s) %s%s%s", rt->name, rt->version, groups,
		    rt->left_out[0] ? "; left out: " : "", rt->left_out);
	}
	for (size_t i = 0; old != NULL && i < old->n; i++)
		if (cdx__rt_view_find(v, old->route[i].name) == NULL)
			cdx_warn(
			    "RT-ROUTE", "collection %s: no replica serves it any more", old->route[i].name);
	cdx__rt_view_put(old);
}

struct rt_view *
cdx__rt_view_get(cdx_router *r)
{
	pthread_mutex_lock(&r->mu);
	struct rt_view *v = r->view;
	if (v != NULL)
		atomic_fetch_add(&v->refs, 1);
	pthread_mutex_unlock(&r->mu);
	return v;
}

void
cdx__rt_view_put(struct rt_view *v)
{
	if (v == NULL || atomic_fetch_sub(&v->refs, 1) != 1)
		return;
	for (size_t i = 0; i < v->n; i++)
		free(v->route[i].served);
	free(v->route);
	free(v);
}

const struct rt_route *
cdx__rt_view_find(const struct rt_view *v, const char *name)
{
	for (size_t i = 0; v != NULL && i < v->n; i++)
		if (strcmp(v->route[i].name, name) == 0)
			return &v->route[i];
	return NULL;
}

void
cdx__rt_group_shards(cdx_router *r, size_t gi, const char *collection, char *out, size_t size)
{
	struct rt_group *g = &r->groups[gi];
	snprintf(out, size, "?");
	pthread_mutex_lock(&r->mu);
	for (size_t j = 0; j < g->nrep; j++) {
		const Candex__V1__CollectionInfo *ci = find_info(g->rep[j], collection);
		if (ci != NULL) {
			cdx__rt_shard_ranges(ci->shards_served, ci->n_shards_served, out, size);
			break;
		}
	}
	pthread_mutex_unlock(&r->mu);
}

/* ---- the poller thread ---------------------------------------------------- */

static void *
poller_main(void *arg)
{
	cdx_router *r = arg;
	uint64_t next_dns = 0;
	pthread_mutex_lock(&r->p_mu);
	while (!r->p_stop) {
		pthread_mutex_unlock(&r->p_mu);
		uint64_t now = cdx_now_us();
		if (now >= next_dns) {
			for (size_t i = 0; i < r->ngroups; i++)
				if (r->groups[i].dns)
					resolve(r, &r->groups[i]);
			next_dns = now + (uint64_t) (r->cfg.dns_interval * 1e6);
		}
		poll_all(r);
		make_view(r);
		pthread_mutex_lock(&r->p_mu);
		r->polls++;
		if (r->p_stop)
			break;
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		uint64_t ns = (uint64_t) ts.tv_nsec + (uint64_t) r->cfg.poll_ms * 1000000u;
		ts.tv_sec += (time_t) (ns / 1000000000u);
		ts.tv_nsec = (long) (ns % 1000000000u);
		pthread_cond_timedwait(&r->p_cv, &r->p_mu, &ts);
	}
	pthread_mutex_unlock(&r->p_mu);
	return NULL;
}

int
cdx__rt_poller_start(cdx_router *r)
{
	if (pthread_create(&r->poller, NULL, poller_main, r) != 0)
		return cdx_error(CDX_ENOMEM, "cannot start the poller thread");
	r->poller_started = 1;
	return CDX_OK;
}

void
cdx__rt_poller_stop(cdx_router *r)
{
	if (!r->poller_started)
		return;
	pthread_mutex_lock(&r->p_mu);
	r->p_stop = 1;
	pthread_cond_signal(&r->p_cv);
	pthread_mutex_unlock(&r->p_mu);
	pthread_join(r->poller, NULL);
	r->poller_started = 0;
}
