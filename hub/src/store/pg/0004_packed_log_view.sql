-- Migration 4: `spacesync_log` reads the log as hubs from session 11 store it. A write
-- batch's run of leaves is one value under the key of its last leaf, a pack
-- (hub/src/log/pack.rs): tag 2, the first leaf's index (u64), the count (u16), where each
-- record ends from the start of the records (count × u32), then the records, each in the
-- binary layout of hub/src/log/record.rs. Values of one record (that layout, version 1, or
-- the JSON of older hubs) still read as before. The view keeps migration 3's columns, so
-- the views built on it stand as they are. Plain SQL, as migration 3 (generate_series
-- unnests a pack).
CREATE OR REPLACE VIEW spacesync_log AS
-- NOT MATERIALIZED: both branches below read it; without it PostgreSQL 12+ would copy the
-- whole unpacked log before every query on the view.
WITH leaves AS NOT MATERIALIZED (
    SELECT
        (get_byte(k, 4)::bigint << 56) | (get_byte(k, 5)::bigint << 48)
            | (get_byte(k, 6)::bigint << 40) | (get_byte(k, 7)::bigint << 32)
            | (get_byte(k, 8)::bigint << 24) | (get_byte(k, 9)::bigint << 16)
            | (get_byte(k, 10)::bigint << 8) | get_byte(k, 11)::bigint AS log_index,
        v AS r
    FROM kv
    WHERE k >= '\x6c6f672f'::bytea AND k < '\x6c6f6730'::bytea AND length(k) = 12
        AND get_byte(v, 0) IN (1, 123)
    UNION ALL
    SELECT
        h.first + i.n AS log_index,
        substring(v FROM (h.body + s.start + 1)::int FOR (s.stop - s.start)::int) AS r
    FROM kv
    CROSS JOIN LATERAL (
        SELECT
            (get_byte(v, 1)::bigint << 56) | (get_byte(v, 2)::bigint << 48)
                | (get_byte(v, 3)::bigint << 40) | (get_byte(v, 4)::bigint << 32)
                | (get_byte(v, 5)::bigint << 24) | (get_byte(v, 6)::bigint << 16)
                | (get_byte(v, 7)::bigint << 8) | get_byte(v, 8)::bigint AS first,
            (get_byte(v, 9) << 8) | get_byte(v, 10) AS count,
            11 + 4 * ((get_byte(v, 9) << 8) | get_byte(v, 10)) AS body
    ) h
    CROSS JOIN LATERAL generate_series(0, h.count - 1) AS i(n)
    CROSS JOIN LATERAL (
        SELECT
            CASE WHEN i.n = 0 THEN 0::bigint
                ELSE (get_byte(v, 11 + 4 * (i.n - 1))::bigint << 24) | (get_byte(v, 11 + 4 * (i.n - 1) + 1)::bigint << 16)
                    | (get_byte(v, 11 + 4 * (i.n - 1) + 2)::bigint << 8) | get_byte(v, 11 + 4 * (i.n - 1) + 3)::bigint
            END AS start,
            (get_byte(v, 11 + 4 * i.n)::bigint << 24) | (get_byte(v, 11 + 4 * i.n + 1)::bigint << 16)
                | (get_byte(v, 11 + 4 * i.n + 2)::bigint << 8) | get_byte(v, 11 + 4 * i.n + 3)::bigint AS stop
    ) s
    WHERE k >= '\x6c6f672f'::bytea AND k < '\x6c6f6730'::bytea AND length(k) = 12
        AND get_byte(v, 0) = 2 AND length(v) >= 11
)
SELECT
    l.log_index,
    to_timestamp(
        (get_byte(r, 1)::bigint << 56) | (get_byte(r, 2)::bigint << 48)
            | (get_byte(r, 3)::bigint << 40) | (get_byte(r, 4)::bigint << 32)
            | (get_byte(r, 5)::bigint << 24) | (get_byte(r, 6)::bigint << 16)
            | (get_byte(r, 7)::bigint << 8) | get_byte(r, 8)::bigint
    ) + ((
        (get_byte(r, 9)::bigint << 24) | (get_byte(r, 10)::bigint << 16)
            | (get_byte(r, 11)::bigint << 8) | get_byte(r, 12)::bigint
    ) / 1000) * interval '1 microsecond' AS received_at,
    CASE WHEN get_byte(r, 21) = 1
        THEN convert_from(substring(r FROM 24 FOR get_byte(r, 22)), 'UTF8')
    END AS source,
    (get_byte(r, 13)::bigint << 56) | (get_byte(r, 14)::bigint << 48)
        | (get_byte(r, 15)::bigint << 40) | (get_byte(r, 16)::bigint << 32)
        | (get_byte(r, 17)::bigint << 24) | (get_byte(r, 18)::bigint << 16)
        | (get_byte(r, 19)::bigint << 8) | get_byte(r, 20)::bigint AS seq,
    convert_from(substring(r FROM o.pt + 3 FOR o.pt_len), 'UTF8') AS payload_type,
    substring(
        r FROM o.pt + 2 + o.pt_len + 5
        FOR ((get_byte(r, o.pt + 2 + o.pt_len) << 24)
            | (get_byte(r, o.pt + 3 + o.pt_len) << 16)
            | (get_byte(r, o.pt + 4 + o.pt_len) << 8)
            | get_byte(r, o.pt + 5 + o.pt_len))
    ) AS payload
FROM leaves l
CROSS JOIN LATERAL (
    -- o.pt: the 0-based offset of the payload type's length, after the source field.
    SELECT p.pt, (get_byte(r, p.pt) << 8) | get_byte(r, p.pt + 1) AS pt_len
    FROM (SELECT CASE WHEN get_byte(r, 21) = 0 THEN 22 ELSE 23 + get_byte(r, 22) END AS pt) p
) o
WHERE length(r) > 0 AND get_byte(r, 0) = 1
UNION ALL
SELECT
    l.log_index,
    (j.j ->> 'received_at')::timestamptz,
    j.j ->> 'source',
    (j.j ->> 'seq')::bigint,
    j.j -> 'envelope' ->> 'payloadType',
    decode(j.j -> 'envelope' ->> 'payload', 'base64')
FROM leaves l
CROSS JOIN LATERAL (SELECT convert_from(r, 'UTF8')::jsonb AS j) j
WHERE length(r) > 0 AND get_byte(r, 0) = 123;
