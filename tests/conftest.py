"""Suite-wide settings.

Under pytest-xdist (``make test``: one worker per core) every core already runs a test, so each worker
and every subprocess it starts uses one math thread: torch's, OpenMP's and the BLAS's default of one
thread per core would oversubscribe the CPU, and their threads spin-wait on one another. A serial run
(no xdist) keeps the library defaults. Set before any test module imports numpy or torch.
"""

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")
