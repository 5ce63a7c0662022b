import test from 'ava';
import { Histogram, Registry } from 'prom-client';
import { parseHistograms, stageReport } from './stage-times.js';

// The text comes from prom-client itself, as a service's /metrics serves it, so a change in
// the exposition format (label order, bucket lines, NaN) shows here rather than as a silent
// empty report in the bench.
function serviceMetrics() {
  const registry = new Registry();
  const client = new Histogram({ name: 'grpc_client_handling_seconds', help: 'h', labelNames: ['grpc_method', 'grpc_code'], registers: [registry] });
  const server = new Histogram({ name: 'grpc_server_handling_seconds', help: 'h', labelNames: ['grpc_method', 'grpc_code'], registers: [registry] });
  const db = new Histogram({ name: 'mesh_db_query_duration_seconds', help: 'h', labelNames: ['operation', 'outcome'], registers: [registry] });
  const other = new Histogram({ name: 'http_request_duration_seconds', help: 'h', registers: [registry] });
  return { registry, client, server, db, other };
}

test('parseHistograms keeps the sum and count of the three histograms, per label set, and nothing else', async (t) => {
  const m = serviceMetrics();
  m.client.observe({ grpc_method: 'BatchReserveStock', grpc_code: 'OK' }, 0.02);
  m.client.observe({ grpc_method: 'BatchReserveStock', grpc_code: 'OK' }, 0.03);
  m.server.observe({ grpc_method: 'PlaceOrder', grpc_code: 'OK' }, 0.065);
  m.db.observe({ operation: 'insert', outcome: 'ok' }, 0.004);
  m.other.observe(1);
  const snap = parseHistograms(await m.registry.metrics());
  t.deepEqual([...snap.keys()].sort(), [
    'grpc_client_handling_seconds{grpc_method="BatchReserveStock",grpc_code="OK"}',
    'grpc_server_handling_seconds{grpc_method="PlaceOrder",grpc_code="OK"}',
    'mesh_db_query_duration_seconds{operation="insert",outcome="ok"}',
  ]);
  const reserve = snap.get('grpc_client_handling_seconds{grpc_method="BatchReserveStock",grpc_code="OK"}')!;
  t.is(reserve.count, 2);
  t.true(Math.abs(reserve.sum - 0.05) < 1e-9);
});

test('stageReport gives the window only: calls per order and mean ms from the difference of two scrapes; failures are named', async (t) => {
  const m = serviceMetrics();
  m.client.observe({ grpc_method: 'BatchAuthorizePayments', grpc_code: 'OK' }, 1); // warm-up: before the window
  m.server.observe({ grpc_method: 'GetOrder', grpc_code: 'OK' }, 1); // only before: no line
  const start = new Map([['order', parseHistograms(await m.registry.metrics())]]);
  for (let i = 0; i < 4; i++) m.client.observe({ grpc_method: 'BatchAuthorizePayments', grpc_code: 'OK' }, 0.03);
  m.client.observe({ grpc_method: 'BatchAuthorizePayments', grpc_code: 'UNAVAILABLE' }, 0.5);
  m.db.observe({ operation: 'update', outcome: 'error' }, 0.01);
  const end = new Map([['order', parseHistograms(await m.registry.metrics())]]);

  const lines = stageReport(start, end, 2).split('\n');
  t.is(lines[0]!.startsWith('stage times in the window'), true);
  t.is(lines[1], '  order');
  const rows = lines.slice(2).map((l) => /^\s+(\w+)\s+(.+?)\s+([\d.]+)\s+([\d.]+) ms$/.exec(l)!.slice(1));
  const row = (what: string) => rows.find((r) => r[1] === what);
  // 4 calls of 30 ms over 2 orders, the warm-up's 1 s call left out.
  t.deepEqual(row('BatchAuthorizePayments'), ['calls', 'BatchAuthorizePayments', '2.00', '30.0']);
  t.deepEqual(row('BatchAuthorizePayments (UNAVAILABLE)'), ['calls', 'BatchAuthorizePayments (UNAVAILABLE)', '0.50', '500.0']);
  t.deepEqual(row('update (error)'), ['db', 'update (error)', '0.50', '10.0']);
  t.is(rows.length, 3, 'GetOrder had no calls in the window: no line');
});
