# One image for the Ray head, every worker group and the platform's jobs (KubeRay runs
# `ray start` in it; the migration Job runs `atp migrate`).
#
#   docker build -t <registry>/ai-trading-platform:2.60.0 .
#   docker build --build-arg RAY_IMAGE_SUFFIX=-gpu \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 \
#       -t <registry>/ai-trading-platform:2.60.0-gpu .        # for the `gpu` worker group
#
# The base is the official Ray image of the Ray this project pins (pyproject.toml:
# ray[serve,tune]==2.60.0) for Python 3.11; the tag, the manifests' `rayVersion` and image
# tags must stay equal (tests/k8s/test_manifests.py checks all three).
ARG RAY_IMAGE_SUFFIX=""
FROM rayproject/ray:2.60.0-py311${RAY_IMAGE_SUFFIX}

# The CPU build of torch first, as the Makefile does: a bare requirement would pull a
# multi-GB CUDA build. The -gpu image passes a CUDA index instead.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RAY_USAGE_STATS_ENABLED=0

# The Ray image's user: `ray`, uid 1000, group `users` (gid 100). Numeric, so that
# Kubernetes' runAsNonRoot can check it.
USER 1000:100
WORKDIR /home/ray/atp

RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0

# The project (not editable, no dev extras). Ray itself is already the pinned version.
COPY --chown=1000:100 pyproject.toml README.md ./
COPY --chown=1000:100 trading ./trading
COPY --chown=1000:100 tenancy ./tenancy
COPY --chown=1000:100 actors ./actors
COPY --chown=1000:100 serve ./serve
COPY --chown=1000:100 models ./models
COPY --chown=1000:100 billing ./billing
COPY --chown=1000:100 agent ./agent
RUN pip install . \
    && python -c "import ray, serve.app; assert ray.__version__ == '2.60.0', ray.__version__"

# Serve imports `serve.deploy:gateway` from the installed package; jobs run
# `python -m actors.job_main` from their working directory.
WORKDIR /home/ray
