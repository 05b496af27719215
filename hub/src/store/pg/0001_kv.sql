-- Migration 1: the hub's ordered key space, and the list of migrations that ran.
-- bytea compares bytewise, the order the hub's keys are designed for (see store.rs, keys).
CREATE TABLE kv (
    k bytea PRIMARY KEY,
    v bytea NOT NULL
);
CREATE TABLE spacesync_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
