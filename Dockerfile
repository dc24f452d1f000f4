# corsproxy container image: `docker build -t corsproxy .`
# Debian's Python in a venv; the venv is built in a throw-away stage and copied, so the final
# image has no pip, no build tools and no apt lists.

FROM debian:bookworm-slim AS build
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/corsproxy
WORKDIR /src
COPY pyproject.toml README.md ./
COPY corsproxy ./corsproxy
RUN /opt/corsproxy/bin/pip install --no-cache-dir --disable-pip-version-check . \
 && /opt/corsproxy/bin/pip uninstall -y pip setuptools \
 && /opt/corsproxy/bin/corsproxy --version
# The image's default rules: config/corsproxy.yaml, with the admin listener on 0.0.0.0 so that
# probes from outside the container (Kubernetes, `docker run -p 9901:9901`) reach it.
COPY config/corsproxy.yaml /etc/corsproxy/corsproxy.yaml
RUN sed -i 's/^admin: 127\.0\.0\.1:9901/admin: 0.0.0.0:9901/' /etc/corsproxy/corsproxy.yaml \
 && grep -q '^admin: 0\.0\.0\.0:9901' /etc/corsproxy/corsproxy.yaml \
 && grep -q '^listen: 0\.0\.0\.0:8080' /etc/corsproxy/corsproxy.yaml \
 && /opt/corsproxy/bin/corsproxy check -c /etc/corsproxy/corsproxy.yaml

FROM debian:bookworm-slim
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin corsproxy
COPY --from=build /opt/corsproxy /opt/corsproxy
COPY --from=build /etc/corsproxy /etc/corsproxy
ENV PATH=/opt/corsproxy/bin:$PATH \
    CORSPROXY_CONFIG=/etc/corsproxy/corsproxy.yaml \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 8080 9901
# Ready = the admin listener answers /readyz (it opens only after the proxy listens).
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=3 \
  CMD ["python3", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9901/readyz', timeout=2).status == 200 else 1)"]
# Exec form, no shell in between: SIGTERM from `docker stop` reaches corsproxy itself.
ENTRYPOINT ["corsproxy"]
CMD ["serve"]
