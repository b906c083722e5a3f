-- events_commit_horizon() with the same body (0100), as PL/pgSQL.
--
-- A LANGUAGE sql function whose body cannot be inlined is planned afresh on
-- every call: 0.4–0.9 ms of planning for a body that runs in 0.1 ms. The
-- relay computes the horizon two or three times per poll, so under load that
-- planning was one of the largest costs of the whole write pipeline
-- (docs/performance.md, change 18). PL/pgSQL keeps the plan for the session.
--
-- STABLE still means what 0005 relies on: a STABLE PL/pgSQL function runs
-- its statements in the calling statement's snapshot (read-only SPI), so
-- pg_current_snapshot() here is the snapshot the caller reads events with.
create or replace function events_commit_horizon() returns xid8
language plpgsql stable as $$
begin
    return (
        with snapshot as (select pg_current_snapshot() as s)
        select coalesce(
            (select min(running)
               from snapshot, pg_snapshot_xip(snapshot.s) as running
              where not exists (
                    select 1 from pg_stat_activity other
                     where other.backend_xid is not null
                       and other.backend_xid::text::bigint = running::text::bigint % 4294967296
                       and (other.datid is distinct from (select oid from pg_database where datname = current_database())
                            or other.application_name = 'chronicle projection'))),
            (select pg_snapshot_xmax(s) from snapshot)));
end;
$$;
