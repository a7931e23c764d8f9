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
