-- Single-row counter: the store-wide revision and the change-log compaction
-- horizon. Every write transaction locks this row first (SELECT ... FOR
-- UPDATE), which serializes writers across processes, so revisions commit in
-- order and a reader of "revision > X" never skips one that commits later.
CREATE TABLE meta (
    id                 SMALLINT PRIMARY KEY CHECK (id = 1),
    revision           BIGINT   NOT NULL,
    compacted_revision BIGINT   NOT NULL
);
INSERT INTO meta (id, revision, compacted_revision) VALUES (1, 0, 0);

-- Current state. COLLATE "C": bytewise order, the same as SQLite's BINARY.
CREATE TABLE resources (
    type_name   TEXT COLLATE "C" NOT NULL,
    mesh        TEXT COLLATE "C" NOT NULL,
    name        TEXT COLLATE "C" NOT NULL,
    labels      TEXT   NOT NULL, -- JSON object of string -> string
    spec        BYTEA  NOT NULL,
    version     TEXT   NOT NULL,
    revision    BIGINT NOT NULL,
    create_time BIGINT NOT NULL,
    modify_time BIGINT NOT NULL,
    PRIMARY KEY (type_name, mesh, name)
);

-- Change log: one row per consumed revision, holding the full record so a
-- watch replays exactly. For a delete, the record is the last state and
-- resource_revision that state's revision.
CREATE TABLE changes (
    revision          BIGINT PRIMARY KEY,
    op                TEXT   NOT NULL CHECK (op IN ('upsert', 'delete')),
    type_name         TEXT   NOT NULL,
    mesh              TEXT   NOT NULL,
    name              TEXT   NOT NULL,
    labels            TEXT   NOT NULL,
    spec              BYTEA  NOT NULL,
    version           TEXT   NOT NULL,
    resource_revision BIGINT NOT NULL,
    create_time       BIGINT NOT NULL,
    modify_time       BIGINT NOT NULL
);
