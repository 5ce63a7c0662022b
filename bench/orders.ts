/**
 * Orders end to end under load: N concurrent clients place orders over gRPC
 * and follow each one (WatchOrder) until it is CONFIRMED. Prints orders per
 * second from PlaceOrder to CONFIRMED, the p50/p99 of that interval (and of
 * PlaceOrder alone, to show where the time goes), and the count of orders
 * lost or duplicated, which must be 0.
 *
 *   npx tsx bench/orders.ts [--clients 32] [--seconds 20] [--pipeline 4] [--warmup 3] [--pg-stats] [--stages]
 *   npx tsx bench/orders.ts --rate 300 [--clients 32] [--seconds 20] [--warmup 3]
 *
 * Two ways to load it. Closed loop (the default): each client keeps `--pipeline` orders in
 * flight, so the rate is whatever the shop sustains and the latency grows with the orders
 * waiting (clients × pipeline). Open loop (`--rate R`): orders start on a fixed schedule,
 * R per second spread over the clients whatever happens to earlier ones, and each order's
 * latency counts from the moment the schedule said it should start, so a stalled shop shows
 * as latency rather than as fewer orders (no coordinated omission). The latency at a rate
 * is the open loop's question; the ceiling is the closed loop's.
 *
 * --pg-stats adds what Postgres did per order (bench/pg-stats.ts); it needs a server with
 * pg_stat_statements loaded, best a private one (docs/performance.md says how).
 * --stages adds where the latency goes (bench/stage-times.ts): each service's RPCs made and
 * served and its statements in the window, as calls per order and mean ms, from /metrics.
 * On Linux it always prints, per process (threads included; Postgres' backends of the bench's
 * database together), the runs per order: times it got a CPU, the mean CPU of one run and the
 * run-queue wait (bench/cpu-runs.ts). CPU per order = runs × CPU per run.
 *
 * By default it starts the whole shop as child processes (scripts/stack.ts)
 * on a fresh database of the local Postgres (DATABASE_URL's server) and a NATS
 * prefix of its own, and drops them afterwards. With --external it uses the
 * services at CATALOG_ADDR, INVENTORY_ADDR, USER_ADDR, ORDER_ADDR (defaults:
 * the mesh/config ports), for example a `make dev` stack.
 *
 * Each client places an order, then follows it to CONFIRMED; `--pipeline` orders per
 * client may be in flight at once (placed, not yet confirmed). How it follows: `--follow
 * shopper` (the default) keeps one WatchMyOrders stream per client open for the whole run,
 * as a storefront's "my orders" view does; `--follow order` opens a WatchOrder stream per
 * order (the only way before WatchMyOrders, and still what a page showing one order does). One client =
 * one shopper (a registered user): the rate limit of the gateway is not in
 * the path, these are direct service calls.
 *
 * "Lost": placed (PlaceOrder answered) but not CONFIRMED by the end, or not
 * listed by ListOrders. "Duplicated": listed orders the clients never placed
 * (a key that made two orders), or loyalty points above what the confirmed
 * orders earn (an OrderConfirmed consumed twice). Points lower than earned
 * after the drain count as lost events.
 */
import { randomUUID } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import os from 'node:os';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { openPostgres } from '../mesh/postgres-url.js';
import { Code, ConnectError, createClient, type Client } from '@connectrpc/connect';
import type { DescService } from '@bufbuild/protobuf';
import { CatalogService } from '../gen/shop/catalog/v1/catalog_pb.js';
import { InventoryService } from '../gen/shop/inventory/v1/inventory_pb.js';
import { OrderService, OrderStatus } from '../gen/shop/order/v1/order_pb.js';
import { UserService } from '../gen/shop/user/v1/user_pb.js';
import { createMeshTransport, type MeshTransport } from '../mesh/client.js';
import { servicePorts } from '../mesh/config.js';
import { identityHeaders } from '../mesh/identity.js';
import { createTestDatabase, freePort, testNatsPrefix, testNatsUrl, type TestDatabase } from '../mesh/testing/index.js';
import { runSeeds, SHOP_SERVICES, startStack, type ShopService, type Stack } from '../scripts/stack.js';
import { scrape, stageReport } from './stage-times.js';
import { runDelta, runReport, runSnapshot, runsPerOrder, type RunSnapshot } from './cpu-runs.js';
import { pgStatsAvailable, pgStatsReport, pgStatsSnapshot } from './pg-stats.js';

const { values: args } = parseArgs({
  options: {
    clients: { type: 'string', default: '32' },
    seconds: { type: 'string', default: '20' },
    pipeline: { type: 'string', default: '4' },
    rate: { type: 'string' },
    follow: { type: 'string', default: 'shopper' },
    warmup: { type: 'string', default: '3' },
    external: { type: 'boolean', default: false },
    lines: { type: 'string', default: '1' },
    'pg-stats': { type: 'boolean', default: false },
    stages: { type: 'boolean', default: false },
  },
});
const CLIENTS = Number(args.clients);
const SECONDS = Number(args.seconds);
const PIPELINE = Number(args.pipeline);
const WARMUP = Number(args.warmup);
const LINES = Number(args.lines);
const FOLLOW = args.follow;
if (FOLLOW !== 'shopper' && FOLLOW !== 'order') throw new Error(`--follow must be shopper or order, got ${FOLLOW}`);
const RATE = args.rate === undefined ? undefined : Number(args.rate);
if (RATE !== undefined && !(RATE > 0)) throw new Error(`--rate must be a positive number of orders per second, got ${args.rate}`);

// ---- the shop ----------------------------------------------------------------------------

let stack: Stack | undefined;
const metricsPorts: Partial<Record<ShopService, number>> = {};
const metricsUrls = () => Object.fromEntries(Object.entries(metricsPorts).map(([name, port]) => [name, `http://127.0.0.1:${port}/metrics`]));
let db: TestDatabase | undefined;
const addr = { catalog: '', inventory: '', user: '', order: '' };
if (args.external) {
  addr.catalog = process.env.CATALOG_ADDR ?? `127.0.0.1:${servicePorts.catalog}`;
  addr.inventory = process.env.INVENTORY_ADDR ?? `127.0.0.1:${servicePorts.inventory}`;
  addr.user = process.env.USER_ADDR ?? `127.0.0.1:${servicePorts.user}`;
  addr.order = process.env.ORDER_ADDR ?? `127.0.0.1:${servicePorts.order}`;
} else {
  process.stderr.write('starting the shop (fresh database, own NATS prefix)...\n');
  db = await createTestDatabase();
  const nats = testNatsPrefix();
  const env = { DATABASE_URL: db.url, NATS_URL: testNatsUrl(), NATS_SUBJECT_PREFIX: nats.subjectPrefix, LOG_LEVEL: 'warn' };
  await runSeeds({ ...process.env, ...env });
  // --stages reads each service's /metrics: give each a known port.
  const serviceEnv: Partial<Record<ShopService, Record<string, string>>> = {};
  if (args.stages) for (const name of SHOP_SERVICES) serviceEnv[name] = { METRICS_PORT: String((metricsPorts[name] = await freePort())) };
  stack = await startStack({ env, serviceEnv, readyTimeoutMs: 90_000 });
  // A bench that fails half-way (a service died, an RPC refused) exits on the error: take the
  // shop down with it rather than leave six services running on the two cores.
  process.on('exit', () => {
    for (const svc of stack?.running.values() ?? []) if (svc.process.exitCode === null) svc.process.kill('SIGKILL');
  });
  for (const name of ['catalog', 'inventory', 'user', 'order'] as const) addr[name] = stack.addr(name);
  process.stderr.write(`shop up; logs in ${stack.logDir}\n`);
}

const transports: MeshTransport[] = [];
function clientOf<S extends DescService>(service: S, target: string): Client<S> {
  const t = createMeshTransport({ target });
  transports.push(t);
  return createClient(service, t);
}
const catalog = clientOf(CatalogService, addr.catalog);
const inventory = clientOf(InventoryService, addr.inventory);
const users = clientOf(UserService, addr.user);
const orders = clientOf(OrderService, addr.order);

// ---- setup: products with plenty of stock, one shopper per client ------------------------------

const admin = { headers: identityHeaders({ userId: 'bench-admin', role: 'admin' }) };
const products = (await catalog.listProducts({ pageSize: 50 })).products;
if (products.length < LINES) throw new Error('the catalog has too few products; seed it first');
for (const p of products) await inventory.setStock({ sku: p.sku, onHand: 10_000_000n }, admin);
const stockBefore = new Map<string, bigint>();
for (const p of products) stockBefore.set(p.sku, (await inventory.getStock({ sku: p.sku })).stock!.available);

interface Shopper {
  userId: string;
  /** --follow shopper: who waits for which order's end, and ends heard before PlaceOrder answered. */
  waiting: Map<string, (status: OrderStatus) => void>;
  ended: Map<string, OrderStatus>;
  as: { headers: Record<string, string> };
  placed: Map<string, { lines: { sku: string; quantity: bigint }[]; total: bigint }>;
  /** Idempotency keys tried (answered or not): more listed orders than this would be duplicates. */
  attempted: number;
}
// Registration hashes a password (scrypt, deliberately slow): a few at a time, with room to finish.
const shoppers: Shopper[] = [];
while (shoppers.length < CLIENTS) {
  const batch = Math.min(4, CLIENTS - shoppers.length);
  shoppers.push(
    ...(await Promise.all(
      Array.from({ length: batch }, async () => {
        const email = `bench-${randomUUID()}@example.test`;
        await users.register({ email, password: 'bench password 123', displayName: 'Bench' }, { timeoutMs: 30_000 });
        const { user } = await users.login({ email, password: 'bench password 123' }, { timeoutMs: 30_000 });
        return {
          userId: user!.id,
          as: { headers: identityHeaders({ userId: user!.id, role: 'user' }) },
          waiting: new Map(),
          ended: new Map(),
          placed: new Map(),
          attempted: 0,
        };
      }),
    )),
  );
}

// ---- load -----------------------------------------------------------------------------------------

const endToEnd: number[] = [];
const placeLatency: number[] = [];
let confirmed = 0;
let cancelled = 0;
let errors = 0;
let retries = 0;
const errorSamples = new Set<string>();
let measuring = false;
let stop = false;

// --follow shopper: one WatchMyOrders stream per shopper for the whole run, open (synced) before any order.
const watchStop = new AbortController();
// One listener per shopper's stream on this one signal: not a leak, so no MaxListeners warning.
setMaxListeners(0, watchStop.signal);
const watching: Promise<void>[] = [];
if (FOLLOW === 'shopper') {
  for (const s of shoppers) {
    let synced!: () => void;
    const ready = new Promise<void>((r) => (synced = r));
    watching.push(
      (async () => {
        try {
          for await (const msg of orders.watchMyOrders({}, { ...s.as, signal: watchStop.signal, timeoutMs: 3_600_000 })) {
            if (msg.event.case === 'synced') synced();
            if (msg.event.case !== 'order') continue;
            const { id, status } = msg.event.value;
            if (status !== OrderStatus.CONFIRMED && status !== OrderStatus.CANCELLED) continue;
            const waiter = s.waiting.get(id);
            if (waiter) waiter(status);
            else s.ended.set(id, status);
          }
        } catch (err) {
          if (!watchStop.signal.aborted) {
            errors++;
            errorSamples.add(`watchMyOrders: ${String((err as Error).message).slice(0, 120)}`);
          }
        }
      })(),
    );
    await ready;
  }
}

/** Resolves with the order's final status, heard on its shopper's WatchMyOrders stream. */
function endOf(s: Shopper, id: string): Promise<OrderStatus> {
  const heard = s.ended.get(id);
  if (heard !== undefined) {
    s.ended.delete(id);
    return Promise.resolve(heard);
  }
  return new Promise((resolve) =>
    s.waiting.set(id, (status) => {
      s.waiting.delete(id);
      resolve(status);
    }),
  );
}


/** A real client's retry: the same idempotency key again, so a lost answer never makes a second order. */
async function placeWithRetry(s: Shopper, req: { idempotencyKey: string; lines: { sku: string; quantity: bigint }[]; paymentToken: string }) {
  for (let attempt = 1; ; attempt++) {
    try {
      return (await orders.placeOrder(req, { ...s.as, timeoutMs: 10_000 })).order!;
    } catch (err) {
      const code = ConnectError.from(err).code;
      if (attempt >= 5 || (code !== Code.Unavailable && code !== Code.DeadlineExceeded)) throw err;
      retries++;
      await sleep(100 * attempt);
    }
  }
}

/** `scheduledAt`: when the open loop's schedule started it (latency counts from there); default now. */
async function oneOrder(s: Shopper, i: number, scheduledAt?: number): Promise<void> {
  const lines = Array.from({ length: LINES }, (_, k) => ({ sku: products[(i + k) % products.length]!.sku, quantity: 1n }));
  const idempotencyKey = `bench-${randomUUID()}`;
  s.attempted++;
  const t0 = scheduledAt ?? performance.now();
  let id: string;
  try {
    const order = await placeWithRetry(s, { idempotencyKey, lines, paymentToken: 'tok_visa' });
    id = order.id;
    s.placed.set(id, { lines, total: order.total!.amountMinor });
  } catch (err) {
    errors++;
    errorSamples.add(String((err as Error).message).slice(0, 120));
    return;
  }
  const t1 = performance.now();
  if (FOLLOW === 'shopper') {
    const st = await endOf(s, id);
    if (st === OrderStatus.CONFIRMED) confirmed++;
    else cancelled++;
    if (measuring) {
      endToEnd.push(performance.now() - t0);
      placeLatency.push(t1 - t0);
    }
    return;
  }
  try {
    for await (const msg of orders.watchOrder({ id }, { ...s.as, timeoutMs: 60_000 })) {
      const st = msg.order!.status;
      if (st === OrderStatus.CONFIRMED || st === OrderStatus.CANCELLED) {
        const t2 = performance.now();
        if (st === OrderStatus.CONFIRMED) confirmed++;
        else cancelled++;
        if (measuring) {
          endToEnd.push(t2 - t0);
          placeLatency.push(t1 - t0);
        }
        break;
      }
    }
  } catch (err) {
    errors++;
    errorSamples.add(`watch: ${String((err as Error).message).slice(0, 120)}`);
  }
}

async function client(s: Shopper, index: number): Promise<void> {
  const inFlight = new Set<Promise<void>>();
  let i = index;
  while (!stop) {
    const p = oneOrder(s, i++).finally(() => inFlight.delete(p));
    inFlight.add(p);
    if (inFlight.size >= PIPELINE) await Promise.race(inFlight);
  }
  await Promise.all(inFlight);
}

/**
 * Open loop: order k starts at start + k / RATE seconds, from shopper k mod clients. A timer
 * tick starts every order that is due (timers are coarse under load; the latency still
 * counts from the due time). Resolves once the orders it started have ended.
 */
async function openLoop(rate: number): Promise<void> {
  const inFlight = new Set<Promise<void>>();
  const start = performance.now();
  let k = 0;
  while (!stop) {
    const now = performance.now();
    for (; start + (k * 1000) / rate <= now; k++) {
      const p = oneOrder(shoppers[k % shoppers.length]!, k, start + (k * 1000) / rate).finally(() => inFlight.delete(p));
      inFlight.add(p);
    }
    await sleep(Math.max(1, start + (k * 1000) / rate - performance.now()));
  }
  await Promise.all(inFlight);
}

// Where the time goes: CPU seconds each service process spends per confirmed order
// (Linux /proc; only for the stack this script started).
function cpuMs(pid: number | undefined): number | undefined {
  if (!pid || !existsSync(`/proc/${pid}/stat`)) return undefined;
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100; // utime + stime, in clock ticks of 10 ms
}
// Postgres: the backends serving the bench's own database (the server's shared background
// processes, such as the WAL writer, are not counted). Linux /proc, same host only.
const pgAdmin = db ? openPostgres(db.url, { max: 1, onnotice: () => {} }) : undefined;
/** The backends serving the bench's own database, with the service each belongs to. */
async function postgresBackends(): Promise<{ pid: number; app: string }[]> {
  if (!pgAdmin) return [];
  return pgAdmin<{ pid: number; app: string }[]>`
    select pid, application_name as app from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()`;
}
/** Backend CPU by application_name (`protomesh-<context>`), and the sum under `postgres`. */
function postgresCpuMs(backends: { pid: number; app: string }[]): Map<string, number> | undefined {
  if (!pgAdmin) return undefined;
  const byApp = new Map<string, number>([['postgres', 0]]);
  for (const { pid, app } of backends) {
    const ms = cpuMs(pid) ?? 0;
    byApp.set('postgres', byApp.get('postgres')! + ms);
    const key = `pg:${app.replace(/^protomesh-/, '') || '?'}`;
    byApp.set(key, (byApp.get(key) ?? 0) + ms);
  }
  return byApp;
}
/** The local nats-server's pid (shared by every user of that server: its figure is an upper bound). */
function natsServerPid(): number | undefined {
  if (!/127\.0\.0\.1|localhost/.test(testNatsUrl())) return undefined;
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (readFileSync(`/proc/${entry}/comm`, 'utf8').trim() === 'nats-server') return Number(entry);
    } catch {
      // gone, or not ours to read
    }
  }
  return undefined;
}
const natsPid = existsSync('/proc') ? natsServerPid() : undefined;
/** Busy CPU of the whole host (every core, every process), from /proc/stat: what the two cores actually paid. */
function hostBusyMs(): number | undefined {
  if (!existsSync('/proc/stat')) return undefined;
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  const idle = f[3]! + f[4]!; // idle + iowait
  const all = f.slice(0, 8).reduce((a, b) => a + b, 0); // user..steal; guest is inside user
  return ((all - idle) * 1000) / 100;
}
/** CPU so far by process name, and (Linux) every thread's scheduler figures for bench/cpu-runs.ts. */
async function cpuSnapshot(): Promise<{ cpu: Map<string, number>; runs: RunSnapshot }> {
  const snap = new Map<string, number>();
  const pids = new Map<string, number[]>();
  const host = hostBusyMs();
  if (host !== undefined) snap.set('host', host);
  const nats = cpuMs(natsPid);
  if (nats !== undefined) {
    snap.set('nats-server', nats);
    pids.set('nats-server', [natsPid!]);
  }
  for (const [name, svc] of stack?.running ?? []) {
    const ms = cpuMs(svc.process.pid);
    if (ms !== undefined) {
      snap.set(name, ms);
      pids.set(name, [svc.process.pid!]);
    }
  }
  const own = process.cpuUsage();
  snap.set('bench client', (own.user + own.system) / 1000);
  pids.set('bench client', [process.pid]);
  const backends = await postgresBackends().catch(() => []);
  for (const [k, v] of postgresCpuMs(backends) ?? []) snap.set(k, v);
  if (backends.length) pids.set('postgres', backends.map((b) => b.pid));
  return { cpu: snap, runs: existsSync('/proc/self/task') ? runSnapshot(pids) : new Map() };
}

process.stderr.write(
  RATE === undefined
    ? `load: ${CLIENTS} clients x pipeline ${PIPELINE}, ${WARMUP}s warm-up + ${SECONDS}s measured\n`
    : `load: ${RATE} orders/s offered over ${CLIENTS} clients (open loop), ${WARMUP}s warm-up + ${SECONDS}s measured\n`,
);
const running = RATE === undefined ? shoppers.map((s, i) => client(s, i * 7)) : [openLoop(RATE)];
await sleep(WARMUP * 1000);
measuring = true;
const confirmedAtStart = confirmed;
const pgStatsSkipped = args['pg-stats'] && pgAdmin ? await pgStatsAvailable(pgAdmin) : 'not asked';
const pgStatsAtStart = pgAdmin && !pgStatsSkipped ? await pgStatsSnapshot(pgAdmin) : undefined;
const stagesAtStart = args.stages ? await scrape(metricsUrls()) : undefined;
const { cpu: cpuAtStart, runs: runsAtStart } = await cpuSnapshot();
const tStart = performance.now();
const windowStartUs = Number(process.hrtime.bigint() / 1000n);
await sleep(SECONDS * 1000);
const confirmedInWindow = confirmed - confirmedAtStart;
const windowEndUs = Number(process.hrtime.bigint() / 1000n);
const { cpu: cpuAtEnd, runs: runsAtEnd } = await cpuSnapshot();
const stagesAtEnd = stagesAtStart ? await scrape(metricsUrls()) : undefined;
const pgStatsAtEnd = pgAdmin && pgStatsAtStart ? await pgStatsSnapshot(pgAdmin) : undefined;
const cpuPerOrder: Record<string, number> = {};
for (const [name, end] of cpuAtEnd) {
  // A Postgres backend that connected during the window counts from zero.
  const start = cpuAtStart.get(name) ?? (name === 'postgres' || name.startsWith('pg:') ? 0 : undefined);
  if (start !== undefined && confirmedInWindow > 0) cpuPerOrder[name] = Number(((end - start) / confirmedInWindow).toFixed(1));
}
const runs = runsPerOrder(runDelta(runsAtStart, runsAtEnd), confirmedInWindow);
const elapsed = (performance.now() - tStart) / 1000;
measuring = false;
stop = true;
await Promise.all(running);
watchStop.abort();
await Promise.all(watching);

// ---- audit: nothing lost, nothing duplicated ---------------------------------------------------------

process.stderr.write('auditing...\n');
let placedTotal = 0;
let lost = 0;
let duplicated = 0;
let notConfirmed = 0;
let unanswered = 0;
const soldBySku = new Map<string, bigint>();
for (const s of shoppers) {
  placedTotal += s.placed.size;
  const listed = new Map<string, OrderStatus>();
  let pageToken = '';
  do {
    const page = await orders.listOrders({ pageSize: 100, pageToken }, s.as);
    for (const o of page.orders) listed.set(o.id, o.status);
    pageToken = page.nextPageToken;
  } while (pageToken);
  for (const [id, p] of s.placed) {
    const st = listed.get(id);
    if (st === undefined) lost++;
    else if (st !== OrderStatus.CONFIRMED) notConfirmed++;
    else for (const l of p.lines) soldBySku.set(l.sku, (soldBySku.get(l.sku) ?? 0n) + l.quantity);
  }
  // An order the client never heard about (every retry timed out) is not a duplicate; more orders than keys is.
  for (const id of listed.keys()) if (!s.placed.has(id)) unanswered++;
  duplicated += Math.max(0, listed.size - s.attempted);
}
let stockMismatch = 0;
for (const p of products) {
  const now = (await inventory.getStock({ sku: p.sku })).stock!.available;
  if (stockBefore.get(p.sku)! - now !== (soldBySku.get(p.sku) ?? 0n)) stockMismatch++;
}
// Points: one award per confirmed order, consumed from OrderConfirmed (eventually).
let pointsShort = 0;
let pointsOver = 0;
const deadline = Date.now() + 30_000;
for (const s of shoppers) {
  let expected = 0n;
  for (const p of s.placed.values()) expected += p.total / 100n;
  let balance = 0n;
  for (;;) {
    balance = (await users.getPoints({}, s.as)).balance;
    if (balance >= expected || Date.now() > deadline) break;
    await sleep(250);
  }
  if (balance < expected) pointsShort++;
  if (balance > expected) pointsOver++;
}

// ---- report -------------------------------------------------------------------------------------------

const pct = (xs: number[], q: number) => {
  if (xs.length === 0) return NaN;
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
};
const f = (x: number) => x.toFixed(1);
const report = {
  clients: CLIENTS,
  follow: FOLLOW,
  pipeline: RATE === undefined ? PIPELINE : undefined,
  offered_per_second: RATE,
  seconds: Number(elapsed.toFixed(1)),
  orders_per_second: Number((confirmedInWindow / elapsed).toFixed(1)),
  place_to_confirmed_ms: { p50: f(pct(endToEnd, 0.5)), p99: f(pct(endToEnd, 0.99)), max: f(Math.max(...endToEnd)) },
  place_order_rpc_ms: { p50: f(pct(placeLatency, 0.5)), p99: f(pct(placeLatency, 0.99)) },
  placed: placedTotal,
  confirmed,
  cancelled,
  errors,
  retries,
  unanswered,
  lost: lost + notConfirmed,
  duplicated: duplicated + pointsOver,
  points_short_users: pointsShort,
  stock_mismatched_skus: stockMismatch,
  cpu_ms_per_order: cpuPerOrder,
  runs_per_order: Object.fromEntries(runs),
  /** The measured window on the monotonic clock, for bench/cpuprofile-summary.ts --from/--to. */
  window_monotonic_us: [windowStartUs, windowEndUs],
};
console.log(
  `\norders/s (PlaceOrder -> CONFIRMED): ${report.orders_per_second}${RATE === undefined ? '' : ` (offered ${RATE}/s, open loop)`}\n` +
    `place -> confirmed: p50 ${report.place_to_confirmed_ms.p50} ms, p99 ${report.place_to_confirmed_ms.p99} ms (max ${report.place_to_confirmed_ms.max})\n` +
    `PlaceOrder RPC:     p50 ${report.place_order_rpc_ms.p50} ms, p99 ${report.place_order_rpc_ms.p99} ms\n` +
    `placed ${placedTotal}, confirmed ${confirmed}, cancelled ${cancelled}, errors ${errors}, PlaceOrder retries ${retries}, unanswered-but-created ${unanswered}\n` +
    `lost ${report.lost}, duplicated ${report.duplicated}, users with points short ${pointsShort}, SKUs with stock mismatch ${stockMismatch}`,
);
if (Object.keys(cpuPerOrder).length) {
  const processes = Object.entries(cpuPerOrder).filter(([k]) => !k.startsWith('pg:') && k !== 'host' && k !== 'nats-server');
  const backends = Object.entries(cpuPerOrder).filter(([k]) => k.startsWith('pg:'));
  const total = processes.reduce((a, [, v]) => a + v, 0);
  console.log(
    `CPU ms per confirmed order: ${processes
      .sort((a, b) => b[1] - a[1])
      .map(([k, v]) => `${k} ${v}`)
      .join(', ')} (total ${total.toFixed(1)}; NATS and Postgres' shared background processes not counted)`,
  );
  if (cpuPerOrder.host !== undefined)
    console.log(
      `whole host, busy CPU ms per confirmed order: ${cpuPerOrder.host}` +
        (cpuPerOrder['nats-server'] !== undefined ? ` (nats-server ${cpuPerOrder['nats-server']}, shared with whatever else uses it)` : '') +
        `; ${os.cpus().length} cores give ${((os.cpus().length * 1000) / cpuPerOrder.host).toFixed(0)} orders/s at this cost`,
    );
  if (backends.length) console.log(`Postgres backend CPU ms per order by client: ${backends.sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k.slice(3)} ${v}`).join(', ')}`);
}
if (runs.length) console.log(runReport(runs));
if (pgStatsAtStart && pgStatsAtEnd) console.log(pgStatsReport(pgStatsAtStart, pgStatsAtEnd, confirmedInWindow));
else if (args['pg-stats']) console.log(`--pg-stats skipped: ${pgStatsSkipped}`);
if (stagesAtStart && stagesAtEnd && confirmedInWindow > 0) console.log(stageReport(stagesAtStart, stagesAtEnd, confirmedInWindow));
if (errorSamples.size) console.log(`error samples: ${[...errorSamples].slice(0, 5).join(' | ')}`);
console.log(JSON.stringify(report));

for (const t of transports) t.close();
await pgAdmin?.end();
await stack?.stop();
await db?.drop();
process.exit(report.lost === 0 && report.duplicated === 0 && stockMismatch === 0 ? 0 : 1);

function sleep(ms: number) {
  return new Promise((r) => setTimeout(r, ms));
}
