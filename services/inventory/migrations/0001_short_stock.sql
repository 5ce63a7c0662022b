-- Custom SQL migration: inventory.short_stock(held), raised by ReserveStock's single statement
-- when a line cannot be covered. The statement runs outside an explicit transaction, so the
-- error is what undoes its reservation insert (a failed statement writes nothing); the held
-- rows (sku, available) travel in DETAIL for the INSUFFICIENT_STOCK answer. SQLSTATE PMI01
-- is ours: store.ts tells this refusal from any other failure by it.
CREATE FUNCTION "inventory"."short_stock"(held json) RETURNS int
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  RAISE EXCEPTION 'insufficient stock' USING ERRCODE = 'PMI01', DETAIL = held::text;
END
$$;
