"""Hypothesis profiles of the fuzz tests. FUSEDOPS_FUZZ_PROFILE picks one:

* ``ci`` (default): a fixed, reproducible set of examples per op (derandomized), small enough for the test suite;
* ``long`` (``make fuzz``): FUSEDOPS_FUZZ_EXAMPLES (default 2,000) random examples per op.
"""

import os

from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
settings.register_profile("ci", max_examples=int(os.environ.get("FUSEDOPS_FUZZ_EXAMPLES", 200)), derandomize=True,
                          **_COMMON)
settings.register_profile("long", max_examples=int(os.environ.get("FUSEDOPS_FUZZ_EXAMPLES", 2000)), **_COMMON)

PROFILE = os.environ.get("FUSEDOPS_FUZZ_PROFILE", "ci")
FUZZ = settings(settings.get_profile(PROFILE))
