/**
 * Where an order's latency goes, from the services' own Prometheus histograms:
 * `bench/orders.ts --stages` scrapes every service's /metrics when its measured window
 * starts and when it ends, and prints per service the RPCs it made (client side: what the
 * caller waited, queueing in both processes included), the RPCs it served, and its
 * database statements by operation, each as calls per confirmed order and mean ms.
 *
 * Means of the window only (the difference of the `_sum` and `_count` series), so the
 * warm-up does not count. A saga step's wait is its client line in the order service
 * (BatchReserveStock, BatchAuthorizePayments, ...); the matching server line says how much
 * of it the callee spent from request to status.
 */

/** One histogram series: sum of seconds and count, keyed by metric and labels. */
type Snapshot = Map<string, { sum: number; count: number }>;

const HISTOGRAMS = ['grpc_client_handling_seconds', 'grpc_server_handling_seconds', 'mesh_db_query_duration_seconds'] as const;

/** Reads the `_sum` and `_count` lines of the histograms above from one /metrics text. */
export function parseHistograms(text: string): Snapshot {
  const out: Snapshot = new Map();
  for (const line of text.split('\n')) {
    const m = /^(\w+)_(sum|count)(\{[^}]*\})? ([0-9.eE+-]+|NaN)$/.exec(line);
    if (!m || !(HISTOGRAMS as readonly string[]).includes(m[1])) continue;
    const key = `${m[1]}${m[3] ?? ''}`;
    const entry = out.get(key) ?? { sum: 0, count: 0 };
    entry[m[2] as 'sum' | 'count'] = Number(m[4]);
    out.set(key, entry);
  }
  return out;
}

export async function scrape(urls: Record<string, string>): Promise<Map<string, Snapshot>> {
  const out = new Map<string, Snapshot>();
  await Promise.all(
    Object.entries(urls).map(async ([service, url]) => {
      try {
        const res = await fetch(url);
        out.set(service, parseHistograms(await res.text()));
      } catch {
        // A service without metrics is left out of the report, not fatal to the bench.
      }
    }),
  );
  return out;
}

function label(labels: string, name: string): string | undefined {
  return new RegExp(`${name}="([^"]*)"`).exec(labels)?.[1];
}

/** The report: per service, its client RPCs, served RPCs and statements in the window. */
export function stageReport(start: Map<string, Snapshot>, end: Map<string, Snapshot>, orders: number): string {
  const lines = [`stage times in the window (per confirmed order: calls, mean ms; from each service's /metrics):`];
  for (const [service, after] of [...end].sort()) {
    const before = start.get(service) ?? new Map();
    const rows: { kind: string; what: string; calls: number; meanMs: number }[] = [];
    for (const [key, v] of after) {
      const b = before.get(key) ?? { sum: 0, count: 0 };
      const count = v.count - b.count;
      if (count <= 0) continue;
      const [metric, labels = ''] = key.split(/(?=\{)/);
      const kind = metric.startsWith('grpc_client') ? 'calls' : metric.startsWith('grpc_server') ? 'serves' : 'db';
      const what =
        kind === 'db'
          ? `${label(labels, 'operation')}${label(labels, 'outcome') === 'ok' ? '' : ` (${label(labels, 'outcome')})`}`
          : `${label(labels, 'grpc_method')}${label(labels, 'grpc_code') && label(labels, 'grpc_code') !== 'OK' ? ` (${label(labels, 'grpc_code')})` : ''}`;
      rows.push({ kind, what, calls: count / orders, meanMs: ((v.sum - b.sum) / count) * 1000 });
    }
    if (rows.length === 0) continue;
    rows.sort((a, b) => a.kind.localeCompare(b.kind) || b.calls * b.meanMs - a.calls * a.meanMs);
    lines.push(`  ${service}`);
    for (const r of rows) lines.push(`    ${r.kind.padEnd(6)} ${r.what.padEnd(32)} ${r.calls.toFixed(2).padStart(6)} ${r.meanMs.toFixed(1).padStart(8)} ms`);
  }
  return lines.join('\n');
}
