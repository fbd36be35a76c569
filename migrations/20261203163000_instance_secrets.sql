-- Secrets an instance makes for itself on first start and every replica reads: the one
-- that signs stream URLs when VELOUR_URL_SIGNING_SECRET is unset.
CREATE TABLE instance_secrets (
    name TEXT PRIMARY KEY,
    value BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
