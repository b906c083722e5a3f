-- Tasks per owner and state, kept by triggers on read.tasks in the same
-- transaction as the row change (the projection's, live or replay), so that
-- `X-Total-Count` of a `GET /v1/tasks` filtered by status only sums at most
-- four rows instead of counting every task of the owner.
-- Statement-level triggers with transition tables: a multi-row statement
-- (a replay's reset, a set-based batch) costs one upsert per touched
-- (owner, state), not one per row; an update that changes no state (a new
-- title) writes nothing. A count that drops to 0 keeps its row: live and
-- rebuilt tables touch the same (owner, state) pairs, so they stay equal.

create table read.task_counts (
    owner_id   uuid    not null,
    completed  boolean not null,
    is_deleted boolean not null,
    n          bigint  not null,
    primary key (owner_id, completed, is_deleted)
);

insert into read.task_counts (owner_id, completed, is_deleted, n)
select owner_id, completed, is_deleted, count(*)
from read.tasks
group by owner_id, completed, is_deleted;

create function read.task_counts_after_insert() returns trigger
language plpgsql as $$
begin
    insert into read.task_counts as c (owner_id, completed, is_deleted, n)
    select owner_id, completed, is_deleted, count(*) from new_rows
    group by owner_id, completed, is_deleted
    order by owner_id, completed, is_deleted
    on conflict (owner_id, completed, is_deleted) do update set n = c.n + excluded.n;
    return null;
end
$$;

create function read.task_counts_after_update() returns trigger
language plpgsql as $$
begin
    insert into read.task_counts as c (owner_id, completed, is_deleted, n)
    select owner_id, completed, is_deleted, sum(k) from (
        select owner_id, completed, is_deleted, 1 as k from new_rows
        union all
        select owner_id, completed, is_deleted, -1 as k from old_rows
    ) moved
    group by owner_id, completed, is_deleted
    having sum(k) <> 0
    order by owner_id, completed, is_deleted
    on conflict (owner_id, completed, is_deleted) do update set n = c.n + excluded.n;
    return null;
end
$$;

create function read.task_counts_after_delete() returns trigger
language plpgsql as $$
begin
    update read.task_counts c set n = c.n - gone.k
    from (
        select owner_id, completed, is_deleted, count(*) as k from old_rows
        group by owner_id, completed, is_deleted
    ) gone
    where c.owner_id = gone.owner_id and c.completed = gone.completed
      and c.is_deleted = gone.is_deleted;
    return null;
end
$$;

create trigger task_counts_insert after insert on read.tasks
    referencing new table as new_rows
    for each statement execute function read.task_counts_after_insert();
create trigger task_counts_update after update on read.tasks
    referencing old table as old_rows new table as new_rows
    for each statement execute function read.task_counts_after_update();
create trigger task_counts_delete after delete on read.tasks
    referencing old table as old_rows
    for each statement execute function read.task_counts_after_delete();
-- A truncate fires no row-level bookkeeping: empty the counts with it.
create function read.task_counts_after_truncate() returns trigger
language plpgsql as $$
begin
    delete from read.task_counts;
    return null;
end
$$;
create trigger task_counts_truncate after truncate on read.tasks
    for each statement execute function read.task_counts_after_truncate();
