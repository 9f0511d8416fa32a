import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads libgomp; see flow/__init__.py
# `make test` runs the suite on pytest-xdist workers, one per core: each worker's torch and OpenMP get their
# share of the cores instead of all of them (2 workers x 2 threads on 2 cores only thrash)
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("OMP_NUM_THREADS",
                          str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

from engine_io.cache import cache_root  # noqa: E402

try:
    from hypothesis.configuration import set_hypothesis_home_dir
except ModuleNotFoundError:   # an environment without hypothesis (a board's): nothing of it to redirect
    set_hypothesis_home_dir = None

# hypothesis keeps its example database (and, from collection on, the constants it scans) in ./.hypothesis by
# default: collecting the tests must write nothing into the repository, so it goes to the kit's cache
if set_hypothesis_home_dir is not None:
    set_hypothesis_home_dir(cache_root() / "hypothesis")
