/*
 * adapt.c — recall that corrects itself: the server moves a collection up
 * its ladder of operating points when online recall stays below the target,
 * and back down when the cheaper point would reach it again.
 *
 * DESIGN
 * What is judged. Only queries served from operating points (no nprobe in
 * the request) carry a note to the online checker (src/recall/online.h):
 * the recall target they were served for, their refine factor, their k tier
 * (cdx_points_tier) and the escalation they were served with, i.e. how many
 * rungs above the first that reaches the target (cdx_points_choose). The
 * checker re-runs each sampled query exactly and calls cdx__srv_adapt_check
 * on its own thread, within its CPU budget.
 *
 * State. One state per (served collection version, k tier), in a fixed
 * table. A state collects a window of checked queries served at its current
 * escalation (samples served before a move are ignored). When the window
 * has at least --adapt-window queries and spans --adapt-window-seconds, it
 * decides once and starts a new window:
 *   - up one rung when the served recall is below the target with 95%
 *     confidence: mean(recall - target) + 1.645 x its standard error < 0,
 *     as long as there is a rung above and fewer than --adapt-max-rungs
 *     were added;
 *   - down one rung when the rung below reaches the target with 95%
 *     confidence: mean(recall one rung lower - target) - 1.645 x its
 *     standard error >= 0. While escalated, the checker also searches each
 *     sampled query one rung lower (off the request path) and judges that
 *     answer against the same exact one, so "would the cheaper point do?"
 *     is measured on today's traffic, paired query by query, not guessed
 *     from the tuning queries' figures.
 * The two rules are the hysteresis: going up needs the served rung to be
 * shown short, going down needs the rung below to be shown sufficient, so
 * steady traffic between the two does not move it; each decision needs a
 * full new window.
 *
 * Requests read the escalation without a lock: one relaxed atomic load of
 * the count of escalated states (zero almost always), and only when some
 * state is escalated a scan of the table comparing the collection pointer
 * (seqlock-style re-check, so a state reused meanwhile is not misread).
 *
 * Reset. A state belongs to one cdx_collection, and a new version or a
 * points-only reload is a new cdx_collection (the ladder may have changed):
 * after every reload swap, cdx__srv_adapt_sync frees the states of
 * collections no longer served, so they start again at the chosen point.
 * States are handed out only to collections that are served at that moment
 * (checked under the lock against what sync last saw), so a state never
 * outlives its collection's place in the set, and a freed collection's
 * address cannot be mistaken for a later one.
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "recall/online.h"
#include "search/points.h"
#include "server/server.h"

#define ADAPT_MAX_STATES 64    /* (collection, k tier) pairs adapted at once */
#define ADAPT_MAX_NAMES  64    /* collections tracked (move counters) */
#define ADAPT_Z          1.645 /* one-sided 95%, as candex recall --target */

/* What a served query's note says (see DESIGN). */
struct adapt_note {
	float recall_target; /* the target served */
	float refine_factor; /* the request's own (0 = the point's) */
	uint32_t escalate;   /* rungs above the chosen point */
	uint32_t tier;       /* cdx_points_tier of the request's k */
};

/* Sums over one window of checked queries. */
struct window {
	uint64_t start_us;
	uint32_t n;               /* queries judged as served */
	double sum, sum2;         /* of recall - target */
	double target_sum;        /* of targets (for the log) */
	uint32_t nbelow;          /* queries also judged one rung lower */
	double below_sum, below2; /* of recall one rung lower - target */
};

struct adapt_state {
	/* read by request threads without a lock */
	atomic_uintptr_t coll;     /* the cdx_collection; 0 = free */
	atomic_uint_fast64_t word; /* tier << 32 | escalate */
	/* below: under mu */
	uint32_t name;     /* index into names */
	uint32_t tier;     /* k tier */
	uint32_t escalate; /* rungs above the chosen point */
	struct window w;
};

/* A served collection name: what sync saw last, and counters that survive
 * reloads (they are Prometheus counters). */
struct adapt_name {
	char name[CDX_NAME_MAX];
	char version[CDX_NAME_MAX];
	uintptr_t coll; /* the served cdx_collection; 0 = not served (compared, never dereferenced) */
	uint64_t ups, downs;
};

struct srv_adapt {
	uint32_t max_rungs, window;
	uint64_t window_us;
	atomic_uint nescalated; /* states with escalate > 0 */
	atomic_uint nstates;    /* high-water mark of states used */
	pthread_mutex_t mu;
	struct adapt_state states[ADAPT_MAX_STATES];
	struct adapt_name names[ADAPT_MAX_NAMES];
	uint32_t nnames;
	int full_logged;
};

int
cdx__srv_adapt_alloc(struct srv_adapt **ap, const struct cdx_server_config *cfg)
{
	*ap = NULL;
	if (cfg->adapt_max_rungs == 0)
		return CDX_OK;
	if (cfg->online_recall_fraction <= 0) {
		cdx_info("SRV-ADAPT",
		    "recall adaptation is off: it needs online recall (--online-recall-fraction)");
		return CDX_OK;
	}
	struct srv_adapt *a = calloc(1, sizeof(*a));
	if (a == NULL)
		return cdx_error(CDX_ENOMEM, "out of memory");
	a->max_rungs = cfg->adapt_max_rungs;
	a->window = cfg->adapt_window;
	a->window_us = (uint64_t) (cfg->adapt_window_seconds * 1e6);
	pthread_mutex_init(&a->mu, NULL);
	cdx_info("SRV-ADAPT",
	    "recall adaptation: up to %u rung(s) above the chosen operating point, deciding on windows of "
	    ">= %u checked queries and >= %g s",
	    a->max_rungs, a->window, cfg->adapt_window_seconds);
	*ap = a;
	return CDX_OK;
}

void
cdx__srv_adapt_free(struct srv_adapt *a)
{
	if (a == NULL)
		return;
	pthread_mutex_destroy(&a->mu);
	free(a);
}

/* ---- the request path ------------------------------------------------- */

uint32_t
cdx__srv_adapt_escalation(struct srv_adapt *a, const cdx_collection *c, uint32_t k)
{
	if (a == NULL || atomic_load_explicit(&a->nescalated, memory_order_relaxed) == 0)
		return 0;
	uint32_t tier = cdx_points_tier(cdx_collection_manifest(c), k);
	uint32_t n = atomic_load_explicit(&a->nstates, memory_order_acquire);
	for (uint32_t i = 0; i < n; i++) {
		struct adapt_state *st = &a->states[i];
		uintptr_t owner = atomic_load_explicit(&st->coll, memory_order_acquire);
		if (owner != (uintptr_t) c)
			continue;
		uint64_t word = atomic_load_explicit(&st->word, memory_order_acquire);
		if (atomic_load_explicit(&st->coll, memory_order_acquire) != owner)
			continue; /* reused while we read it */
		if ((uint32_t) (word >> 32) == tier)
			return (uint32_t) word;
	}
	return 0;
}

void
cdx__srv_recall_offer(cdx_server *s, cdx_collection *c, const struct cdx_search_params *p,
    const struct cdx_search_used *used, const float *query, const struct cdx_hit *hits, uint32_t nhits)
{
	if (s->online == NULL)
		return;
	if (s->adapt == NULL || p->nprobe != 0 || used->rungs == 0) {
		cdx_online_recall_offer(s->online, c, query, p->k, hits, nhits);
		return;
	}
	struct adapt_note note = {
		.recall_target = used->recall_target,
		.refine_factor = p->refine_factor,
		.escalate = p->escalate,
		.tier = cdx_points_tier(cdx_collection_manifest(c), p->k),
	};
	cdx_online_recall_offer_note(s->online, c, query, p->k, hits, nhits, &note, sizeof(note));
}

/* ---- the checker thread ----------------------------------------------- */

/* choose: the operating point a note's request gets at escalation e. */
static void
choose(
    const cdx_collection *c, uint32_t k, const struct adapt_note *n, uint32_t e, struct cdx_point_choice *pc)
{
	cdx_points_choose(cdx_collection_manifest(c), k, 0, n->refine_factor, n->recall_target, e, pc);
}

/* recall_one_rung_lower searches the checked query as it would have been
 * served one rung lower and judges that answer. NAN if it cannot. */
static double
recall_one_rung_lower(const struct cdx_online_check *chk, const struct adapt_note *n)
{
	struct cdx_hit *hits = malloc(chk->k * sizeof(*hits));
	if (hits == NULL)
		return NAN;
	struct cdx_search_params p = {
		.k = chk->k,
		.refine_factor = n->refine_factor,
		.recall_target = n->recall_target,
		.escalate = n->escalate - 1,
	};
	double r = NAN;
	if (cdx_collection_search(chk->c, &p, chk->query, 1, hits) == CDX_OK)
		r = cdx_online_check_recall(chk, hits, chk->k);
	free(hits);
	return r;
}

/* bounds: mean of n values (sum, sum of squares) and its one-sided 95%
 * confidence bounds. */
static void
bounds(uint32_t n, double sum, double sum2, double *mean, double *lo, double *hi)
{
	*mean = sum / n;
	double var = n > 1 ? (sum2 - sum * sum / n) / (n - 1) : 0;
	double half = ADAPT_Z * sqrt(var > 0 ? var / n : 0);
	*lo = *mean - half;
	*hi = *mean + half;
}

static void
publish(struct srv_adapt *a, struct adapt_state *st, uint32_t escalate)
{
	if (st->escalate == 0 && escalate > 0)
		atomic_fetch_add(&a->nescalated, 1);
	else if (st->escalate > 0 && escalate == 0)
		atomic_fetch_sub(&a->nescalated, 1);
	st->escalate = escalate;
	atomic_store_explicit(&st->word, (uint64_t) st->tier << 32 | escalate, memory_order_release);
}

static void
state_free(struct srv_adapt *a, struct adapt_state *st)
{
	publish(a, st, 0);
	atomic_store_explicit(&st->coll, 0, memory_order_release);
	atomic_store_explicit(&st->word, 0, memory_order_release);
	memset(&st->w, 0, sizeof(st->w));
}

/* state_for finds or makes the state of (name i, collection c, tier); lock held. */
static struct adapt_state *
state_for(struct srv_adapt *a, uint32_t name, const cdx_collection *c, uint32_t tier, uint64_t now)
{
	struct adapt_state *free_st = NULL;
	for (uint32_t i = 0; i < ADAPT_MAX_STATES; i++) {
		struct adapt_state *st = &a->states[i];
		uintptr_t owner = atomic_load_explicit(&st->coll, memory_order_relaxed);
		if (owner == (uintptr_t) c && st->tier == tier)
			return st;
		if (owner == 0 && free_st == NULL)
			free_st = st;
	}
	if (free_st == NULL) {
		if (!a->full_logged)
			cdx_warn("SRV-ADAPT",
			    "collection %s k %u: not adapted: %d (collection, k) pairs are adapted already",
			    a->names[name].name, tier, ADAPT_MAX_STATES);
		a->full_logged = 1;
		return NULL;
	}
	struct adapt_state *st = free_st;
	st->name = name;
	st->tier = tier;
	st->escalate = 0;
	memset(&st->w, 0, sizeof(st->w));
	st->w.start_us = now;
	/* word before owner: a reader that sees the owner sees this word */
	atomic_store_explicit(&st->word, (uint64_t) tier << 32, memory_order_release);
	atomic_store_explicit(&st->coll, (uintptr_t) c, memory_order_release);
	uint32_t used = (uint32_t) (st - a->states) + 1;
	if (used > atomic_load_explicit(&a->nstates, memory_order_relaxed))
		atomic_store_explicit(&a->nstates, used, memory_order_release);
	return st;
}

/* decide closes a full window of st: one move at most; lock held. */
static void
decide(struct srv_adapt *a, struct adapt_state *st, const struct cdx_online_check *chk,
    const struct adapt_note *n)
{
	const struct window *w = &st->w;
	struct adapt_name *nm = &a->names[st->name];
	double target = w->target_sum / w->n, mean, lo, hi;
	int dir = 0;
	bounds(w->n, w->sum, w->sum2, &mean, &lo, &hi);
	struct cdx_point_choice from, to;
	choose(chk->c, chk->k, n, st->escalate, &from);
	to = from;
	if (hi < 0 && st->escalate < a->max_rungs) {
		choose(chk->c, chk->k, n, st->escalate + 1, &to);
		if (to.rung > from.rung)
			dir = 1; /* else already at the top rung: nothing to climb to */
	}
	if (dir == 0 && st->escalate > 0 && w->nbelow >= a->window) {
		bounds(w->nbelow, w->below_sum, w->below2, &mean, &lo, &hi);
		if (lo >= 0) {
			choose(chk->c, chk->k, n, st->escalate - 1, &to);
			dir = -1;
		}
	}
	if (dir == 0)
		return;
	uint32_t was = st->escalate, now_e = dir > 0 ? was + 1 : was - 1;
	publish(a, st, now_e);
	if (dir > 0)
		nm->ups++;
	else
		nm->downs++;
	cdx_log(dir > 0 ? CDX_LOG_WARN : CDX_LOG_INFO, "SRV-ADAPT",
	    "collection %s k %u: %s %.3f (95%% bounds %.3f..%.3f over %u queries) %s target %.3f: rung "
	    "%u -> %u of %u (nprobe %u -> %u), %u rung(s) above the chosen point (max %u)",
	    nm->name, st->tier, dir > 0 ? "online recall" : "online recall one rung lower", mean + target,
	    lo + target, hi + target, dir > 0 ? w->n : w->nbelow, dir > 0 ? "below" : "reaches", target,
	    from.rung + 1, to.rung + 1, from.rungs, from.nprobe, to.nprobe, now_e, a->max_rungs);
}

void
cdx__srv_adapt_check(void *arg, const struct cdx_online_check *chk)
{
	struct srv_adapt *a = arg;
	struct adapt_note n;
	if (chk->note_size != sizeof(n))
		return;
	memcpy(&n, chk->note, sizeof(n));
	/* measured before taking the lock: a search is not short */
	double below = n.escalate > 0 ? recall_one_rung_lower(chk, &n) : NAN;
	uint64_t now = cdx_now_us();

	pthread_mutex_lock(&a->mu);
	uint32_t name = 0;
	while (name < a->nnames && a->names[name].coll != (uintptr_t) chk->c)
		name++;
	if (name == a->nnames)
		goto out; /* a version no longer served */
	struct adapt_state *st = state_for(a, name, chk->c, n.tier, now);
	if (st == NULL || n.escalate != st->escalate)
		goto out; /* served before the last move */
	struct window *w = &st->w;
	double d = chk->recall - n.recall_target;
	w->n++;
	w->sum += d;
	w->sum2 += d * d;
	w->target_sum += n.recall_target;
	if (!isnan(below)) {
		double db = below - n.recall_target;
		w->nbelow++;
		w->below_sum += db;
		w->below2 += db * db;
	}
	if (w->n >= a->window && now - w->start_us >= a->window_us) {
		decide(a, st, chk, &n);
		memset(w, 0, sizeof(*w));
		w->start_us = now;
	}
out:
	pthread_mutex_unlock(&a->mu);
}

/* ---- reloads and metrics ---------------------------------------------- */

/* name_reset frees every state of name i, logging those that were moved. */
static void
name_reset(struct srv_adapt *a, uint32_t i, const char *why)
{
	for (uint32_t j = 0; j < ADAPT_MAX_STATES; j++) {
		struct adapt_state *st = &a->states[j];
		if (atomic_load_explicit(&st->coll, memory_order_relaxed) != a->names[i].coll)
			continue;
		if (st->escalate > 0)
			cdx_info("SRV-ADAPT",
			    "collection %s k %u: %s: back to the chosen operating point (was %u rung(s) "
			    "above)",
			    a->names[i].name, st->tier, why, st->escalate);
		state_free(a, st);
	}
}

void
cdx__srv_adapt_sync(struct srv_adapt *a, const struct srv_set *set)
{
	if (a == NULL)
		return;
	pthread_mutex_lock(&a->mu);
	for (uint32_t i = 0; i < a->nnames; i++) {
		struct adapt_name *nm = &a->names[i];
		const struct srv_entry *e = NULL;
		for (size_t j = 0; set != NULL && j < set->n && e == NULL; j++)
			if (strcmp(set->e[j].name, nm->name) == 0)
				e = &set->e[j];
		if (e != NULL && (uintptr_t) e->coll == nm->coll)
			continue;
		if (nm->coll != 0) {
			const char *v = e != NULL ? cdx_collection_manifest(e->coll)->version : NULL;
			char why[160];
			if (v == NULL)
				snprintf(why, sizeof(why), "no longer served");
			else if (strcmp(v, nm->version) == 0)
				snprintf(why, sizeof(why), "operating points re-read");
			else
				snprintf(why, sizeof(why), "new version %s", v);
			name_reset(a, i, why);
		}
		nm->coll = e != NULL ? (uintptr_t) e->coll : 0;
		snprintf(nm->version, sizeof(nm->version), "%s",
		    e != NULL ? cdx_collection_manifest(e->coll)->version : "");
	}
	for (size_t j = 0; set != NULL && j < set->n; j++) {
		uint32_t i = 0;
		while (i < a->nnames && strcmp(a->names[i].name, set->e[j].name) != 0)
			i++;
		if (i < a->nnames || a->nnames == ADAPT_MAX_NAMES)
			continue; /* known (done above), or no room: not adapted */
		struct adapt_name *nm = &a->names[a->nnames++];
		memset(nm, 0, sizeof(*nm));
		snprintf(nm->name, sizeof(nm->name), "%s", set->e[j].name);
		snprintf(
		    nm->version, sizeof(nm->version), "%s", cdx_collection_manifest(set->e[j].coll)->version);
		nm->coll = (uintptr_t) set->e[j].coll;
	}
	pthread_mutex_unlock(&a->mu);
}

int
cdx__srv_adapt_render(struct srv_adapt *a, cdx_buf *b)
{
	if (a == NULL)
		return CDX_OK;
	pthread_mutex_lock(&a->mu);
	cdx_buf_printf(b,
	    "# HELP candex_adapt_max_rungs Most rungs recall adaptation may add above the chosen operating "
	    "point (--adapt-max-rungs).\n"
	    "# TYPE candex_adapt_max_rungs gauge\n"
	    "candex_adapt_max_rungs %u\n"
	    "# HELP candex_adapt_rungs Rungs above the operating point chosen for the recall target, "
	    "added because online recall fell below the target (per collection and k tier).\n"
	    "# TYPE candex_adapt_rungs gauge\n",
	    a->max_rungs);
	for (uint32_t i = 0; i < ADAPT_MAX_STATES; i++) {
		const struct adapt_state *st = &a->states[i];
		if (atomic_load_explicit(&st->coll, memory_order_relaxed) != 0)
			cdx_buf_printf(b, "candex_adapt_rungs{collection=\"%s\",k=\"%u\"} %u\n",
			    a->names[st->name].name, st->tier, st->escalate);
	}
	cdx_buf_printf(b,
	    "# HELP candex_adapt_moves_total Moves of recall adaptation, one rung up (online recall below "
	    "the target) or down (the cheaper rung reaches it again).\n"
	    "# TYPE candex_adapt_moves_total counter\n");
	for (uint32_t i = 0; i < a->nnames; i++)
		cdx_buf_printf(b,
		    "candex_adapt_moves_total{collection=\"%s\",direction=\"up\"} %llu\n"
		    "candex_adapt_moves_total{collection=\"%s\",direction=\"down\"} %llu\n",
		    a->names[i].name, (unsigned long long) a->names[i].ups, a->names[i].name,
		    (unsigned long long) a->names[i].downs);
	pthread_mutex_unlock(&a->mu);
	return b->data != NULL ? CDX_OK : CDX_ENOMEM;
}
