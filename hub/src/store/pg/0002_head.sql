-- Migration 2: the serialization point. One row whose lock every write to the log takes
-- (SELECT … FOR UPDATE, a row lock: CockroachDB and YugabyteDB have those, not advisory
-- locks); its head moves by one per such write, so a replica whose state was computed
-- from an older head finds out in the same transaction and writes nothing.
CREATE TABLE spacesync_head (
    id integer PRIMARY KEY CHECK (id = 1),
    head bigint NOT NULL
);
INSERT INTO spacesync_head (id, head) VALUES (1, 0);
