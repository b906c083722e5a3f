-- Projection and rebuild transactions no longer hold the relay back.
--
-- The relay publishes only below `events_commit_horizon()`, the oldest
-- transaction of this database still in flight (see 0005). A projection's
-- batch transaction holds a transaction id while it applies its batch, so
-- under load every batch delayed publishing, which made the next batch
-- bigger and slower: commit-to-read-model lag grew with load.
--
-- Projection and rebuild transactions never write events. They mark
-- themselves with `set_config('application_name', 'chronicle projection', true)`
-- (local to the transaction) and the horizon skips them. A trigger makes the
-- promise checkable: a transaction so marked cannot insert into `events`, so
-- skipping it can never let a late event slip behind the relay's cursor.

create or replace function events_commit_horizon() returns xid8
language sql stable as $$
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
        (select pg_snapshot_xmax(s) from snapshot))
$$;

create function events_refuse_projection_writes() returns trigger
language plpgsql as $$
begin
    if current_setting('application_name', true) = 'chronicle projection' then
        raise exception 'a projection transaction may not write events'
            using errcode = '42501';
    end if;
    return null;
end;
$$;

create trigger events_not_from_projections
    before insert on events
    for each statement execute function events_refuse_projection_writes();
