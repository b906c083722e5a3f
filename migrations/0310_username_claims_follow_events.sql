-- Username claims become provisional until the owner's event exists.
--
-- A claim is taken before the command that gives the username (so that a
-- taken name is refused before a password is hashed). Until now it was
-- permanent at once, so a request cancelled between claim and commit (client
-- gone, timeout, crash) left the name taken for ever. Now:
--   * a claim is `confirmed` only in the transaction that stores the owner's
--     UserRegistered or ProfileUpdated carrying that username (the trigger
--     below), and that same transaction releases the owner's previous name;
--   * the trigger refuses the event (SQLSTATE CU409) when another user holds
--     the name, so two users can never be given one name;
--   * an unconfirmed claim older than a grace period may be taken over by the
--     next claimant (src/http/auth.rs `claim_username`).

alter table username_claims
    add column confirmed boolean not null default false;

-- Existing claims: confirmed when the user's latest username-setting event
-- names it; anything else was left behind and may be taken over.
update username_claims c
   set confirmed = true
 where c.username = (
        select e.payload -> e.event_type ->> 'username'
          from events e
         where e.aggregate_type = 'User'
           and e.aggregate_id = c.user_id::text
           and e.event_type in ('UserRegistered', 'ProfileUpdated')
         order by e.sequence desc
         limit 1);

create function username_claims_follow_events() returns trigger
language plpgsql as $$
declare
    owner  uuid := new.aggregate_id::uuid;
    wanted text := new.payload -> new.event_type ->> 'username';
begin
    if wanted is not null then
        insert into username_claims as c (username, user_id, confirmed)
        values (wanted, owner, true)
        on conflict (username) do update set confirmed = true
            where c.user_id = excluded.user_id;
        if not found then
            raise exception 'username % is taken', wanted
                using errcode = 'CU409';
        end if;
    end if;
    -- A rename (or a cleared username) frees the previous name.
    delete from username_claims
     where user_id = owner and confirmed and username is distinct from wanted;
    return null;
end;
$$;

create trigger events_username_claims
    after insert on events
    for each row
    when (new.aggregate_type = 'User'
          and new.event_type in ('UserRegistered', 'ProfileUpdated'))
    execute function username_claims_follow_events();
