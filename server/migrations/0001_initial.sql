-- Podium's first schema: the seed's tables, extended for many leaderboards.
-- PostgreSQL is the source of truth; Redis holds a rebuildable index of it.

CREATE TABLE users (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    username      text NOT NULL UNIQUE CHECK (length(username) BETWEEN 1 AND 64),
    email         text UNIQUE CHECK (email IS NULL OR length(email) <= 254),
    password_hash text,
    device_id     text UNIQUE CHECK (device_id IS NULL OR length(device_id) <= 128),
    -- The seed's single score: the user's total on the `global` leaderboard.
    current_score bigint NOT NULL DEFAULT 0,
    status        text NOT NULL DEFAULT 'active'
                  CHECK (status IN ('active', 'banned', 'shadow_banned')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE leaderboards (
    id             text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9_-]{0,63}$'),
    sort_order     text NOT NULL CHECK (sort_order IN ('desc', 'asc')),
    operator       text NOT NULL CHECK (operator IN ('incr', 'set', 'best', 'decr')),
    -- NULL: never resets; otherwise 'daily', 'weekly' or 'monthly' (UTC).
    reset_schedule text CHECK (reset_schedule IS NULL
                               OR reset_schedule IN ('daily', 'weekly', 'monthly')),
    -- Scores belong to a period; a reset starts a new one and keeps the old.
    current_period bigint NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

INSERT INTO leaderboards (id, sort_order, operator) VALUES ('global', 'desc', 'incr');

-- One row per (leaderboard, period, user): the ranked score.
-- Ties rank by reached_at: whoever reached the score first ranks first.
CREATE TABLE leaderboard_records (
    leaderboard_id text   NOT NULL REFERENCES leaderboards (id) ON DELETE CASCADE,
    period         bigint NOT NULL DEFAULT 0,
    user_id        uuid   NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    score          bigint NOT NULL,
    reached_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (leaderboard_id, period, user_id)
);

-- Rank order for both sort orders (rebuilds and reads served from PostgreSQL).
CREATE INDEX leaderboard_records_desc_idx
    ON leaderboard_records (leaderboard_id, period, score DESC, reached_at, user_id);
CREATE INDEX leaderboard_records_asc_idx
    ON leaderboard_records (leaderboard_id, period, score ASC, reached_at, user_id);

CREATE TABLE score_history (
    id                bigserial PRIMARY KEY,
    user_id           uuid   NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    leaderboard_id    text   NOT NULL REFERENCES leaderboards (id) ON DELETE CASCADE,
    period            bigint NOT NULL DEFAULT 0,
    score_increment   bigint NOT NULL,
    old_score         bigint NOT NULL,
    new_score         bigint NOT NULL,
    action_type       text   NOT NULL,
    action_token_hash bytea  NOT NULL,
    ip_address        inet,
    user_agent        text,
    -- An admin may remove a score; the row stays for the audit trail.
    removed_at        timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now()
);

-- GET /v1/users/{id}/history?leaderboard=: newest first, keyset on (created_at, id).
CREATE INDEX score_history_user_idx
    ON score_history (user_id, leaderboard_id, created_at DESC, id DESC);

CREATE TABLE fraud_logs (
    id            bigserial PRIMARY KEY,
    user_id       uuid REFERENCES users (id) ON DELETE SET NULL,
    event_type    text NOT NULL,
    risk_score    numeric(5, 4) NOT NULL CHECK (risk_score BETWEEN 0 AND 1),
    metadata      jsonb NOT NULL DEFAULT '{}',
    review_status text NOT NULL DEFAULT 'open'
                  CHECK (review_status IN ('open', 'confirmed', 'false_positive')),
    reviewed_by   text,
    reviewed_at   timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- Admin review: newest cases first, optionally by status or user.
CREATE INDEX fraud_logs_review_idx ON fraud_logs (review_status, created_at DESC, id DESC);
CREATE INDEX fraud_logs_user_idx ON fraud_logs (user_id, created_at DESC);

CREATE TABLE user_sessions (
    session_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz,
    metadata   jsonb NOT NULL DEFAULT '{}'
);

CREATE INDEX user_sessions_user_idx ON user_sessions (user_id);
-- Revocation fan-out reads recently revoked sessions.
CREATE INDEX user_sessions_revoked_idx ON user_sessions (revoked_at)
    WHERE revoked_at IS NOT NULL;

-- The durable record of consumed action-token nonces, written in the same
-- transaction as the score, so a Redis flush cannot reopen a used nonce.
CREATE TABLE used_nonces (
    nonce          text PRIMARY KEY CHECK (length(nonce) <= 64),
    user_id        uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    leaderboard_id text NOT NULL REFERENCES leaderboards (id) ON DELETE CASCADE,
    created_at     timestamptz NOT NULL DEFAULT now()
);

-- Pruning nonces older than the longest token lifetime.
CREATE INDEX used_nonces_created_idx ON used_nonces (created_at);

-- Every admin action: who, what, when.
CREATE TABLE audit_log (
    id         bigserial PRIMARY KEY,
    actor      text NOT NULL,
    action     text NOT NULL,
    target     text,
    details    jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX audit_log_created_idx ON audit_log (created_at DESC);
