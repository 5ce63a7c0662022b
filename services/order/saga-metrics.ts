/**
 * order_saga_obligations_pending: sagas whose order is already final (settled at
 * its bound, domain.ts) while their saga still works off what is left, by step
 * ('compensate': a release or refund is owed; 'commit': a commit or capture is
 * owed). Non-zero means a dependency has been away longer than SAGA_FINAL_WITHIN;
 * it falls back to 0 as the obligations complete. Read from the database at
 * scrape time (every replica reports the same shop-wide figure: take the max).
 * The query only walks unfinished sagas (the partial index sagas_due_idx).
 */
import { Gauge } from 'prom-client';
import { sql } from 'drizzle-orm';
import type { Database } from '../../mesh/db.js';
import { resultRows } from '../../mesh/db.js';
import { metricsRegistry } from '../../mesh/telemetry/metrics.js';

let read: (() => Promise<Map<string, number>>) | undefined;
const last = new Map<string, number>();

new Gauge({
  name: 'order_saga_obligations_pending',
  help: 'Sagas still compensating or committing after their order went final at the bound (SAGA_FINAL_WITHIN), by step.',
  labelNames: ['step'],
  registers: [metricsRegistry],
  async collect() {
    if (!read) return;
    try {
      const now = await read();
      for (const step of ['compensate', 'commit']) last.set(step, now.get(step) ?? 0);
    } catch {
      // A scrape must not fail because the database is away; keep the last values.
    }
    for (const [step, n] of last) this.set({ step }, n);
  },
});

/** Counts the sagas of `db` with obligations pending, by step. */
export async function obligationsPending(db: Database): Promise<Map<string, number>> {
  const rows = resultRows<{ step: string; n: string | number }>(
    await db.execute(sql`
      select s.step, count(*) as n from "order".sagas s join "order".orders o on o.id = s.order_id
      where s.step <> 'done' and o.status <> 'PENDING'
      group by s.step`),
  );
  return new Map(rows.map((r) => [r.step, Number(r.n)]));
}

/** Reports `db`'s figure at every scrape (the order process calls it once at start). */
export function registerSagaObligationsGauge(db: Database): void {
  read = () => obligationsPending(db);
}
