# meridian-global: the REST API (5681) and KDS (5685, TLS with a CA it
# generates into the volume). Configure it with MERIDIAN_* variables
# (`meridian-global run --help` lists them), e.g. MERIDIAN_STORE=postgres://...
ARG BASE=meridian/base:bookworm
FROM ${BASE}
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/meridian --no-create-home --shell /usr/sbin/nologin meridian \
 && install -d -o meridian -g meridian -m 0700 /var/lib/meridian
COPY meridian-global meridianctl /usr/local/bin/
ENV MERIDIAN_DATA_DIR=/var/lib/meridian \
    MERIDIAN_API_ADDR=0.0.0.0:5681 \
    MERIDIAN_KDS_ADDR=0.0.0.0:5685 \
    MERIDIAN_LOG_FORMAT=text \
    HOME=/var/lib/meridian
USER meridian
WORKDIR /var/lib/meridian
VOLUME /var/lib/meridian
EXPOSE 5681 5685
HEALTHCHECK --interval=2s --timeout=3s --start-period=20s --retries=3 \
  CMD curl -fsS -o /dev/null http://127.0.0.1:5681/ready || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["meridian-global"]
CMD ["run"]
