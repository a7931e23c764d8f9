# PostgreSQL 15 from Debian's package (meridian/postgres-rootfs:15 is the base
# tree with postgresql-15 installed, made by build.sh).
FROM meridian/postgres-rootfs:15
ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PGDATA=/var/lib/postgresql/data \
    POSTGRES_USER=meridian \
    POSTGRES_DB=meridian
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
RUN mkdir -p /var/lib/postgresql/data /var/run/postgresql \
 && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
USER postgres
VOLUME /var/lib/postgresql/data
EXPOSE 5432
HEALTHCHECK --interval=2s --timeout=3s --start-period=30s --retries=3 \
  CMD pg_isready -h 127.0.0.1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" || exit 1
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]
