-- Checkpoints pause while an event released from dead_letters is in the
-- trail out of commit order (docs/audit.md, "Checkpoints pause while an event
-- is out of the trail"). That is the case when the rebuild that began the
-- newest generation did not see its release, so it left the event out.
-- Comparing released_at with the generation's started_at got this wrong for
-- a release that began before the rebuild and committed after the rebuild
-- read dead_letters: signing resumed one replay too early. What the rebuild
-- saw is decided exactly by transaction visibility instead:
--
-- * dead_letters.released_xid: the transaction that released the row, set
--   here so that no code path can forget it;
-- * audit.generations.parked_snapshot: the snapshot in which the rebuild
--   read the parked events (NULL for the initial generation and for
--   generations begun before this migration: those keep the timestamp rule).

alter table dead_letters add column released_xid xid8;

create function dead_letters_record_release() returns trigger
language plpgsql as $$
begin
    if new.released_at is not null and old.released_at is null then
        new.released_xid := pg_current_xact_id();
    end if;
    return new;
end;
$$;

create trigger dead_letters_record_release
    before update of released_at on dead_letters
    for each row execute function dead_letters_record_release();

alter table audit.generations add column parked_snapshot pg_snapshot;
