# Stand-in for python:3.11-slim-bookworm where no registry is reachable (deploy/deploy_test.py builds
# it from a debootstrap'ed Debian bookworm imported as $BASE): Debian's Python 3.11 with venv, pip's
# CA bundle and a `python` command, as the official image has.
ARG BASE=localhost/gancompress-base:bookworm
FROM ${BASE}
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python-is-python3 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
CMD ["python3"]
