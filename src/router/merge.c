/*
 * merge.c — shard groups' answers to one query, merged into one top-k.
 *
 * Each group answers the top k of its shards, best first, ordered as
 * search.c orders candidates: by score (lower first for l2, higher first
 * otherwise), then by id. The top k of all shards is the top k of the
 * groups' top k, so sorting their union the same way and keeping k gives
 * exactly what one server holding every shard returns.
 */
#include <stdlib.h>
#include <string.h>

#include "router/router_int.h"

static int
before_low(const void *a, const void *b)
{
	const Candex__V1__Hit *x = *(Candex__V1__Hit *const *) a, *y = *(Candex__V1__Hit *const *) b;
	if (x->score != y->score)
		return x->score < y->score ? -1 : 1;
	return x->id < y->id ? -1 : x->id > y->id;
}

static int
before_high(const void *a, const void *b)
{
	const Candex__V1__Hit *x = *(Candex__V1__Hit *const *) a, *y = *(Candex__V1__Hit *const *) b;
	if (x->score != y->score)
		return x->score > y->score ? -1 : 1;
	return x->id < y->id ? -1 : x->id > y->id;
}

size_t
cdx__rt_merge_hits(Candex__V1__Hit **const *lists, const size_t *lens, size_t nlists, int higher_better,
    size_t k, Candex__V1__Hit **out)
{
	size_t total = 0, n = 0;
	for (size_t i = 0; i < nlists; i++)
		total += lens[i];
	if (total == 0 || k == 0)
		return 0;
	Candex__V1__Hit **all = malloc(total * sizeof(*all));
	if (all == NULL) {
		/* no room to sort: the first list alone is still a valid (worse) answer */
		for (size_t i = 0; i < nlists && n == 0; i++)
			for (size_t j = 0; j < lens[i] && n < k; j++)
				out[n++] = lists[i][j];
		return n;
	}
	for (size_t i = 0; i < nlists; i++) {
		memcpy(all + n, lists[i], lens[i] * sizeof(*all));
		n += lens[i];
	}
	qsort(all, total, sizeof(*all), higher_better ? before_high : before_low);
	n = 0;
	for (size_t j = 0; j < total && n < k; j++) {
		/* an item two groups both hold (overlapping --shards) comes once */
		if (n > 0 && out[n - 1]->id == all[j]->id)
			continue;
		out[n++] = all[j];
	}
	free(all);
	return n;
}

void
cdx__rt_shard_ranges(const uint32_t *shards, size_t n, char *out, size_t size)
{
	size_t used = 0;
	out[0] = '\0';
	for (size_t i = 0; i < n && used + 1 < size;) {
		size_t j = i;
		while (j + 1 < n && shards[j + 1] == shards[j] + 1)
			j++;
		int w = j > i
		    ? snprintf(out + used, size - used, "%s%u-%u", used ? "," : "", shards[i], shards[j])
		    : snprintf(out + used, size - used, "%s%u", used ? "," : "", shards[i]);
		if (w < 0)
			break;
		used += (size_t) w;
		i = j + 1;
	}
}
