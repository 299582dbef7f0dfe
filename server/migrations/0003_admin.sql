-- Admin: reviewing fraud cases.

-- What the operator wrote when they last set a case's review status (the
-- audit log keeps every earlier note too).
ALTER TABLE fraud_logs ADD COLUMN review_note text
    CHECK (review_note IS NULL OR length(review_note) <= 500);

-- The review queue without a status filter: newest first, keyset on (created_at, id).
CREATE INDEX fraud_logs_created_idx ON fraud_logs (created_at DESC, id DESC);
