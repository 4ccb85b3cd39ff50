-- A district's single sign-on with OpenID Connect: the identity provider (issuer) and
-- the client Tidings is registered as there. The client secret is never stored in the
-- clear: `client_secret_sealed` is AES-256-GCM under a key derived from one of the link
-- keys (`core::sealed`: version, key id, nonce, ciphertext and tag).
CREATE TABLE district_sso (
    district_id             uuid PRIMARY KEY REFERENCES districts (id),
    issuer                  text NOT NULL CHECK (length(issuer) BETWEEN 8 AND 500),
    client_id               text NOT NULL CHECK (length(client_id) BETWEEN 1 AND 500),
    client_secret_sealed    bytea NOT NULL CHECK (length(client_secret_sealed) > 30),
    updated_at              timestamptz NOT NULL
);
