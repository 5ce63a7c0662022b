/**
 * One order, followed by its trace id: the browser's POST /v1/orders through the gateway,
 * the order service, the services it calls (catalog, inventory, payment) and the events
 * that reach notification and user. Every process runs with the telemetry register entry
 * (scripts/stack) and writes its spans as JSON lines into one directory
 * (OTEL_TRACES_EXPORTER=file); the test reads them back and walks the tree.
 */
import test from 'ava';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { startGateway, type RunningGateway } from '../scripts/stack.js';
import { seededSkus, setStock, startShop, type Shop } from './saga-support.js';
import type { SpanLine } from '../mesh/telemetry/file-exporter.js';

const traceDir = mkdtempSync(join(tmpdir(), 'protomesh-traces-'));
// Inherited by every child process the stack starts.
process.env.OTEL_TRACES_EXPORTER = 'file';
process.env.OTEL_TRACES_FILE_DIR = traceDir;

let shop: Shop;
let gateway: RunningGateway;

test.before(async (t) => {
  t.timeout(180_000);
  shop = await startShop();
  gateway = await startGateway(shop.stack, {
    env: { NATS_URL: shop.natsUrl, NATS_SUBJECT_PREFIX: shop.subjectPrefix },
    readyTimeoutMs: 90_000,
  });
});

test.after.always(async () => {
  await gateway?.stop();
  await shop?.close();
  if (!process.env.KEEP_TRACES) rmSync(traceDir, { recursive: true, force: true });
});

async function call(method: string, path: string, body?: unknown, token?: string, requestId?: string): Promise<any> {
  const res = await fetch(`${gateway.url}${path}`, {
    method,
    headers: {
      'content-type': 'application/json',
      ...(token ? { authorization: `Bearer ${token}` } : {}),
      ...(requestId ? { 'x-request-id': requestId } : {}),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${path} answered ${res.status}: ${text}`);
  return text ? JSON.parse(text) : {};
}

async function eventually<T>(what: string, read: () => Promise<T>, ok: (v: T) => boolean, timeoutMs = 30_000): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const v = await read().catch(() => undefined);
    if (v !== undefined && ok(v)) return v;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

function readSpans(): SpanLine[] {
  const spans: SpanLine[] = [];
  for (const f of readdirSync(traceDir)) {
    for (const line of readFileSync(join(traceDir, f), 'utf8').split('\n')) if (line) spans.push(JSON.parse(line));
  }
  return spans;
}

const SERVER = 1;

test('a placed order is one trace: gateway > order > catalog, inventory, payment > events > notification and user', async (t) => {
  t.timeout(180_000);
  const [{ sku }] = await seededSkus(shop, 1);
  await setStock(shop, sku, 50);
  const email = `trace-${randomUUID()}@example.test`;
  const password = 'correct horse battery staple';
  await call('POST', '/v1/users', { email, password, displayName: 'Trace Tester' });
  const { accessToken } = await call('POST', '/v1/sessions', { email, password });
  const order = await call( // response_body: the order itself
    'POST',
    '/v1/orders',
    { idempotencyKey: `trace-${randomUUID()}`, lines: [{ sku, quantity: '1' }], paymentToken: 'tok_visa' },
    accessToken,
    'req-trace-tree',
  );
  await eventually('CONFIRMED', () => call('GET', `/v1/orders/${order.id}`, undefined, accessToken), (r) => r.status === 'ORDER_STATUS_CONFIRMED');
  await eventually('points awarded', () => call('GET', '/v1/me/points', undefined, accessToken), (r) => (r.awards ?? []).length > 0);
  // Notification and user handle the same events; a CONSUMER span is written when its
  // handling (and transaction) ends, after the spans inside it: wait for those spans.
  const spans = await eventually(
    'the consumer spans of the trace',
    async () => readSpans(),
    (all) => {
      const place = all.find((s) => s.service === 'order' && s.kind === SERVER && s.attributes['rpc.method'] === 'PlaceOrder');
      const consumedBy = (service: string) =>
        all.some((s) => s.traceId === place!.traceId && s.service === service && s.kind === 4 && s.name.startsWith('process '));
      return !!place && consumedBy('notification') && consumedBy('user');
    },
    30_000,
  ).catch(() => readSpans());

  const place = spans.find((s) => s.service === 'order' && s.kind === SERVER && s.attributes['rpc.method'] === 'PlaceOrder');
  t.truthy(place, 'the order service recorded PlaceOrder');
  const trace = spans.filter((s) => s.traceId === place!.traceId);
  const byService = new Map<string, SpanLine[]>();
  for (const s of trace) byService.set(s.service, [...(byService.get(s.service) ?? []), s]);
  t.log([...byService].map(([svc, ss]) => `${svc}: ${[...new Set(ss.map((s) => s.name))].slice(0, 6).join(', ')}`).join('\n'));

  // The tree: PlaceOrder's ancestors reach the gateway's span for the HTTP request.
  const byId = new Map(trace.map((s) => [s.spanId, s]));
  const ancestors: SpanLine[] = [];
  for (let s = byId.get(place!.parentSpanId ?? ''); s; s = byId.get(s.parentSpanId ?? '')) ancestors.push(s);
  t.true(ancestors.some((s) => s.service === 'gateway'), 'the gateway is an ancestor of PlaceOrder');
  const root = trace.find((s) => !s.parentSpanId || !byId.has(s.parentSpanId));
  t.is(root?.service, 'gateway', 'the trace starts at the gateway');

  for (const service of ['catalog', 'inventory', 'payment', 'notification', 'user']) {
    t.true(byService.has(service), `${service} has spans in the order's trace`);
  }
  // The events hop: notification and user handle them as CONSUMER spans of this trace.
  for (const service of ['notification', 'user']) {
    const consumed = (byService.get(service) ?? []).filter((s) => s.kind === 4 && s.name.startsWith('process '));
    t.true(consumed.length > 0, `${service} consumed an event of this trace`);
  }
  const servedBy = (service: string) => (byService.get(service) ?? []).filter((s) => s.kind === SERVER && s.attributes['rpc.system'] === 'grpc');
  t.true(servedBy('catalog').length > 0, 'catalog served an RPC of this trace');
  t.true(servedBy('inventory').length > 0, 'inventory served an RPC of this trace');
  t.true(servedBy('payment').length > 0, 'payment served an RPC of this trace');
});
