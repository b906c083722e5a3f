-- The commit-order horizon of this database's events table: every event
-- whose transaction id is below it is final (committed or rolled back).
--
-- pg_snapshot_xmin(pg_current_snapshot()) is such a horizon, but a
-- cluster-wide one: a long transaction in any other database of the cluster
-- would hold every reader back. Transactions that are positively running in
-- another database cannot insert into this table, so they are left out.
-- Anything that cannot be attributed (it just ended, or its session is
-- hidden from us) is kept: the horizon may be lower than needed, never higher.
--
-- STABLE: the function sees the calling statement's snapshot, the same one
-- the caller reads the events table with.
create function events_commit_horizon() returns xid8
language sql stable as $$
    with snapshot as (select pg_current_snapshot() as s)
    select coalesce(
        (select min(running)
           from snapshot, pg_snapshot_xip(snapshot.s) as running
          where not exists (
                select 1 from pg_stat_activity other
                 where other.datid is distinct from (select oid from pg_database where datname = current_database())
                   and other.backend_xid is not null
                   and other.backend_xid::text::bigint = running::text::bigint % 4294967296)),
        (select pg_snapshot_xmax(s) from snapshot))
$$;
