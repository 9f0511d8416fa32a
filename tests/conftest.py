import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads libgomp; see flow/__init__.py

from engine_io.cache import cache_root  # noqa: E402

try:
    from hypothesis.configuration import set_hypothesis_home_dir
except ModuleNotFoundError:   # an environment without hypothesis (a board's): nothing of it to redirect
    set_hypothesis_home_dir = None

# hypothesis keeps its example database (and, from collection on, the constants it scans) in ./.hypothesis by
# default: collecting the tests must write nothing into the repository, so it goes to the kit's cache
if set_hypothesis_home_dir is not None:
    set_hypothesis_home_dir(cache_root() / "hypothesis")
