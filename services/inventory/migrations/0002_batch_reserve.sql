-- Custom SQL migration: inventory.reserve_batch(items, now, expire), the reservations of a
-- BatchReserveStock (or of one ReserveStock) in one statement, one round trip and one commit,
-- each item answered as a ReserveStock call of its own would be, the items served in the
-- order given. It is a function, not one plain statement, for two reasons: the items must
-- see each other's takings (item 2 gets what item 1 left), which is a loop; and in READ
-- COMMITTED a plain statement's snapshot is taken before it waits on a concurrent insert of
-- the same id, so it could not read the reservation that insert committed, while each
-- statement of a VOLATILE plpgsql function takes a fresh snapshot (as payment.lock_order).
--
-- items: [{id, lines: [{sku, quantity}] sorted by SKU, event: the StockReserved outbox row
-- {id, aggregate_id, event_type, subject, payload (base64), headers}}], one jsonb parameter
-- so the statement text is the same for any batch (mesh/db-prepared.ts).
--
-- Locks, in the global order (store.ts): first the reservation rows (the ids this call is
-- the first to write are inserted, in id order, so two batches sharing ids never deadlock;
-- a concurrent insert of the same id makes the second wait, then find the row), then the
-- stock rows of every SKU those items name, in SKU order, FOR UPDATE (each waiter reads the
-- row as the previous holder left it, so nothing is oversold; CHECK reserved <= on_hand
-- backs it up). Then, per item in order:
--   'stored'    the id existed before this call: its stored row is answered (the caller
--               compares lines: the same reservation, ALREADY_EXISTS, or a released id);
--   'repeat'    an earlier item of this call holds the id: answered from that item (ref);
--   'reserved'  every line fits the running availability: taken;
--   'short'     a line does not fit: nothing of this item is taken; short_sku is its first
--               short line in SKU order, short_available what that SKU had at its turn.
-- An id whose every try failed is deleted again (a failed ReserveStock leaves no row); an id
-- won by a later item than the one whose lines were inserted gets that item's lines. Then
-- the stock moves once per SKU and a StockReserved row goes into the outbox per reserved
-- item, in item order. The caller wakes the relay after commit (announceCommitted).
-- inventory.short_stock (0001) is no longer called by this version; it stays for replicas of
-- the previous one during a rolling deploy.
CREATE FUNCTION "inventory"."reserve_batch"(p_items jsonb, p_now timestamptz, p_expire timestamptz)
RETURNS TABLE (
  item int, outcome text, ref int, short_sku text, short_available bigint,
  stored_status text, stored_lines jsonb, stored_expire timestamptz, stored_reason text, stored_tombstone boolean
)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  n int := jsonb_array_length(p_items);
  mine text[];               -- ids this call inserted
  skus text[];
  avail jsonb;               -- sku -> available, as the items take it
  before jsonb;              -- sku -> available when locked
  first_of jsonb := '{}';    -- id -> the item whose lines were inserted
  holder jsonb := '{}';      -- id -> the item holding it, -1 while every try failed
  outcomes text[] := '{}';
  refs int[] := '{}';
  shorts text[] := '{}';
  short_avail bigint[] := '{}';
  won int[] := '{}';
  relined int[] := '{}';
  failed text[] := '{}';
  it jsonb;
  rid text;
  held int;
  line jsonb;
  bad jsonb;
BEGIN
  WITH firsts AS (
    SELECT DISTINCT ON (x.value ->> 'id') x.value ->> 'id' AS id, x.value -> 'lines' AS lines, x.ordinality
    FROM jsonb_array_elements(p_items) WITH ORDINALITY x
    ORDER BY x.value ->> 'id', x.ordinality
  ), ins AS (
    INSERT INTO "inventory"."reservations" (id, status, lines, expire_time, create_time, update_time)
    SELECT f.id, 'RESERVED', f.lines, p_expire, p_now, p_now FROM firsts f ORDER BY f.id
    ON CONFLICT (id) DO NOTHING
    RETURNING id
  )
  SELECT coalesce(array_agg(ins.id), '{}'), coalesce(jsonb_object_agg(f.id, f.ordinality - 1), '{}')
  INTO mine, first_of
  FROM ins JOIN firsts f ON f.id = ins.id;

  IF cardinality(mine) > 0 THEN
    SELECT array_agg(DISTINCT l.value ->> 'sku') INTO skus
    FROM jsonb_array_elements(p_items) x, jsonb_array_elements(x.value -> 'lines') l
    WHERE x.value ->> 'id' = ANY (mine);
    SELECT coalesce(jsonb_object_agg(h.sku, h.available), '{}') INTO avail FROM (
      SELECT s.sku, s.on_hand - s.reserved AS available FROM "inventory"."stock" s
      WHERE s.sku = ANY (skus) ORDER BY s.sku FOR UPDATE
    ) h;
    before := avail;
  END IF;

  FOR i IN 0 .. n - 1 LOOP
    it := p_items -> i;
    rid := it ->> 'id';
    IF NOT (rid = ANY (mine)) THEN
      outcomes[i + 1] := 'stored';
      CONTINUE;
    END IF;
    held := (holder ->> rid)::int;
    IF held >= 0 THEN
      outcomes[i + 1] := 'repeat';
      refs[i + 1] := held;
      CONTINUE;
    END IF;
    -- Lines by index, not FOR ... IN SELECT: plain expressions, no query per item.
    bad := NULL;
    FOR j IN 0 .. jsonb_array_length(it -> 'lines') - 1 LOOP
      line := it -> 'lines' -> j;
      IF coalesce((avail ->> (line ->> 'sku'))::bigint, 0) < (line ->> 'quantity')::bigint THEN
        bad := line;
        EXIT;
      END IF;
    END LOOP;
    IF bad IS NULL THEN
      FOR j IN 0 .. jsonb_array_length(it -> 'lines') - 1 LOOP
        line := it -> 'lines' -> j;
        avail := jsonb_set(avail, ARRAY[line ->> 'sku'], to_jsonb((avail ->> (line ->> 'sku'))::bigint - (line ->> 'quantity')::bigint));
      END LOOP;
      holder := jsonb_set(holder, ARRAY[rid], to_jsonb(i));
      outcomes[i + 1] := 'reserved';
      won := won || i;
      IF (first_of ->> rid)::int <> i THEN relined := relined || i; END IF;
    ELSE
      IF held IS NULL THEN holder := jsonb_set(holder, ARRAY[rid], '-1'); END IF;
      outcomes[i + 1] := 'short';
      shorts[i + 1] := bad ->> 'sku';
      short_avail[i + 1] := coalesce((avail ->> (bad ->> 'sku'))::bigint, 0);
    END IF;
  END LOOP;

  SELECT coalesce(array_agg(h.key), '{}') INTO failed FROM jsonb_each_text(holder) h WHERE h.value::int < 0;
  IF cardinality(failed) > 0 THEN
    DELETE FROM "inventory"."reservations" r WHERE r.id = ANY (failed);
  END IF;
  IF cardinality(relined) > 0 THEN
    UPDATE "inventory"."reservations" r SET lines = p_items -> x.i -> 'lines'
    FROM unnest(relined) x(i) WHERE r.id = p_items -> x.i ->> 'id';
  END IF;
  IF cardinality(won) > 0 THEN
    UPDATE "inventory"."stock" s
    SET reserved = s.reserved + ((before ->> s.sku)::bigint - (avail ->> s.sku)::bigint), update_time = p_now
    WHERE s.sku = ANY (skus) AND (before ->> s.sku)::bigint <> (avail ->> s.sku)::bigint;
    INSERT INTO "inventory"."outbox" (id, aggregate_id, event_type, subject, payload, headers)
    SELECT (e.ev ->> 'id')::uuid, e.ev ->> 'aggregate_id', e.ev ->> 'event_type', e.ev ->> 'subject',
      decode(e.ev ->> 'payload', 'base64'), e.ev -> 'headers'
    FROM (SELECT p_items -> w.i -> 'event' AS ev, w.k FROM unnest(won) WITH ORDINALITY w(i, k)) e
    ORDER BY e.k;
  END IF;

  RETURN QUERY
  SELECT (o.k - 1)::int, o.outcome, refs[o.k], shorts[o.k], short_avail[o.k],
    r.status, r.lines, r.expire_time, r.release_reason, r.tombstone
  FROM unnest(outcomes) WITH ORDINALITY o(outcome, k)
  LEFT JOIN LATERAL (
    SELECT r.status, r.lines, r.expire_time, r.release_reason, r.tombstone FROM "inventory"."reservations" r
    -- A null key for the other items: no index probe for them.
    WHERE r.id = CASE WHEN o.outcome = 'stored' THEN p_items -> (o.k - 1)::int ->> 'id' END
  ) r ON true
  ORDER BY o.k;
END
$$;
