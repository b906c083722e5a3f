-- Per-user data keys for sealed secrets (src/secrets). Each row holds one
-- 32-byte data key wrapped with AES-256-GCM by the master key `master_key_id`
-- names: `wrapped` = nonce (12 bytes) || ciphertext and tag, the AAD being
-- the row's id bytes || owner id bytes. A retired key was re-wrapped by
-- `chronicle keys rotate-master`: it still opens what it sealed, and never
-- seals again.
create table secret_data_keys (
    id uuid primary key,
    owner_id uuid not null,
    master_key_id text not null,
    wrapped bytea not null,
    retired boolean not null default false,
    created_at timestamptz not null default now()
);

create index secret_data_keys_owner_created on secret_data_keys (owner_id, created_at desc);
