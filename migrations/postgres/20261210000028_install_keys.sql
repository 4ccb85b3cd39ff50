-- Keys every process of an install must share, by name (`vapid`: the Web Push key
-- browsers subscribed with), as the fingerprint of their public part: a process started
-- with another key refuses to start instead of sending what nobody can receive.
CREATE TABLE install_keys (
    name        TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    created_at  timestamptz NOT NULL
);
