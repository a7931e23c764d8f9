-- Status (insights, heartbeats): current state only. No revision, no change
-- log row, no pg_notify: status changes far more often than configuration
-- and must not wake configuration watchers. Every replica reads this table.
CREATE TABLE status (
    type_name   TEXT COLLATE "C" NOT NULL,
    mesh        TEXT COLLATE "C" NOT NULL,
    name        TEXT COLLATE "C" NOT NULL,
    labels      TEXT   NOT NULL, -- JSON object of string -> string
    spec        BYTEA  NOT NULL,
    version     TEXT   NOT NULL,
    create_time BIGINT NOT NULL,
    modify_time BIGINT NOT NULL,
    PRIMARY KEY (type_name, mesh, name)
);

-- When each change was logged (unix ms), for compaction by age. Rows logged
-- before this column existed read 0: the oldest, compacted first.
ALTER TABLE changes ADD COLUMN logged_at BIGINT NOT NULL DEFAULT 0;

-- Meridian's status types written before this migration move to the status
-- table (current state only; their change-log rows age out with compaction).
-- Runs before any process serves: no watcher holds them.
INSERT INTO status (type_name, mesh, name, labels, spec, version, create_time, modify_time)
    SELECT type_name, mesh, name, labels, spec, version, create_time, modify_time
    FROM resources WHERE type_name IN ('ZoneInsight', 'DataplaneInsight');
DELETE FROM resources WHERE type_name IN ('ZoneInsight', 'DataplaneInsight');
