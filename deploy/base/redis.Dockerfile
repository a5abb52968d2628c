# Stand-in for redis:7.2-alpine where no registry is reachable: Debian bookworm's redis-server (7.0),
# run like the official image (user redis, working directory /data where the append-only file
# goes, protected mode off when started without a config file, as the official entrypoint does).
ARG BASE=localhost/gancompress-base:bookworm
FROM ${BASE}
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /data && chown redis:redis /data \
 && printf '#!/bin/sh\nif [ "$1" = redis-server ]; then shift; set -- redis-server "$@" --protected-mode no; fi\nexec "$@"\n' \
      > /usr/local/bin/docker-entrypoint.sh \
 && chmod 0755 /usr/local/bin/docker-entrypoint.sh
VOLUME /data
WORKDIR /data
USER redis
EXPOSE 6379
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["redis-server"]
