-- Custom SQL migration: payment.lock_order(order_id), the advisory lock and the read of the
-- order's payment in one round trip. It must be a function (not one plain statement): in
-- READ COMMITTED a statement's snapshot is taken before it waits for the lock, so a plain
-- "lock + select" would miss the payment the previous lock holder just committed. Inside a
-- VOLATILE plpgsql function each statement takes a fresh snapshot, so the select runs after
-- the lock is held and sees it. The key is the one store.ts always used ('payment:' || id).
CREATE FUNCTION "payment"."lock_order"(p_order_id text) RETURNS SETOF "payment"."payments"
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  PERFORM pg_advisory_xact_lock(hashtextextended('payment:' || p_order_id, 0));
  RETURN QUERY SELECT * FROM "payment"."payments" WHERE "order_id" = p_order_id;
END
$$;
