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

CREATE TABLE IF NOT EXISTS holds (
    event_id        text NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    hold_id         uuid NOT NULL,
    user_id         text NOT NULL,
    created_at      timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    -- Refreshing never extends a hold past this instant.
    max_expires_at  timestamptz NOT NULL,
    PRIMARY KEY (event_id, hold_id),
    CHECK (expires_at <= max_expires_at)
);
CREATE INDEX IF NOT EXISTS holds_expires_at_idx ON holds (expires_at);

-- The seats a hold covers. The primary key makes a seat part of at most one hold: a hold row
-- exists only while it is live (expired, released and reserved holds are deleted).
CREATE TABLE IF NOT EXISTS hold_seats (
    event_id  text NOT NULL,
    seat_id   text NOT NULL,
    hold_id   uuid NOT NULL,
    PRIMARY KEY (event_id, seat_id),
    FOREIGN KEY (event_id, hold_id) REFERENCES holds (event_id, hold_id) ON DELETE CASCADE,
    FOREIGN KEY (event_id, seat_id) REFERENCES seats (event_id, seat_id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS hold_seats_hold_idx ON hold_seats (event_id, hold_id);

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
-- (its memory and the database disagree); -3 when a retry key of the batch is already stored
-- (the owner did not remember it: it runs the batch again with the stored outcome). Nothing is
-- written in those cases. Deletes come first: the batch's final state is consistent, so no
-- inserted seat can collide. The retry records come as one JSON array of [user_id, key,
-- request_hash, response] arrays (the response being the stored reply itself): parsed once
-- here, where four text arrays cost the service ~0.7 us per element to encode (BENCHMARKS.md,
-- round 7), and their responses were parsed one by one all the same.
--
-- Every statement here must find rows by their full key. The planner's row counts for holds
-- are always stale (a sale inserts and deletes thousands a second, autovacuum looks once a
-- minute), and with them it used to scan every hold row of the event, dead ones included, to
-- end or refresh a few: each batch then cost more than the last until the next vacuum. The SET
-- clauses take scans and joins that could do that off the table for this function only.
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
    -- One index probe per key (LATERAL ... LIMIT 1): a join could scan every key of the event.
    IF jsonb_array_length(p_keys) > 0 AND EXISTS (
        SELECT 1 FROM jsonb_array_elements(p_keys) AS u(r)
        CROSS JOIN LATERAL (
            SELECT 1 FROM idempotency_keys k
            WHERE k.event_id = p_event AND k.user_id = u.r->>0 AND k.key = u.r->>1
            LIMIT 1
        ) AS stored
    ) THEN
        RETURN -3;
    END IF;
    UPDATE events SET version = p_version WHERE id = p_event;
    IF cardinality(p_deleted) > 0 THEN
        DELETE FROM holds WHERE event_id = p_event AND hold_id = ANY (p_deleted);
    END IF;
    IF cardinality(p_extended) > 0 THEN
        UPDATE holds h SET expires_at = to_timestamp(u.until)
        FROM unnest(p_extended, p_extended_until) AS u(hold_id, until)
        WHERE h.event_id = p_event AND h.hold_id = ANY (p_extended) AND h.hold_id = u.hold_id;
        GET DIAGNOSTICS touched = ROW_COUNT;
        IF touched <> cardinality(p_extended) THEN
            -- A hold the owner believes live is gone (the hourly clean-up, under clock skew).
            RAISE EXCEPTION 'seatd: a refreshed hold no longer exists';
        END IF;
    END IF;
    IF cardinality(p_holds) > 0 THEN
        INSERT INTO holds (event_id, hold_id, user_id, created_at, expires_at, max_expires_at)
        SELECT p_event, u.hold_id, u.user_id, to_timestamp(u.created_at),
               to_timestamp(u.expires_at), to_timestamp(u.max_expires_at)
        FROM unnest(p_holds, p_users, p_created, p_expires, p_max_expires)
             AS u(hold_id, user_id, created_at, expires_at, max_expires_at);
        INSERT INTO hold_seats (event_id, seat_id, hold_id)
        SELECT p_event, u.seat_id, u.hold_id
        FROM unnest(p_hold_seats, p_hold_seat_holds) AS u(seat_id, hold_id);
    END IF;
    IF cardinality(p_reserved_seats) > 0 THEN
        INSERT INTO reservations (event_id, seat_id, reservation_id, user_id, reserved_at)
        SELECT p_event, u.seat_id, u.reservation_id, u.user_id, to_timestamp(u.reserved_at)
        FROM unnest(p_reserved_seats, p_reservations, p_reserved_users, p_reserved_at)
             AS u(seat_id, reservation_id, user_id, reserved_at);
    END IF;
    -- A plain INSERT: the probe above ran under the event's row lock, which every writer of
    -- this event's keys takes first, and the owner sends each key once per batch, so no row can
    -- conflict. ON CONFLICT DO NOTHING cost a quarter more per key (speculative insertion);
    -- were a conflict possible after all, the batch would fail whole, never half-written.
    IF jsonb_array_length(p_keys) > 0 THEN
        INSERT INTO idempotency_keys (event_id, user_id, key, request_hash, response)
        SELECT p_event, u.r->>0, u.r->>1, u.r->>2, u.r->3
        FROM jsonb_array_elements(p_keys) AS u(r);
    END IF;
    RETURN 0;
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
-- seatd_persist_batch would: every event is checked first (its row locked, its epoch, its
-- version, its retry keys, its refreshed holds: -1, -2, -3, -4), and only the events that pass
-- are written, each table with one statement for all of them: the writes of seatd_persist_batch,
-- set-based (change both together; a lone event's batch stays on that function, a sixth cheaper
-- per purchase). So a refusal writes nothing for its event and leaves the others alone, without
-- a subtransaction per event; a per-event call cost PostgreSQL 115-140 us per event
-- (BENCHMARKS.md, round 4). An error that no check
-- foresaw (a hold deleted by the hourly clean-up between the check and the update) fails the
-- whole call, and every event of it reloads.
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
        FROM unnest(seatd_row_events(p_events, p_n_extended), p_extended) AS x(ev, hold_id)
        WHERE NOT EXISTS (
            SELECT 1 FROM holds h WHERE h.event_id = x.ev AND h.hold_id = x.hold_id
        )
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
    DELETE FROM holds h
    USING unnest(seatd_row_events(p_events, p_n_deleted), p_deleted) AS d(ev, hold_id)
    WHERE d.ev = ANY (ok) AND h.event_id = d.ev AND h.hold_id = d.hold_id;
    UPDATE holds h SET expires_at = to_timestamp(x.until)
    FROM unnest(seatd_row_events(p_events, p_n_extended), p_extended, p_extended_until)
         AS x(ev, hold_id, until)
    WHERE x.ev = ANY (ok) AND h.event_id = x.ev AND h.hold_id = x.hold_id;
    GET DIAGNOSTICS touched = ROW_COUNT;
    IF touched <> (
        SELECT count(*) FROM unnest(seatd_row_events(p_events, p_n_extended)) AS x(ev)
        WHERE x.ev = ANY (ok)
    ) THEN
        RAISE EXCEPTION 'seatd: a refreshed hold no longer exists';
    END IF;
    INSERT INTO holds (event_id, hold_id, user_id, created_at, expires_at, max_expires_at)
    SELECT u.ev, u.hold_id, u.user_id, to_timestamp(u.created_at), to_timestamp(u.expires_at),
           to_timestamp(u.max_expires_at)
    FROM unnest(seatd_row_events(p_events, p_n_holds), p_holds, p_users, p_created, p_expires,
                p_max_expires) AS u(ev, hold_id, user_id, created_at, expires_at, max_expires_at)
    WHERE u.ev = ANY (ok);
    INSERT INTO hold_seats (event_id, seat_id, hold_id)
    SELECT u.ev, u.seat_id, u.hold_id
    FROM unnest(seatd_row_events(p_events, p_n_hold_seats), p_hold_seats, p_hold_seat_holds)
         AS u(ev, seat_id, hold_id)
    WHERE u.ev = ANY (ok);
    INSERT INTO reservations (event_id, seat_id, reservation_id, user_id, reserved_at)
    SELECT u.ev, u.seat_id, u.reservation_id, u.user_id, to_timestamp(u.reserved_at)
    FROM unnest(seatd_row_events(p_events, p_n_reserved), p_reserved_seats, p_reservations,
                p_reserved_users, p_reserved_at)
         AS u(ev, seat_id, reservation_id, user_id, reserved_at)
    WHERE u.ev = ANY (ok);
    -- A plain INSERT, as in seatd_persist_batch: the keys were probed under the events' locks.
    INSERT INTO idempotency_keys (event_id, user_id, key, request_hash, response)
    SELECT u.ev, u.r->>0, u.r->>1, u.r->>2, u.r->3
    FROM unnest(seatd_row_events(p_events, p_n_keys), key_rows) AS u(ev, r)
    WHERE u.ev = ANY (ok);
    RETURN outcomes;
END
$fn$;

-- The previous release's signatures, which sent the retry records as four text arrays: kept so
-- that instances of that release still running during a rolling upgrade keep writing after
-- this file was applied. Each passes its arrays on as the one document the functions above
-- take. To be dropped in a later release.
CREATE OR REPLACE FUNCTION seatd_keys_document(
    p_key_users text[], p_keys text[], p_key_hashes text[], p_key_responses text[]
) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $fn$
    SELECT coalesce(jsonb_agg(jsonb_build_array(u, k, h, r::jsonb) ORDER BY i), '[]'::jsonb)
    FROM unnest(p_key_users, p_keys, p_key_hashes, p_key_responses) WITH ORDINALITY
         AS x(u, k, h, r, i)
$fn$;

CREATE OR REPLACE FUNCTION seatd_persist_batch(
    p_event text, p_epoch bigint, p_previous bigint, p_version bigint,
    p_deleted uuid[],
    p_extended uuid[], p_extended_until float8[],
    p_holds uuid[], p_users text[], p_created float8[], p_expires float8[], p_max_expires float8[],
    p_hold_seats text[], p_hold_seat_holds uuid[],
    p_reserved_seats text[], p_reservations uuid[], p_reserved_users text[], p_reserved_at float8[],
    p_key_users text[], p_keys text[], p_key_hashes text[], p_key_responses text[]
) RETURNS integer LANGUAGE sql AS $fn$
    SELECT seatd_persist_batch(
        p_event, p_epoch, p_previous, p_version, p_deleted, p_extended, p_extended_until,
        p_holds, p_users, p_created, p_expires, p_max_expires, p_hold_seats, p_hold_seat_holds,
        p_reserved_seats, p_reservations, p_reserved_users, p_reserved_at,
        seatd_keys_document(p_key_users, p_keys, p_key_hashes, p_key_responses))
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
    p_n_keys int[], p_key_users text[], p_keys text[], p_key_hashes text[], p_key_responses text[]
) RETURNS integer[] LANGUAGE sql AS $fn$
    SELECT seatd_persist_batches(
        p_events, p_epochs, p_previous, p_versions, p_n_deleted, p_deleted, p_n_extended,
        p_extended, p_extended_until, p_n_holds, p_holds, p_users, p_created, p_expires,
        p_max_expires, p_n_hold_seats, p_hold_seats, p_hold_seat_holds, p_n_reserved,
        p_reserved_seats, p_reservations, p_reserved_users, p_reserved_at, p_n_keys,
        seatd_keys_document(p_key_users, p_keys, p_key_hashes, p_key_responses))
$fn$;

-- Hourly safety net: the service expires holds itself (actor timer, Redis expiry notices), but
-- holds of an event whose owner crashed stay behind until the event is loaded again. This job
-- deletes exactly those rows; their hold_seats rows go with them (ON DELETE CASCADE).
-- cron.schedule() with a job name replaces an existing job of that name, so re-running is safe.
SELECT cron.schedule(
    'seatd-expire-holds',
    '0 * * * *',
    $$DELETE FROM holds WHERE expires_at < now()$$
);

-- Idempotency keys outlive every hold (MAX_HOLD_LIFETIME is at most 24 hours), so a retry of
-- any mutation within a day gets its first answer; older keys are deleted hourly.
SELECT cron.schedule(
    'seatd-prune-idempotency-keys',
    '30 * * * *',
    $$DELETE FROM idempotency_keys WHERE created_at < now() - interval '24 hours'$$
);
