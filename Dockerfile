# imagine-bot on an NVIDIA GPU: `docker compose up` (see compose.yaml and docs/deployment.md,
# "Docker"). The set-up is CI's own script (.ci/setup), so every CI run exercises it, with
# what running needs only: no test or lint tools.
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 \
    IMAGINE_BOT_STATE_DIR=/data \
    IMAGINE_BOT_CACHE=/data/cache \
    HF_HOME=/data/cache/huggingface

# Python 3.12 (Ubuntu 24.04's) with venv. Not pinned: the base image's release pins them,
# and security updates should come in with a rebuild.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 10001 imagine \
    && mkdir -p /data/cache /config \
    && chown -R imagine:imagine /data /config

WORKDIR /app
COPY --chown=10001:10001 . /app
USER 10001
# The runtime set and PostgreSQL's driver (compose.yaml runs the bot with PostgreSQL). More
# extras by name: `bash .ci/setup postgres ray` (Ray Serve), `quantize` (int8/fp8), `nf4`.
RUN bash .ci/setup postgres

# Everything the bot writes lives on /data (IMAGINE_BOT_STATE_DIR): the database's identity
# file, a SQLite database (if used), stored images and the model cache. config.toml is read
# from /config, which may be mounted read-only: the bot never writes there.
VOLUME ["/data"]
EXPOSE 9108

# /healthz is 200 when the gateway, the engine and the database are all up: set
# [ops] listen = "0.0.0.0:9108" in config.toml.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10m --retries=3 \
    CMD ["/app/.venv/bin/python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:9108/healthz', timeout=4)"]

ENTRYPOINT ["/app/.venv/bin/imagine-bot"]
CMD ["run", "--config", "/config/config.toml"]
