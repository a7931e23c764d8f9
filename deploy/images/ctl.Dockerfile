# meridianctl: `docker run --rm meridian/ctl:dev --api-url http://global:5681 get meshes`
ARG BASE=meridian/base:bookworm
FROM ${BASE}
RUN useradd --system --uid 10001 --user-group --home-dir /home/meridian --create-home --shell /usr/sbin/nologin meridian
COPY meridianctl /usr/local/bin/
ENV MERIDIAN_API_URL=http://global:5681
USER meridian
WORKDIR /home/meridian
ENTRYPOINT ["meridianctl"]
CMD ["--help"]
