-- Webhook tokens seen (Mailgun's `signature.token`): a signature covers only its
-- timestamp and token, not the event, so a token is good for one event. Kept as long as
-- a timestamp is fresh enough to be accepted; after that a replay is refused as stale.
CREATE TABLE webhook_tokens (
    provider        TEXT NOT NULL,
    token           TEXT NOT NULL,
    -- A digest of the event the token came with: the same event again is a provider's
    -- retry, another event is a forgery.
    event_key       TEXT NOT NULL,
    seen_at         TEXT NOT NULL,
    PRIMARY KEY (provider, token)
);
CREATE INDEX webhook_tokens_seen ON webhook_tokens (seen_at);

-- Inbox retention: what is finished (applied, ignored, rejected) is pruned by age.
CREATE INDEX callback_inbox_finished ON callback_inbox (status, received_at) WHERE status <> 'pending';
