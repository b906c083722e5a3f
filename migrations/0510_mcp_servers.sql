-- MCP server configurations: names unique per owner, enforced where events
-- are stored, and the read models of projection `mcp_servers`.

-- One row per live server: its owner's claim on its name. Kept by the
-- trigger below in the transaction that stores the event, so two servers
-- of one owner can never share a name, whatever the read models' lag; a
-- rename or a removal frees the old name at once.
create table mcp_server_names (
    owner_id  uuid not null,
    name      text not null,
    server_id uuid not null unique,
    primary key (owner_id, name)
);

create function mcp_server_names_follow_events() returns trigger
language plpgsql as $$
declare
    server uuid  := new.aggregate_id::uuid;
    body   jsonb := new.payload -> new.event_type;
    wanted text  := body -> 'config' ->> 'name';
begin
    if new.event_type = 'McpServerRemoved' then
        delete from mcp_server_names where server_id = server;
        return null;
    end if;
    begin
        if new.event_type = 'McpServerConfigured' then
            insert into mcp_server_names (owner_id, name, server_id)
            values ((body ->> 'owner_id')::uuid, wanted, server);
        else
            update mcp_server_names set name = wanted
             where server_id = server and name is distinct from wanted;
        end if;
    exception when unique_violation then
        -- SQLSTATE CU409: the API answers 409 CONFLICT.
        raise exception 'an MCP server of this user is already named %', wanted
            using errcode = 'CU409';
    end;
    return null;
end;
$$;

create trigger events_mcp_server_names
    after insert on events
    for each row
    when (new.aggregate_type = 'McpServer'
          and new.event_type in ('McpServerConfigured', 'McpServerUpdated', 'McpServerRemoved'))
    execute function mcp_server_names_follow_events();

-- Every server, removed ones marked. `env` and `headers` hold sealed values
-- only, as the events do.
create table read.mcp_servers (
    id                    uuid        primary key,
    owner_id              uuid        not null,
    name                  text        not null,
    transport             text        not null,
    command               text,
    args                  jsonb       not null,
    env                   jsonb       not null,
    url                   text,
    headers               jsonb       not null,
    project_id            uuid,
    enabled               boolean     not null,
    is_removed            boolean     not null default false,
    tool_count            bigint      not null default 0,
    protocol_version      text,
    server_name           text,
    server_version        text,
    last_discovery_status text,
    last_discovery_error  text,
    last_discovery_at     timestamptz,
    created_at            timestamptz not null,
    updated_at            timestamptz not null,
    version               bigint      not null
);

create index mcp_servers_owner_created_idx on read.mcp_servers (owner_id, created_at desc, id desc)
    where not is_removed;

-- The tools of each server's last successful discovery, in the server's order.
create table read.mcp_tools (
    server_id    uuid   not null,
    position     bigint not null,
    name         text   not null,
    description  text,
    input_schema jsonb  not null,
    primary key (server_id, position)
);
