/*
 * soak_test.c — a short soak (soak.h): ten seconds of good clients,
 * malformed requests, vanishing clients, the memory attack and ten reloads,
 * then SIGTERM under attack. The long run with a hundred reloads is
 * tests/slow/soak_long_test.c.
 */
#include "integration/soak.h"

static void
test_soak_short(void **state)
{
	struct soak_result r = soak_run(3, 10, 10);
	soak_check(&r, 10, 0.05);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_soak_short),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
