-- seatd schema. Applied by `seatd init-db` (by `make run`, by the test suite and by the `init`
-- service of docker-compose.yml). Safe to run twice.
--
-- Every table that holds event data carries event_id, and every key, unique constraint and
-- query includes it, so the tables can be distributed by event later without changing a query.
-- The service's event actor is the first line of defence against double booking; the
-- constraints below are the last: a seat can be in at most one live hold and one reservation.

CREATE EXTENSION IF NOT EXISTS postgis;
-- pg_cron must be created in the database named by the server setting cron.database_name
-- (the service database; see docker-compose.yml and the README).
CREATE EXTENSION IF NOT EXISTS pg_cron;

CREATE TABLE IF NOT EXISTS events (
    id                  text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    name                text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    starts_at           timestamptz,
    venue               text,
    location            geography(Point, 4326),
    -- NULL means "use the service default" (DEFAULT_HOLD_DURATION, MAX_SEATS_PER_USER).
    hold_duration_s     integer CHECK (hold_duration_s > 0),
    max_seats_per_user  integer CHECK (max_seats_per_user > 0),
    status              text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
    -- Bumped by every committed batch that changes seat state: the availability stream's clock.
    version             bigint NOT NULL DEFAULT 0,
    -- Bumped by each activating owner; every write is fenced by it (see seatd/adapters/postgres.py).
    owner_epoch         bigint NOT NULL DEFAULT 0,
    created_at          timestamptz NOT NULL DEFAULT now()
);
-- The instance that loaded the event last (its owner while the event stays active there; NULL
-- once it lets the event go), and each instance's heartbeat. Leases live in Redis; loading an
-- event also checks here that no living instance serves it, so that instances which cannot
-- reach Redis, or a Redis that restarted empty, never make them take events from each other
-- (seatd/adapters/owners.py).
ALTER TABLE events ADD COLUMN IF NOT EXISTS owner_instance text;
CREATE TABLE IF NOT EXISTS instances (
    id             text PRIMARY KEY,
    seen_at        timestamptz NOT NULL,
    -- Since when its heartbeats have come without a gap: an instance that was cut off from
    -- this database (so were the others, maybe) judges nobody dead until it has watched for
    -- a whole lease.
    beating_since  timestamptz NOT NULL
);

-- Whether an event whose owner_instance is p_owner is served by another living instance, as
-- instance p_me sees it (p_ttl: the lease's lifetime in Redis, in seconds). Instances beat
-- every sixth of a lease. Alive: a beat within two thirds of a lease, so a dead owner is dead
-- here by the time its Redis lease runs out (renewed every third of a lease). If p_me has not
-- itself been beating for a whole lease (it just started, or was cut off), it cannot tell a
-- dead owner from one that was cut off with it: the owner counts as alive. p_me NULL (no
-- instance: tools, tests) never finds an event served elsewhere.
CREATE OR REPLACE FUNCTION seatd_served_elsewhere(p_owner text, p_me text, p_ttl float8)
RETURNS boolean LANGUAGE plpgsql STABLE AS $$
BEGIN
    -- plpgsql, not sql: PostgreSQL does not inline a function with subqueries, and planned
    -- the sql one afresh at every load (200 us; this one keeps its plans).
    IF p_owner IS NULL OR p_me IS NULL OR p_owner = p_me THEN
        RETURN false;
    END IF;
    RETURN EXISTS (SELECT 1 FROM instances
                   WHERE id = p_owner AND seen_at > now() - make_interval(secs => p_ttl * 2 / 3))
        OR NOT EXISTS (SELECT 1 FROM instances
                       WHERE id = p_me AND seen_at > now() - make_interval(secs => p_ttl / 3)
                         AND beating_since <= now() - make_interval(secs => p_ttl));
END
$$;

CREATE INDEX IF NOT EXISTS events_location_idx ON events USING gist (location);
CREATE INDEX IF NOT EXISTS events_starts_at_idx ON events (starts_at, id);

CREATE TABLE IF NOT EXISTS seats (
    event_id  text NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    seat_id   text NOT NULL CHECK (length(seat_id) BETWEEN 1 AND 64),
    section   text NOT NULL DEFAULT '',
    row       text NOT NULL DEFAULT '',
    number    integer,
    category  text NOT NULL DEFAULT '',
    x         double precision,
    y         double precision,
    -- Position in the organiser's seat list: listings keep that order.
    ordinal   integer NOT NULL DEFAULT 0,
    PRIMARY KEY (event_id, seat_id)
);
-- Loading an event reads its seats in this order: without the index, a stadium's 100,000 seats
-- were sorted on disk at every activation (a quarter of its load time; BENCHMARKS.md).
CREATE INDEX IF NOT EXISTS seats_order_idx ON seats (event_id, ordinal, seat_id);

-- Every held seat, one row each, with its hold's fields: a hold is the rows of one hold_id, all
-- written, refreshed and deleted together by one statement. The primary key makes a seat part of
-- at most one hold: a row exists only while its hold is live (expired, released and reserved
-- holds are deleted). Earlier releases kept each hold as a row of its own in a table `holds`, its
-- seats here behind two foreign keys, whose row-by-row checks and cascade were a third of
-- PostgreSQL's work in a sale (BENCHMARKS.md, round 10). `holds` is now a view (below).
-- No index on expires_at either: only the hourly clean-up asks, and it reads live holds only.
CREATE TABLE IF NOT EXISTS hold_seats (
    event_id        text NOT NULL,
    seat_id         text NOT NULL,
    hold_id         uuid NOT NULL,
    user_id         text NOT NULL,
    created_at      timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    -- Refreshing never extends a hold past this instant.
    max_expires_at  timestamptz NOT NULL,
    PRIMARY KEY (event_id, seat_id),
    FOREIGN KEY (event_id, seat_id) REFERENCES seats (event_id, seat_id) ON DELETE CASCADE,
    CHECK (expires_at <= max_expires_at)
);
-- The batch functions find every row by its primary key (the owner knows each hold's seats).
-- This index serves the previous release's functions below, which name holds by id only, and
-- goes with them.
CREATE INDEX IF NOT EXISTS hold_seats_hold_idx ON hold_seats (event_id, hold_id);

-- A database of an earlier release keeps each hold in a table `holds` and its seats here:
-- give each seat its hold's fields and drop that table. Both tables are locked first, so an
-- instance of the earlier release still writing either finished its batch before or sees its
-- batch fail whole (and reloads the event), never half-written.
DO $migrate$
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = to_regclass('holds')) = 'r' THEN
        LOCK TABLE holds, hold_seats IN ACCESS EXCLUSIVE MODE;
        ALTER TABLE hold_seats
            ADD COLUMN IF NOT EXISTS user_id text,
            ADD COLUMN IF NOT EXISTS created_at timestamptz,
            ADD COLUMN IF NOT EXISTS expires_at timestamptz,
            ADD COLUMN IF NOT EXISTS max_expires_at timestamptz;
        UPDATE hold_seats s
        SET user_id = h.user_id, created_at = h.created_at, expires_at = h.expires_at,
            max_expires_at = h.max_expires_at
        FROM holds h WHERE h.event_id = s.event_id AND h.hold_id = s.hold_id;
        ALTER TABLE hold_seats
            ALTER COLUMN user_id SET NOT NULL,
            ALTER COLUMN created_at SET NOT NULL,
            ALTER COLUMN expires_at SET NOT NULL,
            ALTER COLUMN max_expires_at SET NOT NULL,
            ADD CHECK (expires_at <= max_expires_at);
        DROP TABLE holds CASCADE;
    END IF;
END
$migrate$;

-- One row per live hold, for reading (and for the loader of an earlier release's instances
-- during a rolling upgrade): the fields every seat of the hold carries.
CREATE OR REPLACE VIEW holds AS
SELECT DISTINCT ON (event_id, hold_id)
       event_id, hold_id, user_id, created_at, expires_at, max_expires_at
FROM hold_seats ORDER BY event_id, hold_id;

-- One row per reserved seat; the primary key forbids reserving a seat twice.
CREATE TABLE IF NOT EXISTS reservations (
    event_id        text NOT NULL,
    seat_id         text NOT NULL,
    reservation_id  uuid NOT NULL,
    user_id         text NOT NULL,
    reserved_at     timestamptz NOT NULL,
    PRIMARY KEY (event_id, seat_id),
    FOREIGN KEY (event_id, seat_id) REFERENCES seats (event_id, seat_id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS reservations_reservation_idx ON reservations (event_id, reservation_id);

-- Outcomes of mutations sent with an idempotency key, written in the same transaction as the
-- mutation itself, so a retried request gets the first answer even after a restart.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    event_id      text NOT NULL,
    user_id       text NOT NULL,
    key           text NOT NULL,
    request_hash  text NOT NULL,
    response      jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, user_id, key)
);
CREATE INDEX IF NOT EXISTS idempotency_keys_created_idx ON idempotency_keys (created_at);

-- The signature before batches named the version they were applied on (p_previous).
DROP FUNCTION IF EXISTS seatd_persist_batch(
    text, bigint, bigint, uuid[], uuid[], float8[], uuid[], text[], float8[], float8[], float8[],
    text[], uuid[], text[], uuid[], text[], float8[], text[], text[], text[], text[]);

-- One batch of one event in one call (one round trip: a single statement is its own
-- transaction). Returns 0 when written; -1 when p_epoch is no longer the owner's epoch (fenced);
-- -2 when the stored version is not p_previous, the version the owner applied the batch on
-- (its memory and the database disagree). Nothing is written in those cases. A retry key of the
-- batch already stored (the owner did not remember it) fails the call on the primary key of
-- idempotency_keys, and the statement's transaction takes everything back: the owner runs the
-- batch again with the stored outcome. Its records are inserted first, so such a batch stops
-- there, and without a probe per key beforehand (5-12 us of PostgreSQL's CPU per keyed command;
-- BENCHMARKS.md, round 15). PostgreSQL's log shows each such call as a duplicate key error: a
-- retry that reached an owner which had not seen its first attempt. Deletes come first: the batch's final state is consistent, so no
-- inserted seat can collide. The retry records come as one JSON array of [user_id, key,
-- request_hash, response] arrays (the response being the stored reply itself): parsed once
-- here, where four text arrays cost the service ~0.7 us per element to encode (BENCHMARKS.md,
-- round 7), and their responses were parsed one by one all the same.
--
-- Held seats come one row each, with their hold's fields; an ended or refreshed hold comes as
-- its seats (the owner knows them), each beside its hold id, which must still match.
--
-- Every statement here must find rows by their full key. The planner's row counts for held seats
-- are always stale (a sale inserts and deletes thousands a second, autovacuum looks once a
-- minute), and with them it used to scan every hold row of the event, dead ones included, to
-- end or refresh a few: each batch then cost more than the last until the next vacuum. So rows
-- are named by their primary key, and the SET clauses take scans and joins that could still do
-- that off the table for this function only.
CREATE OR REPLACE FUNCTION seatd_apply_batch(
    p_event text, p_epoch bigint, p_previous bigint, p_version bigint,
    p_deleted_seats text[], p_deleted_holds uuid[],
    p_extended_seats text[], p_extended_holds uuid[], p_extended_until float8[],
    p_seats text[], p_seat_holds uuid[], p_seat_users text[], p_seat_created float8[],
    p_seat_expires float8[], p_seat_max_expires float8[],
    p_reserved_seats text[], p_reservations uuid[], p_reserved_users text[], p_reserved_at float8[],
    p_keys jsonb
) RETURNS integer LANGUAGE plpgsql
SET enable_seqscan = off SET enable_bitmapscan = off SET enable_hashjoin = off
SET enable_mergejoin = off
AS $fn$
DECLARE
    touched integer;
    current_epoch bigint;
    current_version bigint;
BEGIN
    SELECT owner_epoch, version INTO current_epoch, current_version
    FROM events WHERE id = p_event FOR NO KEY UPDATE;
    IF NOT FOUND OR current_epoch <> p_epoch THEN
        RETURN -1;
    END IF;
    IF current_version <> p_previous THEN
        RETURN -2;
    END IF;
    -- A plain INSERT: a key already stored fails it, and with it the call (above).
    IF jsonb_array_length(p_keys) > 0 THEN
        INSERT INTO idempotency_keys (event_id, user_id, key, request_hash, response)
        SELECT p_event, u.r->>0, u.r->>1, u.r->>2, u.r->3
        FROM jsonb_array_elements(p_keys) AS u(r);
    END IF;
    UPDATE events SET version = p_version WHERE id = p_event;
    -- Each row is found by one primary-key probe (LATERAL ... LIMIT 1, which the planner cannot
    -- turn into a join), then written by its ctid: a join could scan the event's rows instead.
    IF cardinality(p_deleted_seats) > 0 THEN
        DELETE FROM hold_seats WHERE ctid = ANY (ARRAY(
            SELECT f.ctid FROM unnest(p_deleted_seats, p_deleted_holds) AS d(seat_id, hold_id)
            CROSS JOIN LATERAL (
                SELECT s.ctid FROM hold_seats s
                WHERE s.event_id = p_event AND s.seat_id = d.seat_id AND s.hold_id = d.hold_id
                LIMIT 1
            ) AS f));
    END IF;
    IF cardinality(p_extended_seats) > 0 THEN
        UPDATE hold_seats s SET expires_at = to_timestamp(f.until)
        FROM (
            SELECT found.ctid, u.until
            FROM unnest(p_extended_seats, p_extended_holds, p_extended_until)
                 AS u(seat_id, hold_id, until)
            CROSS JOIN LATERAL (
                SELECT h.ctid FROM hold_seats h
                WHERE h.event_id = p_event AND h.seat_id = u.seat_id AND h.hold_id = u.hold_id
                LIMIT 1
            ) AS found
        ) AS f
        WHERE s.ctid = f.ctid;
        GET DIAGNOSTICS touched = ROW_COUNT;
        IF touched <> cardinality(p_extended_seats) THEN
            -- A hold the owner believes live is gone (the hourly clean-up, under clock skew).
            RAISE EXCEPTION 'seatd: a refreshed hold no longer exists';
        END IF;
    END IF;
    IF cardinality(p_seats) > 0 THEN
        INSERT INTO hold_seats (
            event_id, seat_id, hold_id, user_id, created_at, expires_at, max_expires_at)
        SELECT p_event, u.seat_id, u.hold_id, u.user_id, to_timestamp(u.created_at),
               to_timestamp(u.expires_at), to_timestamp(u.max_expires_at)
        FROM unnest(p_seats, p_seat_holds, p_seat_users, p_seat_created, p_seat_expires,
                    p_seat_max_expires)
             AS u(seat_id, hold_id, user_id, created_at, expires_at, max_expires_at);
    END IF;
    IF cardinality(p_reserved_seats) > 0 THEN
        INSERT INTO reservations (event_id, seat_id, reservation_id, user_id, reserved_at)
        SELECT p_event, u.seat_id, u.reservation_id, u.user_id, to_timestamp(u.reserved_at)
        FROM unnest(p_reserved_seats, p_reservations, p_reserved_users, p_reserved_at)
             AS u(seat_id, reservation_id, user_id, reserved_at);
    END IF;
    RETURN 0;
END
$fn$;

-- The previous release's call of one batch, which answers -3 for a retry key already stored:
-- seatd_apply_batch, with that failure turned back into its answer (the subtransaction takes
-- back what the call wrote). Also what seatd_persist_batch below calls. Kept for instances of
-- the previous release still running during a rolling upgrade; to be dropped in a later
-- release, with the functions below.
CREATE OR REPLACE FUNCTION seatd_write_batch(
    p_event text, p_epoch bigint, p_previous bigint, p_version bigint,
    p_deleted_seats text[], p_deleted_holds uuid[],
    p_extended_seats text[], p_extended_holds uuid[], p_extended_until float8[],
    p_seats text[], p_seat_holds uuid[], p_seat_users text[], p_seat_created float8[],
    p_seat_expires float8[], p_seat_max_expires float8[],
    p_reserved_seats text[], p_reservations uuid[], p_reserved_users text[], p_reserved_at float8[],
    p_keys jsonb
) RETURNS integer LANGUAGE plpgsql AS $fn$
DECLARE
    violated text;
BEGIN
    RETURN seatd_apply_batch(
        p_event, p_epoch, p_previous, p_version, p_deleted_seats, p_deleted_holds,
        p_extended_seats, p_extended_holds, p_extended_until,
        p_seats, p_seat_holds, p_seat_users, p_seat_created, p_seat_expires, p_seat_max_expires,
        p_reserved_seats, p_reservations, p_reserved_users, p_reserved_at, p_keys);
EXCEPTION WHEN unique_violation THEN
    GET STACKED DIAGNOSTICS violated = CONSTRAINT_NAME;
    IF violated = 'idempotency_keys_pkey' THEN
        RETURN -3;
    END IF;
    RAISE;
END
$fn$;

-- The event of each row of a row group: p_counts[i] rows belong to p_events[i], in order.
-- A loop of array_fill: an unnest, generate_series and ordered array_agg made a one-event call
-- cost a fifth more per purchase.
CREATE OR REPLACE FUNCTION seatd_row_events(p_events text[], p_counts int[])
RETURNS text[] LANGUAGE plpgsql IMMUTABLE AS $fn$
DECLARE
    owners text[] := '{}';
    i integer;
BEGIN
    FOR i IN 1 .. coalesce(cardinality(p_events), 0) LOOP
        IF p_counts[i] > 0 THEN
            owners := owners || array_fill(p_events[i], ARRAY[p_counts[i]]);
        END IF;
    END LOOP;
    RETURN owners;
END
$fn$;

-- Several events' batches in one call and one transaction (one commit for all: group commit
-- across events). p_n_* give each event's number of rows in each row array, in p_events order
-- (the service sends each event once per call). Returns one outcome per event, as
-- seatd_write_batch would: every event is checked first (its row locked, its epoch, its
-- version, its retry keys, its refreshed holds: -1, -2, -3, -4), and only the events that pass
-- are written, each table with one statement for all of them: the writes of seatd_apply_batch,
-- set-based (change both together; a lone event's batch stays on that function, a sixth cheaper
-- per purchase). So a refusal writes nothing for its event and leaves the others alone, without
-- a subtransaction per event; a per-event call cost PostgreSQL 115-140 us per event
-- (BENCHMARKS.md, round 4). An error that no check
-- foresaw (a hold deleted by the hourly clean-up between the check and the update) fails the
-- whole call, and every event of it reloads.
CREATE OR REPLACE FUNCTION seatd_write_batches(
    p_events text[], p_epochs bigint[], p_previous bigint[], p_versions bigint[],
    p_n_deleted int[], p_deleted_seats text[], p_deleted_holds uuid[],
    p_n_extended int[], p_extended_seats text[], p_extended_holds uuid[],
    p_extended_until float8[],
    p_n_seats int[], p_seats text[], p_seat_holds uuid[], p_seat_users text[],
    p_seat_created float8[], p_seat_expires float8[], p_seat_max_expires float8[],
    p_n_reserved int[], p_reserved_seats text[], p_reservations uuid[], p_reserved_users text[],
    p_reserved_at float8[],
    p_n_keys int[], p_keys jsonb
) RETURNS integer[] LANGUAGE plpgsql
SET enable_seqscan = off SET enable_bitmapscan = off SET enable_hashjoin = off
SET enable_mergejoin = off
AS $fn$
DECLARE
    outcomes integer[];
    ok text[];
    touched integer;
    -- The retry records of p_keys, in order, beside the event each belongs to.
    key_rows jsonb[] := ARRAY(
        SELECT r FROM jsonb_array_elements(p_keys) WITH ORDINALITY AS x(r, i) ORDER BY i
    );
BEGIN
    IF cardinality(p_events) <> (SELECT count(DISTINCT e) FROM unnest(p_events) AS e) THEN
        RAISE EXCEPTION 'seatd: an event appears twice in one call';
    END IF;
    PERFORM 1 FROM events WHERE id = ANY (p_events) ORDER BY id FOR NO KEY UPDATE;
    WITH keys_used AS (
        SELECT DISTINCT k.ev
        FROM unnest(seatd_row_events(p_events, p_n_keys), key_rows) AS k(ev, r)
        WHERE EXISTS (
            SELECT 1 FROM idempotency_keys i
            WHERE i.event_id = k.ev AND i.user_id = k.r->>0 AND i.key = k.r->>1
        )
    ), holds_gone AS (
        SELECT DISTINCT x.ev
        FROM unnest(seatd_row_events(p_events, p_n_extended), p_extended_seats, p_extended_holds)
             AS x(ev, seat_id, hold_id)
        LEFT JOIN LATERAL (
            SELECT true AS found FROM hold_seats h
            WHERE h.event_id = x.ev AND h.seat_id = x.seat_id AND h.hold_id = x.hold_id
            LIMIT 1
        ) AS f ON true
        WHERE f.found IS NULL
    )
    SELECT array_agg(
        CASE
            WHEN e.id IS NULL OR e.owner_epoch <> r.epoch THEN -1
            WHEN e.version <> r.previous THEN -2
            WHEN r.id IN (SELECT ev FROM keys_used) THEN -3
            WHEN r.id IN (SELECT ev FROM holds_gone) THEN -4
            ELSE 0
        END ORDER BY r.i)
    INTO outcomes
    FROM unnest(p_events, p_epochs, p_previous) WITH ORDINALITY AS r(id, epoch, previous, i)
    LEFT JOIN events e ON e.id = r.id;
    SELECT coalesce(array_agg(r.id), '{}') INTO ok
    FROM unnest(p_events, outcomes) AS r(id, outcome) WHERE r.outcome = 0;
    IF cardinality(ok) = 0 THEN
        RETURN outcomes;
    END IF;

    UPDATE events e SET version = v.version
    FROM unnest(p_events, p_versions) AS v(id, version)
    WHERE e.id = v.id AND v.id = ANY (ok);
    -- One primary-key probe per row, as in seatd_apply_batch.
    DELETE FROM hold_seats WHERE ctid = ANY (ARRAY(
        SELECT f.ctid
        FROM unnest(seatd_row_events(p_events, p_n_deleted), p_deleted_seats, p_deleted_holds)
             AS d(ev, seat_id, hold_id)
        CROSS JOIN LATERAL (
            SELECT s.ctid FROM hold_seats s
            WHERE s.event_id = d.ev AND s.seat_id = d.seat_id AND s.hold_id = d.hold_id
            LIMIT 1
        ) AS f
        WHERE d.ev = ANY (ok)));
    UPDATE hold_seats s SET expires_at = to_timestamp(f.until)
    FROM (
        SELECT found.ctid, x.until
        FROM unnest(seatd_row_events(p_events, p_n_extended), p_extended_seats,
                    p_extended_holds, p_extended_until) AS x(ev, seat_id, hold_id, until)
        CROSS JOIN LATERAL (
            SELECT h.ctid FROM hold_seats h
            WHERE h.event_id = x.ev AND h.seat_id = x.seat_id AND h.hold_id = x.hold_id
            LIMIT 1
        ) AS found
        WHERE x.ev = ANY (ok)
    ) AS f
    WHERE s.ctid = f.ctid;
    GET DIAGNOSTICS touched = ROW_COUNT;
    IF touched <> (
        SELECT count(*) FROM unnest(seatd_row_events(p_events, p_n_extended)) AS x(ev)
        WHERE x.ev = ANY (ok)
    ) THEN
        RAISE EXCEPTION 'seatd: a refreshed hold no longer exists';
    END IF;
    INSERT INTO hold_seats (
        event_id, seat_id, hold_id, user_id, created_at, expires_at, max_expires_at)
    SELECT u.ev, u.seat_id, u.hold_id, u.user_id, to_timestamp(u.created_at),
           to_timestamp(u.expires_at), to_timestamp(u.max_expires_at)
    FROM unnest(seatd_row_events(p_events, p_n_seats), p_seats, p_seat_holds, p_seat_users,
                p_seat_created, p_seat_expires, p_seat_max_expires)
         AS u(ev, seat_id, hold_id, user_id, created_at, expires_at, max_expires_at)
    WHERE u.ev = ANY (ok);
    INSERT INTO reservations (event_id, seat_id, reservation_id, user_id, reserved_at)
    SELECT u.ev, u.seat_id, u.reservation_id, u.user_id, to_timestamp(u.reserved_at)
    FROM unnest(seatd_row_events(p_events, p_n_reserved), p_reserved_seats, p_reservations,
                p_reserved_users, p_reserved_at)
         AS u(ev, seat_id, reservation_id, user_id, reserved_at)
    WHERE u.ev = ANY (ok);
    -- A plain INSERT: the keys were probed above, under the events' locks, which every writer
    -- of an event's keys takes first.
    INSERT INTO idempotency_keys (event_id, user_id, key, request_hash, response)
    SELECT u.ev, u.r->>0, u.r->>1, u.r->>2, u.r->3
    FROM unnest(seatd_row_events(p_events, p_n_keys), key_rows) AS u(ev, r)
    WHERE u.ev = ANY (ok);
    RETURN outcomes;
END
$fn$;

-- Two releases ago the retry records came as four text arrays. Those instances are gone by now.
DROP FUNCTION IF EXISTS seatd_persist_batch(
    text, bigint, bigint, bigint, uuid[], uuid[], float8[], uuid[], text[], float8[], float8[],
    float8[], text[], uuid[], text[], uuid[], text[], float8[], text[], text[], text[], text[]);
DROP FUNCTION IF EXISTS seatd_persist_batches(
    text[], bigint[], bigint[], bigint[], int[], uuid[], int[], uuid[], float8[], int[], uuid[],
    text[], float8[], float8[], float8[], int[], text[], uuid[], int[], text[], uuid[], text[],
    float8[], int[], text[], text[], text[], text[]);
DROP FUNCTION IF EXISTS seatd_keys_document(text[], text[], text[], text[]);

-- The previous release's functions, which named ended and refreshed holds by their ids and sent
-- each hold's fields once per hold (there was a holds table): kept so that instances of that
-- release still running during a rolling upgrade keep writing after this file was applied.
-- Each turns its arguments into the rows above (an ended or refreshed hold's seats found by
-- hold_seats_hold_idx) and calls seatd_write_batch: the events of a call one by one, in the
-- order of their ids, as the locks were taken, each in a subtransaction so that a refreshed hold
-- gone answers -4 for its event alone. The outcomes are the previous ones. To be dropped in a
-- later release, with that index.
CREATE OR REPLACE FUNCTION seatd_persist_batch(
    p_event text, p_epoch bigint, p_previous bigint, p_version bigint,
    p_deleted uuid[],
    p_extended uuid[], p_extended_until float8[],
    p_holds uuid[], p_users text[], p_created float8[], p_expires float8[], p_max_expires float8[],
    p_hold_seats text[], p_hold_seat_holds uuid[],
    p_reserved_seats text[], p_reservations uuid[], p_reserved_users text[], p_reserved_at float8[],
    p_keys jsonb
) RETURNS integer LANGUAGE plpgsql
SET enable_seqscan = off SET enable_bitmapscan = off SET enable_hashjoin = off
SET enable_mergejoin = off
AS $fn$
DECLARE
    gone_seats text[] := '{}';
    gone_holds uuid[] := '{}';
    moved_seats text[] := '{}';
    moved_holds uuid[] := '{}';
    moved_until float8[] := '{}';
    held record;
BEGIN
    IF cardinality(p_deleted) > 0 THEN
        SELECT coalesce(array_agg(s.seat_id), '{}'), coalesce(array_agg(s.hold_id), '{}')
        INTO gone_seats, gone_holds
        FROM hold_seats s WHERE s.event_id = p_event AND s.hold_id = ANY (p_deleted);
    END IF;
    IF cardinality(p_extended) > 0 THEN
        -- A refreshed hold with no seat left comes as one row that matches nothing, so that the
        -- write fails on it, as the previous function did, after the same checks (-1, -2, -3).
        SELECT array_agg(s.seat_id), array_agg(u.hold_id), array_agg(u.until)
        INTO moved_seats, moved_holds, moved_until
        FROM unnest(p_extended, p_extended_until) AS u(hold_id, until)
        LEFT JOIN hold_seats s ON s.event_id = p_event AND s.hold_id = u.hold_id;
    END IF;
    SELECT coalesce(array_agg(p_users[k] ORDER BY i), '{}') AS users,
           coalesce(array_agg(p_created[k] ORDER BY i), '{}') AS created,
           coalesce(array_agg(p_expires[k] ORDER BY i), '{}') AS expires,
           coalesce(array_agg(p_max_expires[k] ORDER BY i), '{}') AS max_expires
    INTO held
    FROM unnest(p_hold_seat_holds) WITH ORDINALITY AS s(hold_id, i)
    CROSS JOIN LATERAL (SELECT array_position(p_holds, s.hold_id) AS k) AS pos;
    RETURN seatd_write_batch(
        p_event, p_epoch, p_previous, p_version, gone_seats, gone_holds,
        moved_seats, moved_holds, moved_until,
        p_hold_seats, p_hold_seat_holds, held.users, held.created, held.expires, held.max_expires,
        p_reserved_seats, p_reservations, p_reserved_users, p_reserved_at, p_keys);
END
$fn$;

CREATE OR REPLACE FUNCTION seatd_persist_batches(
    p_events text[], p_epochs bigint[], p_previous bigint[], p_versions bigint[],
    p_n_deleted int[], p_deleted uuid[],
    p_n_extended int[], p_extended uuid[], p_extended_until float8[],
    p_n_holds int[], p_holds uuid[], p_users text[], p_created float8[], p_expires float8[],
    p_max_expires float8[],
    p_n_hold_seats int[], p_hold_seats text[], p_hold_seat_holds uuid[],
    p_n_reserved int[], p_reserved_seats text[], p_reservations uuid[], p_reserved_users text[],
    p_reserved_at float8[],
    p_n_keys int[], p_keys jsonb
) RETURNS integer[] LANGUAGE plpgsql AS $fn$
DECLARE
    outcomes integer[] := array_fill(0, ARRAY[cardinality(p_events)]);
    e record;
BEGIN
    IF cardinality(p_events) <> (SELECT count(DISTINCT x) FROM unnest(p_events) AS x) THEN
        RAISE EXCEPTION 'seatd: an event appears twice in one call';
    END IF;
    -- Each event's first row in each row array (arrays are 1-based), then the events by id.
    FOR e IN
        SELECT x.*
        FROM (
            SELECT i, id,
                   1 + sum(p_n_deleted[i]) OVER w - p_n_deleted[i] AS d,
                   1 + sum(p_n_extended[i]) OVER w - p_n_extended[i] AS x,
                   1 + sum(p_n_holds[i]) OVER w - p_n_holds[i] AS h,
                   1 + sum(p_n_hold_seats[i]) OVER w - p_n_hold_seats[i] AS s,
                   1 + sum(p_n_reserved[i]) OVER w - p_n_reserved[i] AS r,
                   sum(p_n_keys[i]) OVER w - p_n_keys[i] AS k
            FROM unnest(p_events) WITH ORDINALITY AS u(id, i)
            WINDOW w AS (ORDER BY i)
        ) AS x
        ORDER BY x.id
    LOOP
        -- A refreshed hold gone: -4 for its event alone, as the previous function answered (the
        -- subtransaction takes back what the call wrote for it).
        BEGIN
            outcomes[e.i] := seatd_persist_batch(
                e.id, p_epochs[e.i], p_previous[e.i], p_versions[e.i],
                p_deleted[e.d : e.d + p_n_deleted[e.i] - 1],
                p_extended[e.x : e.x + p_n_extended[e.i] - 1],
                p_extended_until[e.x : e.x + p_n_extended[e.i] - 1],
                p_holds[e.h : e.h + p_n_holds[e.i] - 1],
                p_users[e.h : e.h + p_n_holds[e.i] - 1],
                p_created[e.h : e.h + p_n_holds[e.i] - 1],
                p_expires[e.h : e.h + p_n_holds[e.i] - 1],
                p_max_expires[e.h : e.h + p_n_holds[e.i] - 1],
                p_hold_seats[e.s : e.s + p_n_hold_seats[e.i] - 1],
                p_hold_seat_holds[e.s : e.s + p_n_hold_seats[e.i] - 1],
                p_reserved_seats[e.r : e.r + p_n_reserved[e.i] - 1],
                p_reservations[e.r : e.r + p_n_reserved[e.i] - 1],
                p_reserved_users[e.r : e.r + p_n_reserved[e.i] - 1],
                p_reserved_at[e.r : e.r + p_n_reserved[e.i] - 1],
                (SELECT coalesce(jsonb_agg(j.r ORDER BY j.n), '[]'::jsonb)
                 FROM jsonb_array_elements(p_keys) WITH ORDINALITY AS j(r, n)
                 WHERE j.n > e.k AND j.n <= e.k + p_n_keys[e.i]));
        EXCEPTION WHEN raise_exception THEN
            outcomes[e.i] := -4;
        END;
    END LOOP;
    RETURN outcomes;
END
$fn$;

-- Hourly safety net: the service expires holds itself (actor timer, Redis expiry notices), but
-- holds of an event whose owner crashed stay behind until the event is loaded again. This job
-- deletes exactly those rows: every seat of a hold carries the hold's expiry, so a hold's seats
-- go together. It skips rows a batch has locked (that batch is ending them itself; the next
-- run gets any left over): waiting for them, it could deadlock with a batch ending the same
-- multi-seat hold in another order.
-- cron.schedule() with a job name replaces an existing job of that name, so re-running is safe.
SELECT cron.schedule(
    'seatd-expire-holds',
    '0 * * * *',
    $$DELETE FROM hold_seats WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM hold_seats WHERE expires_at < now() FOR UPDATE SKIP LOCKED))$$
);

-- Idempotency keys outlive every hold (MAX_HOLD_LIFETIME is at most 24 hours), so a retry of
-- any mutation within a day gets its first answer; older keys are deleted hourly.
SELECT cron.schedule(
    'seatd-prune-idempotency-keys',
    '30 * * * *',
    $$DELETE FROM idempotency_keys WHERE created_at < now() - interval '24 hours'$$
);
