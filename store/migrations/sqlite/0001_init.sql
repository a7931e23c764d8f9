-- Single-row counter: the store-wide revision and the change-log compaction
-- horizon. Every write transaction reads and updates it.
CREATE TABLE meta (
    id                 INTEGER PRIMARY KEY CHECK (id = 1),
    revision           INTEGER NOT NULL,
    compacted_revision INTEGER NOT NULL
);
INSERT INTO meta (id, revision, compacted_revision) VALUES (1, 0, 0);

-- Current state. Text compares bytewise (BINARY collation), like "C" on PostgreSQL.
CREATE TABLE resources (
    type_name   TEXT    NOT NULL,
    mesh        TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    labels      TEXT    NOT NULL, -- JSON object of string -> string
    spec        BLOB    NOT NULL,
    version     TEXT    NOT NULL,
    revision    INTEGER NOT NULL,
    create_time INTEGER NOT NULL,
    modify_time INTEGER NOT NULL,
    PRIMARY KEY (type_name, mesh, name)
);

-- Change log: one row per consumed revision, holding the full record so a
-- watch replays exactly. For a delete, the record is the last state and
-- resource_revision that state's revision.
CREATE TABLE changes (
    revision          INTEGER PRIMARY KEY,
    op                TEXT    NOT NULL CHECK (op IN ('upsert', 'delete')),
    type_name         TEXT    NOT NULL,
    mesh              TEXT    NOT NULL,
    name              TEXT    NOT NULL,
    labels            TEXT    NOT NULL,
    spec              BLOB    NOT NULL,
    version           TEXT    NOT NULL,
    resource_revision INTEGER NOT NULL,
    create_time       INTEGER NOT NULL,
    modify_time       INTEGER NOT NULL
);
