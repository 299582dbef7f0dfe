-- The score path: versioned records, refresh tokens, and the batch function
-- the ledger commits with (one round trip and one transaction per batch).

-- Every change to a record bumps its version. Redis applies a record's state
-- only if its version is newer than what it holds, so updates from several
-- nodes, replays after a crash and rebuilds can arrive in any order.
ALTER TABLE leaderboard_records ADD COLUMN version bigint NOT NULL DEFAULT 1;

-- A session's refresh token is <session_id>.<secret>; only sha256(secret) is kept.
ALTER TABLE user_sessions ADD COLUMN refresh_hash bytea;

-- Rebuilds and catch-ups read records changed since a moment.
CREATE INDEX leaderboard_records_updated_idx ON leaderboard_records (updated_at);

-- Apply a batch of accepted submissions, in array order, inside the caller's
-- transaction. The caller sorts the batch by (leaderboard, user) so that
-- concurrent batches lock records in one order and cannot deadlock; each
-- record is locked before its nonce is claimed for the same reason.
--
-- Per item the result is one row: status 'ok' with the old and new score, or
-- 'nonce_used', 'unknown_leaderboard', 'unknown_user', 'banned' or
-- 'score_out_of_range' — those items change nothing.
CREATE FUNCTION podium_apply_scores(
    p_user_ids      uuid[],
    p_boards        text[],
    p_deltas        bigint[],
    p_action_types  text[],
    p_token_hashes  bytea[],
    p_nonces        text[],
    p_ips           inet[],
    p_agents        text[]
) RETURNS TABLE (
    idx        integer,
    status     text,
    old_score  bigint,
    new_score  bigint,
    changed    boolean,
    reached_at timestamptz,
    version    bigint,
    period     bigint,
    sort_order text,
    username   text
) LANGUAGE plpgsql AS $$
DECLARE
    i          integer;
    v_board    leaderboards%ROWTYPE;
    v_user     users%ROWTYPE;
    v_record   leaderboard_records%ROWTYPE;
    v_found    boolean;
    v_created  boolean;
    v_new      numeric;
    v_old      bigint;
    v_now      timestamptz;
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_user_ids, 1), 0) LOOP
        idx := i;
        old_score := NULL; new_score := NULL; changed := false; reached_at := NULL;
        version := NULL; period := NULL; sort_order := NULL; username := NULL;

        -- The batch is sorted by (leaderboard, user): look each up once per run.
        IF v_board.id IS DISTINCT FROM p_boards[i] THEN
            SELECT * INTO v_board FROM leaderboards b WHERE b.id = p_boards[i];
            IF NOT FOUND THEN
                v_board := NULL;
                status := 'unknown_leaderboard'; RETURN NEXT; CONTINUE;
            END IF;
        END IF;
        IF v_user.id IS DISTINCT FROM p_user_ids[i] THEN
            SELECT * INTO v_user FROM users u WHERE u.id = p_user_ids[i];
            IF NOT FOUND THEN
                v_user := NULL;
                status := 'unknown_user'; RETURN NEXT; CONTINUE;
            END IF;
        END IF;
        IF v_user.status = 'banned' THEN
            status := 'banned'; RETURN NEXT; CONTINUE;
        END IF;
        period := v_board.current_period;
        sort_order := v_board.sort_order;
        username := v_user.username;

        -- Lock the record before claiming the nonce. A first score creates a
        -- placeholder row (version 0) so that two batches scoring the same new
        -- player at once queue on its lock instead of colliding on insert.
        v_created := false;
        SELECT * INTO v_record FROM leaderboard_records r
         WHERE r.leaderboard_id = v_board.id AND r.period = v_board.current_period
           AND r.user_id = v_user.id
           FOR UPDATE;
        v_found := FOUND;
        IF NOT v_found THEN
            INSERT INTO leaderboard_records AS r
                (leaderboard_id, period, user_id, score, reached_at, updated_at, version)
            VALUES (v_board.id, v_board.current_period, v_user.id, 0, clock_timestamp(),
                    clock_timestamp(), 0)
            ON CONFLICT ON CONSTRAINT leaderboard_records_pkey DO NOTHING
            RETURNING * INTO v_record;
            IF FOUND THEN
                v_created := true;
            ELSE
                -- Another transaction created it first (and has committed by now).
                SELECT * INTO v_record FROM leaderboard_records r
                 WHERE r.leaderboard_id = v_board.id AND r.period = v_board.current_period
                   AND r.user_id = v_user.id
                   FOR UPDATE;
                v_found := true;
            END IF;
        END IF;

        INSERT INTO used_nonces (nonce, user_id, leaderboard_id)
        VALUES (p_nonces[i], v_user.id, v_board.id)
        ON CONFLICT (nonce) DO NOTHING;
        IF NOT FOUND THEN
            IF v_created THEN
                DELETE FROM leaderboard_records r
                 WHERE r.leaderboard_id = v_board.id AND r.period = v_board.current_period
                   AND r.user_id = v_user.id;
            END IF;
            status := 'nonce_used'; RETURN NEXT; CONTINUE;
        END IF;

        v_old := CASE WHEN v_found THEN v_record.score ELSE 0 END;
        v_new := CASE v_board.operator
            WHEN 'incr' THEN v_old::numeric + p_deltas[i]
            WHEN 'decr' THEN v_old::numeric - p_deltas[i]
            WHEN 'set'  THEN p_deltas[i]::numeric
            WHEN 'best' THEN CASE
                WHEN NOT v_found THEN p_deltas[i]::numeric
                WHEN v_board.sort_order = 'desc' THEN greatest(v_old, p_deltas[i])::numeric
                ELSE least(v_old, p_deltas[i])::numeric
            END
        END;
        -- Redis ranks by a double: beyond 2^53 scores would lose precision.
        IF v_new < -9007199254740991 OR v_new > 9007199254740991 THEN
            -- Give the nonce (and any placeholder) back: nothing happened.
            DELETE FROM used_nonces WHERE nonce = p_nonces[i];
            IF v_created THEN
                DELETE FROM leaderboard_records r
                 WHERE r.leaderboard_id = v_board.id AND r.period = v_board.current_period
                   AND r.user_id = v_user.id;
            END IF;
            status := 'score_out_of_range'; RETURN NEXT; CONTINUE;
        END IF;

        v_now := clock_timestamp();
        IF v_created OR v_new <> v_old THEN
            UPDATE leaderboard_records r
               SET score = v_new, reached_at = v_now, updated_at = v_now,
                   version = r.version + 1
             WHERE r.leaderboard_id = v_board.id AND r.period = v_board.current_period
               AND r.user_id = v_user.id
            RETURNING * INTO v_record;
            changed := true;
        END IF;

        INSERT INTO score_history
            (user_id, leaderboard_id, period, score_increment, old_score, new_score,
             action_type, action_token_hash, ip_address, user_agent)
        VALUES
            (v_user.id, v_board.id, v_board.current_period, p_deltas[i], v_old, v_new,
             p_action_types[i], p_token_hashes[i], p_ips[i], p_agents[i]);

        IF v_board.id = 'global' AND changed THEN
            UPDATE users u SET current_score = v_new, updated_at = v_now WHERE u.id = v_user.id;
        END IF;

        status := 'ok';
        old_score := v_old;
        new_score := v_new;
        reached_at := v_record.reached_at;
        version := v_record.version;
        RETURN NEXT;
    END LOOP;
END;
$$;
