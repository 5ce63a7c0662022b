-- Custom SQL migration: inventory.commit_batch(ids, now), BatchCommitReservations' one statement
-- (store.ts commitMany), as the statement commitMany sent itself before: lock the reservations in
-- id order, then the SKU rows of the RESERVED ones in SKU order (the global lock order), commit
-- each reservation whose SKU rows are all there, move each SKU once by the sum of its committed
-- lines, and answer every stored id as it was before with whether its SKU rows were all there.
--
-- Why a function with enable_seqscan off: the statement was prepared (mesh/db-prepared.ts),
-- as plpgsql prepares a function's statements, and a plan is kept for the connection's life,
-- generic once five custom plans cost no less, planned again only when the tables' statistics
-- change. A shop starts with empty, never analysed tables, which Postgres prices as ten pages,
-- and there reading one whole costs less than ten probes of `id = any(...)`: the plan cached
-- then read all of inventory.reservations at every batch commit once it had grown (20,000
-- rows: one sequential scan per call, with no ANALYZE in between as with autovacuum off). No
-- text keeps the planner on the key while it prices a small table, so this function takes the
-- whole-table read away: every statement in it reaches reservations and stock through
-- `= any(...)` on their primary keys, and with seq scans off only those index probes are
-- left, under any plan, generic or custom, cached on any table size. The setting is the
-- function's own (restored when it returns): nothing else the connection plans changes.
CREATE FUNCTION "inventory"."commit_batch"(p_ids jsonb, p_now timestamptz)
RETURNS TABLE (id text, status text, lines jsonb, expire_time timestamptz, release_reason text, tombstone boolean, ok boolean)
LANGUAGE plpgsql VOLATILE
SET enable_seqscan = off
AS $$
#variable_conflict use_column
BEGIN
  RETURN QUERY
  WITH cur AS MATERIALIZED (
    SELECT r.id, r.status, r.lines, r.expire_time, r.release_reason, r.tombstone FROM "inventory"."reservations" r
    WHERE r.id = ANY (ARRAY(SELECT jsonb_array_elements_text(p_ids))) ORDER BY r.id FOR UPDATE
  ), want AS MATERIALIZED (
    SELECT cur.id, x.sku, x.quantity FROM cur, jsonb_to_recordset(cur.lines) AS x(sku text, quantity bigint) WHERE cur.status = 'RESERVED'
  ), held AS MATERIALIZED (
    SELECT s.sku FROM "inventory"."stock" s WHERE s.sku = ANY (ARRAY(SELECT want.sku FROM want)) ORDER BY s.sku FOR UPDATE
  ), ok AS MATERIALIZED (
    SELECT cur.id, NOT EXISTS (SELECT 1 FROM want w WHERE w.id = cur.id AND w.sku NOT IN (SELECT held.sku FROM held)) AS ok FROM cur
  ), done AS (
    -- By id = any(...), not a join to cur: a join leaves the planner a path over the whole
    -- primary key index (a merge join), which turning seq scans off does not price out.
    UPDATE "inventory"."reservations" r SET status = 'COMMITTED', update_time = p_now
    WHERE r.id = ANY (ARRAY(SELECT cur.id FROM cur JOIN ok ON ok.id = cur.id WHERE cur.status = 'RESERVED' AND ok.ok))
    RETURNING r.id
  ), taken AS (
    UPDATE "inventory"."stock" s SET on_hand = s.on_hand - t.quantity, reserved = s.reserved - t.quantity, update_time = p_now
    FROM (SELECT w.sku, sum(w.quantity)::bigint AS quantity FROM want w JOIN ok ON ok.id = w.id WHERE ok.ok GROUP BY w.sku) t
    WHERE s.sku = t.sku AND s.sku = ANY (ARRAY(SELECT held.sku FROM held))
    RETURNING s.sku
  )
  SELECT cur.id, cur.status, cur.lines, cur.expire_time, cur.release_reason, cur.tombstone, ok.ok FROM cur JOIN ok ON ok.id = cur.id;
END
$$;
