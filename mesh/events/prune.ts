// Deleting old rows from a busy table without long locks and without replicas deadlocking:
// the inbox pruner and the outbox pruner both delete through here.
import { sql, type SQL } from "drizzle-orm";
import { getTableConfig, type PgTable } from "drizzle-orm/pg-core";
import { rowsOf, type EventsDb } from "./db.js";

/** Rows one pruning statement deletes at most: a short statement, short row locks, a small WAL burst. */
export const PRUNE_BATCH = 1000;

/**
 * Deletes the rows of `table` that match `where`; returns how many went. In batches of
 * `batchSize`, each its own statement (its own transaction), so a big backlog never holds
 * many row locks or one long transaction. The batches walk the table in physical order (a
 * TID range scan from where the last one stopped), so a pass reads the table about once and
 * needs no index on the column `where` tests. Several replicas pruning at once skip each
 * other's rows (SKIP LOCKED) and never wait on each other, so they cannot deadlock (one
 * unbounded DELETE per replica could: two scans may start at different points of a big
 * table); a row one of them skipped is deleted by the next pass.
 */
export async function deleteInBatches(db: EventsDb, table: PgTable, where: SQL, batchSize = PRUNE_BATCH): Promise<number> {
  const name = sql.raw(qualifiedName(table));
  let after = "(0,0)";
  let total = 0;
  for (;;) {
    const [row] = rowsOf<{ n: number; last: string | null }>(
      await db.execute(sql`
        with gone as (
          delete from ${name} where ctid = any(array(
            select ctid from ${name}
            where ctid > ${after}::tid and ${where}
            limit ${batchSize}
            for update skip locked))
          returning ctid)
        select count(*)::int as n, max(ctid)::text as last from gone`),
    );
    const n = Number(row?.n ?? 0);
    total += n;
    if (n < batchSize || !row?.last) return total;
    after = row.last;
  }
}

function qualifiedName(table: PgTable): string {
  const { name, schema } = getTableConfig(table);
  const quote = (id: string) => `"${id.replaceAll('"', '""')}"`;
  return schema ? `${quote(schema)}.${quote(name)}` : quote(name);
}
