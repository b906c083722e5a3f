-- An API key may be given a lifetime (POST /v1/user/profile/reset-api-key
-- {"expires_in_days": N}); null: it does not expire.
alter table api_keys
    add column expires_at timestamptz;
