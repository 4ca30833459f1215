# The image k8s/rayjob.yaml runs: Ray 2.60's GPU image with raydefense and its pins installed
# (torch first, pinned: the CUDA wheel on Linux). Build from the project root.
FROM rayproject/ray:2.60.0-py311-gpu
WORKDIR /home/ray/raydefense
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users raydefense ./raydefense
COPY --chown=ray:users jobs ./jobs
RUN pip install --no-cache-dir torch==2.13.0 && pip install --no-cache-dir -e .
