-- Migration 3: read-only views for analysts (BI tools, psql), computed from the kv table
-- on every query: nothing is stored twice, so they can never disagree with the hub.
-- Documented in docs/operators-guide.md ("SQL views for analysts"). Plain SQL only:
-- get_byte/substring/convert_from, jsonb operators, array_agg with ORDER BY and FILTER;
-- no functions or procedures of our own (see ARCHITECTURE.md, CockroachDB / YugabyteDB).

-- Every log leaf, its stored record decoded (hub/src/log/record.rs: the binary layout,
-- version 1, big-endian; records of older hubs are JSON objects starting with '{').
-- For administrators only: `payload` is the signed bytes, contact forms' personal data
-- included (docs/records.md, "Personal data"). Never granted to analysts; the other views
-- leave that data out.
CREATE VIEW spacesync_log AS
SELECT
    (get_byte(k, 4)::bigint << 56) | (get_byte(k, 5)::bigint << 48)
        | (get_byte(k, 6)::bigint << 40) | (get_byte(k, 7)::bigint << 32)
        | (get_byte(k, 8)::bigint << 24) | (get_byte(k, 9)::bigint << 16)
        | (get_byte(k, 10)::bigint << 8) | get_byte(k, 11)::bigint AS log_index,
    to_timestamp(
        (get_byte(v, 1)::bigint << 56) | (get_byte(v, 2)::bigint << 48)
        | (get_byte(v, 3)::bigint << 40) | (get_byte(v, 4)::bigint << 32)
        | (get_byte(v, 5)::bigint << 24) | (get_byte(v, 6)::bigint << 16)
        | (get_byte(v, 7)::bigint << 8) | get_byte(v, 8)::bigint
    ) + ((
        (get_byte(v, 9)::bigint << 24) | (get_byte(v, 10)::bigint << 16)
        | (get_byte(v, 11)::bigint << 8) | get_byte(v, 12)::bigint
    ) / 1000) * interval '1 microsecond' AS received_at,
    CASE WHEN get_byte(v, 21) = 1
        THEN convert_from(substring(v FROM 24 FOR get_byte(v, 22)), 'UTF8')
    END AS source,
    (get_byte(v, 13)::bigint << 56) | (get_byte(v, 14)::bigint << 48)
        | (get_byte(v, 15)::bigint << 40) | (get_byte(v, 16)::bigint << 32)
        | (get_byte(v, 17)::bigint << 24) | (get_byte(v, 18)::bigint << 16)
        | (get_byte(v, 19)::bigint << 8) | get_byte(v, 20)::bigint AS seq,
    convert_from(substring(v FROM o.pt + 3 FOR o.pt_len), 'UTF8') AS payload_type,
    substring(
        v FROM o.pt + 2 + o.pt_len + 5
        FOR ((get_byte(v, o.pt + 2 + o.pt_len) << 24)
            | (get_byte(v, o.pt + 3 + o.pt_len) << 16)
            | (get_byte(v, o.pt + 4 + o.pt_len) << 8)
            | get_byte(v, o.pt + 5 + o.pt_len))
    ) AS payload
FROM kv
CROSS JOIN LATERAL (
    -- o.pt: the 0-based offset of the payload type's length, after the source field.
    SELECT p.pt, (get_byte(v, p.pt) << 8) | get_byte(v, p.pt + 1) AS pt_len
    FROM (SELECT CASE WHEN get_byte(v, 21) = 0 THEN 22 ELSE 23 + get_byte(v, 22) END AS pt) p
) o
WHERE k >= '\x6c6f672f'::bytea AND k < '\x6c6f6730'::bytea AND length(k) = 12
    AND get_byte(v, 0) = 1
UNION ALL
SELECT
    (get_byte(k, 4)::bigint << 56) | (get_byte(k, 5)::bigint << 48)
        | (get_byte(k, 6)::bigint << 40) | (get_byte(k, 7)::bigint << 32)
        | (get_byte(k, 8)::bigint << 24) | (get_byte(k, 9)::bigint << 16)
        | (get_byte(k, 10)::bigint << 8) | get_byte(k, 11)::bigint,
    (j.r ->> 'received_at')::timestamptz,
    j.r ->> 'source',
    (j.r ->> 'seq')::bigint,
    j.r -> 'envelope' ->> 'payloadType',
    decode(j.r -> 'envelope' ->> 'payload', 'base64')
FROM kv
CROSS JOIN LATERAL (SELECT convert_from(v, 'UTF8')::jsonb AS r) j
WHERE k >= '\x6c6f672f'::bytea AND k < '\x6c6f6730'::bytea AND length(k) = 12
    AND get_byte(v, 0) = 123;

-- One row per log leaf: who signed it, when the hub received it, and the record's fields
-- as columns (NULL where a kind has no such field). withdrawn_by is the log index of the
-- source's withdrawal of this entry, if any.
CREATE VIEW spacesync_entries AS
WITH decoded AS (
    SELECT l.log_index, l.received_at, l.source, l.seq, l.payload_type,
        convert_from(l.payload, 'UTF8')::jsonb AS entry
    FROM spacesync_log l
),
withdrawals AS (
    SELECT source, (entry -> 'record' ->> 'target_seq')::bigint AS target_seq,
        min(log_index) AS log_index
    FROM decoded
    WHERE payload_type = 'application/vnd.spacesync.entry+json'
        AND entry -> 'record' ->> 'kind' = 'withdrawal'
    GROUP BY 1, 2
)
SELECT
    d.log_index,
    d.received_at,
    d.source,
    d.seq,
    d.source IS NULL AS hub_entry,
    d.payload_type,
    (d.entry ->> 'recorded_at')::timestamptz AS recorded_at,
    d.entry ->> 'campaign' AS campaign,
    COALESCE(d.entry -> 'record' ->> 'kind', d.entry ->> 'kind') AS kind,
    COALESCE(d.entry -> 'record' ->> 'region', d.entry ->> 'region') AS region,
    d.entry -> 'record' ->> 'school' AS school,
    (d.entry -> 'record' ->> 'as_of')::date AS as_of,
    d.entry -> 'record' -> 'spaces' AS spaces,
    d.entry -> 'record' -> 'real_name' AS real_name,
    d.entry -> 'record' -> 'population' AS population,
    COALESCE(d.entry -> 'record' ->> 'milestone', d.entry ->> 'milestone') AS milestone,
    (d.entry -> 'record' ->> 'submitted_on')::date AS submitted_on,
    (d.entry -> 'record' ->> 'date')::date AS activity_date,
    d.entry -> 'record' ->> 'category' AS category,
    d.entry -> 'record' ->> 'title' AS title,
    (d.entry -> 'record' ->> 'participants')::bigint AS participants,
    d.entry -> 'record' ->> 'level' AS level,
    (d.entry -> 'record' ->> 'target_seq')::bigint AS target_seq,
    w.log_index AS withdrawn_by,
    -- Personal data stays out: a contact form's details.contacts (names, phones, e-mail).
    (d.entry -> 'record') #- '{details,contacts}' AS record,
    d.entry #- '{record,details,contacts}' AS entry
FROM decoded d
LEFT JOIN withdrawals w
    ON w.source = d.source AND w.target_seq = d.seq AND w.log_index > d.log_index;

-- Each reporting unit's current figures per kind of space: a school (school set), or a
-- region's own total (school NULL). The hub's merge rule (hub/src/views/subjects.rs):
-- among the unit's space_count snapshots that were not withdrawn, ordered by (as_of, log
-- index), the last value of each kind wins; the baseline is the last one dated on or
-- before the campaign's baseline date; real_name the last real-name value; new_spaces =
-- spaces - baseline. Region and province totals roll these up (bulletins, /v1/regions).
CREATE VIEW spacesync_unit_figures AS
WITH baseline AS (
    SELECT (convert_from(v, 'UTF8')::jsonb ->> 'baseline')::date AS day
    FROM kv WHERE k = '\x762f6d'::bytea
),
snaps AS (
    SELECT e.log_index, e.source, e.region, e.school, e.as_of, s.key AS kind,
        s.value::bigint AS spaces, (e.real_name ->> s.key)::bigint AS real_name
    FROM spacesync_entries e
    CROSS JOIN LATERAL jsonb_each_text(e.spaces) s
    WHERE e.kind = 'space_count' AND e.withdrawn_by IS NULL
)
SELECT
    s.region,
    s.school,
    s.kind,
    (array_agg(s.spaces ORDER BY s.as_of DESC, s.log_index DESC))[1] AS spaces,
    max(s.as_of) AS as_of,
    (array_agg(s.spaces ORDER BY s.as_of DESC, s.log_index DESC)
        FILTER (WHERE s.as_of <= b.day))[1] AS baseline,
    (array_agg(s.real_name ORDER BY s.as_of DESC, s.log_index DESC)
        FILTER (WHERE s.real_name IS NOT NULL))[1] AS real_name,
    (array_agg(s.spaces ORDER BY s.as_of DESC, s.log_index DESC))[1]
        - COALESCE((array_agg(s.spaces ORDER BY s.as_of DESC, s.log_index DESC)
            FILTER (WHERE s.as_of <= b.day))[1], 0) AS new_spaces,
    count(*) AS snapshots,
    count(DISTINCT s.source) AS sources
FROM snaps s LEFT JOIN baseline b ON true
GROUP BY s.region, s.school, s.kind;

-- The bulletins, newest first: number, when, the checkpoint they were computed at, and
-- the document without its notices' webhook delivery records (bulletins of older hubs
-- named webhooks by URL, which can carry a secret; the API hides them from non-admins
-- too). That copy no longer verifies against the bulletin's signature: the signed
-- original is the API's, with an admin token.
CREATE VIEW spacesync_bulletins AS
SELECT
    (d.doc ->> 'number')::bigint AS number,
    (d.doc ->> 'issued_at')::timestamptz AS issued_at,
    (d.doc ->> 'as_of_date')::date AS as_of_date,
    d.doc ->> 'title' AS title,
    (d.doc -> 'checkpoint' ->> 'size')::bigint AS log_size,
    CASE WHEN jsonb_typeof(d.doc -> 'notices') = 'array' THEN jsonb_set(
        d.doc,
        '{notices}',
        COALESCE(
            (SELECT jsonb_agg(x.n - 'webhooks' ORDER BY x.i)
             FROM jsonb_array_elements(d.doc -> 'notices') WITH ORDINALITY AS x(n, i)),
            '[]'::jsonb
        )
    ) ELSE d.doc END AS document
FROM kv
CROSS JOIN LATERAL (SELECT convert_from(v, 'UTF8')::jsonb AS doc) d
WHERE k >= '\x62756c2f'::bytea AND k < '\x62756c30'::bytea;

-- Each provincial unit's milestone statuses as the latest bulletin judged them (status:
-- not_due, due_soon, on_time, late, missing), with due date, extension and submission.
CREATE VIEW spacesync_milestone_statuses AS
WITH latest AS (
    SELECT number, issued_at, document FROM spacesync_bulletins
    ORDER BY number DESC LIMIT 1
)
SELECT
    l.number AS bulletin,
    l.issued_at,
    p.unit ->> 'code' AS unit,
    p.unit ->> 'name' AS unit_name,
    m.key AS milestone,
    m.value ->> 'status' AS status,
    (m.value ->> 'due')::date AS due,
    (m.value ->> 'extended_until')::date AS extended_until,
    (m.value ->> 'submitted_on')::date AS submitted_on,
    (m.value ->> 'submitted_at')::timestamptz AS submitted_at,
    (m.value ->> 'days_late')::bigint AS days_late,
    (m.value ->> 'submissions')::bigint AS submissions
FROM latest l
CROSS JOIN LATERAL jsonb_array_elements(l.document -> 'provinces') AS p(unit)
CROSS JOIN LATERAL jsonb_each(p.unit -> 'milestones') AS m;
