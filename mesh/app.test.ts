// startServiceApp with a tiny service of the test's own (an outbox and an inbox in schema
// "apptest", one consumer), on a fresh Postgres database and real NATS under a unique prefix:
// what it wires (streams, relay + outbox metrics, consumer + consumer metrics, health,
// registry), the order it closes in, and that a failed start leaves nothing running.
import test from 'ava';
import { randomUUID } from 'node:crypto';
import { create, toBinary } from '@bufbuild/protobuf';
import { Code, ConnectError } from '@connectrpc/connect';
import { sql } from 'drizzle-orm';
import { pgSchema } from 'drizzle-orm/pg-core';
import type { NatsConnection } from 'nats';
import { Health, HealthCheckResponse_ServingStatus as Status } from '../gen/grpc/health/v1/health_pb.js';
import { CatalogService } from '../gen/shop/catalog/v1/catalog_pb.js';
import { OrderConfirmedSchema } from '../gen/shop/order/v1/order_pb.js';
import { StockReservedSchema } from '../gen/shop/inventory/v1/inventory_pb.js';
import {
  eventConsumer,
  eventConsumerSettings,
  registryBucketFor,
  serviceAppSettings,
  serviceShutdown,
  startServiceApp,
  type ServiceAppConfig,
} from './app.js';
import { closeMeshClients, createMeshClient } from './client.js';
import { ConfigError, meshSettings, port, type Config } from './config.js';
import type { Database } from './db.js';
import { PermanentEventError } from './events/consumer.js';
import { streamForType } from './events/naming.js';
import { enqueueEvent } from './events/outbox.js';
import { publishRawEvent } from './events/publisher.js';
import { inboxTable, outboxTable } from './events/tables.js';
import { ddlFor, eventually } from './events/test-support.js';
import { openRegistry } from './registry/registry.js';
import { serve } from './server.js';
import { metricsRegistry } from './telemetry/metrics.js';
import { migrationsFolder } from './testing/migrations-fixture.js';
import { startServiceForTest, type ServiceUnderTest } from './testing/index.js';

const schema = pgSchema('apptest');
const outbox = outboxTable(schema);
const inbox = inboxTable(schema);
const CONSUMER = 'apptest-order-confirmed';

const settings = { ...meshSettings, ...serviceAppSettings, ...eventConsumerSettings, PORT: port(0) };

let migrations: string;
test.before(async () => {
  const ddl = await ddlFor({ schema, outbox, inbox });
  migrations = migrationsFolder([{ tag: '0000_init', when: 1_700_000_000_000, sql: ddl }]);
});
test.after.always(() => closeMeshClients());

/** What the test service saw, and the handles it kept. */
interface Seen {
  handled: string[];
  stopped: string[];
  db?: Database;
  nats?: NatsConnection;
  /** A client to `mesh:///apptest`, made in setup as a service's clients are (order's are). */
  selfByName?: ReturnType<typeof createMeshClient<typeof CatalogService>>;
}

function startApp(config: ServiceAppConfig, seen: Seen, consumerName = CONSUMER) {
  return startServiceApp({
    name: 'apptest',
    config,
    host: '127.0.0.1',
    migrationsFolder: migrations,
    publishes: [StockReservedSchema],
    outbox,
    setup: async ({ db, nats }) => {
      seen.db = db;
      seen.nats = nats;
      seen.selfByName = createMeshClient(CatalogService, 'mesh:///apptest', { retry: { maxAttempts: 1 } });
      return {
        services: [serve(CatalogService, {})],
        consumers: [
          eventConsumer({
            name: consumerName,
            event: OrderConfirmedSchema,
            inbox,
            handler: async (_tx, event) => {
              if (!event.orderId) throw new PermanentEventError('OrderConfirmed without order_id');
              seen.handled.push(event.orderId);
            },
          }),
        ],
        background: [{ name: 'probe', stop: () => void seen.stopped.push('probe') }],
        listening: { extra: 'yes' },
      };
    },
  });
}

type MetricValues = { values: { labels: Record<string, unknown>; value: number; metricName?: string }[] };

/** Sum of a metric's samples with these labels (`sample` picks e.g. a histogram's _count). */
async function metricSum(name: string, labels: Record<string, string>, sample = name): Promise<number> {
  const metric = metricsRegistry.getSingleMetric(name) as unknown as { get(): Promise<MetricValues> };
  const { values } = await metric.get();
  return values
    .filter((v) => (v.metricName ?? name) === sample && Object.entries(labels).every(([k, want]) => v.labels[k] === want))
    .reduce((n, v) => n + v.value, 0);
}
const publishLagCount = () => metricSum('mesh_outbox_publish_lag_seconds', { context: 'apptest' }, 'mesh_outbox_publish_lag_seconds_count');
const deadLetterCount = () => metricSum('mesh_dead_letters_total', { consumer: CONSUMER });

test.serial('a started app relays its outbox, consumes with metrics, answers health, is registered, and closes in order', async (t) => {
  const seen: Seen = { handled: [], stopped: [] };
  const svc: ServiceUnderTest<Awaited<ReturnType<typeof startApp>>, typeof settings> = await startServiceForTest(
    settings,
    (config: Config<typeof settings>) => startApp(config, seen),
    { EVENT_MAX_DELIVER: '2' },
  );
  t.teardown(() => svc.close());
  const { app, nc, nats } = svc;
  const js = nc.jetstream();

  // Streams: its own (it publishes StockReserved), the one it reads and the dead letters.
  const jsm = await nc.jetstreamManager();
  const names: string[] = [];
  for await (const name of jsm.streams.names()) if (name.startsWith(nats.streamPrefix)) names.push(name);
  t.deepEqual(
    names.sort(),
    [
      `${nats.streamPrefix}DEAD_LETTERS`,
      streamForType(StockReservedSchema.typeName, nats.subjectPrefix).name,
      streamForType(OrderConfirmedSchema.typeName, nats.subjectPrefix).name,
    ].sort(),
  );

  // Health: SERVING while the database answers.
  const health = createMeshClient(Health, app.server.address, { retry: { maxAttempts: 1 } });
  t.is((await health.check({ service: '' })).status, Status.SERVING);

  // Outbox -> relay -> NATS, observed in mesh_outbox_publish_lag_seconds{context="apptest"}.
  const lagBefore = await publishLagCount();
  const sku = `SKU-${randomUUID().slice(0, 8)}`;
  await seen.db!.transaction((tx) =>
    enqueueEvent(tx, outbox, StockReservedSchema, create(StockReservedSchema, { reservationId: sku }), { aggregateId: sku, prefix: nats.subjectPrefix }),
  );
  const stream = streamForType(StockReservedSchema.typeName, nats.subjectPrefix).name;
  const published = await eventually('the relay published the outbox row', () =>
    jsm.streams.getMessage(stream, { last_by_subj: `${nats.subjectPrefix}${StockReservedSchema.typeName}` }),
  );
  t.is(published.header.get('pm-event-type'), StockReservedSchema.typeName);
  t.true((await publishLagCount()) > lagBefore);

  // The consumer handles an event; one it cannot handle goes to the dead letters and is counted.
  const publish = (orderId: string) =>
    publishRawEvent(js, {
      subject: `${nats.subjectPrefix}${OrderConfirmedSchema.typeName}`,
      payload: toBinary(OrderConfirmedSchema, create(OrderConfirmedSchema, { orderId })),
      eventId: randomUUID(),
      eventType: OrderConfirmedSchema.typeName,
    });
  const orderId = randomUUID();
  await publish(orderId);
  await eventually('the consumer handled the event', () => seen.handled.includes(orderId));
  const deadBefore = await deadLetterCount();
  await publish('');
  await eventually('the bad event was counted as a dead letter', async () => (await deadLetterCount()) > deadBefore);
  t.is(app.consumers.length, 1);

  // Registered under its name and address, in the run's own registry bucket.
  const registry = await openRegistry(nc, { bucket: registryBucketFor(nats.subjectPrefix) });
  const entry = await registry.get(`apptest.${app.registration.record.instance}`);
  t.is(entry?.json<{ address: string }>().address, `127.0.0.1:${app.server.port}`);
  t.like(app.listening, { address: app.server.address, driver: 'postgres', extra: 'yes' });
  // A client made in setup, before the app joined the mesh, dials by name: the call reaches the
  // service (which does not implement the method) instead of failing to resolve the target.
  const byName = ConnectError.from(await t.throwsAsync(seen.selfByName!.getProduct({ id: 'x' }, { timeoutMs: 5_000 })));
  t.is(byName.code, Code.Unimplemented, byName.message);

  // Closing: leave the registry, drain, then the inbox pruner, consumers, relay, background
  // work, the live config watcher, NATS, database.
  t.deepEqual(
    app.closeSteps.map((s) => s.name),
    ['registry', 'grpc', 'inbox pruner', 'consumers', 'outbox relay', 'probe', 'live-config', 'nats', 'database'],
  );
  await app.close(1000);
  t.deepEqual(seen.stopped, ['probe']);
  t.true(app.nats.isClosed());
  const gone = await registry.get(`apptest.${app.registration.record.instance}`);
  t.true(!gone || gone.operation !== 'PUT', 'the registry entry is deleted');
  await t.throwsAsync(app.database.ping(500));
});

test.serial('a start that fails half way closes what it had started and rethrows', async (t) => {
  const seen: Seen = { handled: [], stopped: [] };
  // An invalid durable name makes the consumer (after setup, relay and streams) fail to start.
  const err = await t.throwsAsync(
    startServiceForTest(settings, (config: Config<typeof settings>) => startApp(config, seen, 'not a valid name')),
  );
  t.regex(err!.message, /consumer name/);
  t.deepEqual(seen.stopped, ['probe']);
  t.true(seen.nats!.isClosed());
});

test.serial("a consumer's inbox is pruned on a schedule: rows past INBOX_RETENTION go, the rest stay", async (t) => {
  const seen: Seen = { handled: [], stopped: [] };
  const svc = await startServiceForTest(settings, (config: Config<typeof settings>) => startApp(config, seen), {
    INBOX_RETENTION: '1d',
    INBOX_PRUNE_INTERVAL: '200ms',
  });
  t.teardown(() => svc.close());
  const db = seen.db!;
  await db.insert(inbox).values([
    { consumer: CONSUMER, eventId: 'stale', eventType: 'x', processedAt: new Date(Date.now() - 2 * 86_400_000) },
    { consumer: CONSUMER, eventId: 'recent', eventType: 'x', processedAt: new Date(Date.now() - 3_600_000) },
  ]);
  const ids = async () => (await db.select({ id: inbox.eventId }).from(inbox).where(sql`${inbox.eventId} in ('stale', 'recent')`)).map((r) => r.id);
  await eventually('the stale row pruned', async () => !(await ids()).includes('stale'), 10_000);
  t.deepEqual(await ids(), ['recent']);
});

test.serial('an INBOX_RETENTION shorter than a consumer can see a copy of an event fails the start, naming the variable', async (t) => {
  const seen: Seen = { handled: [], stopped: [] };
  const err = await t.throwsAsync(
    startServiceForTest(settings, (config: Config<typeof settings>) => startApp(config, seen), { INBOX_RETENTION: '2m' }),
  );
  t.true(err instanceof ConfigError);
  t.regex(err!.message, /INBOX_RETENTION must be longer than the \d+ s in which consumer apptest-order-confirmed/);
  t.true(seen.nats!.isClosed());
});

test('serviceShutdown bounds the steps by SHUTDOWN_GRACE plus the time after the drain, not a fixed limit', async (t) => {
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  const run = async (grpcMs: number) => {
    const closed: string[] = [];
    const lines: Record<string, unknown>[] = [];
    const steps = [
      { name: 'grpc', close: () => sleep(grpcMs).then(() => void closed.push('grpc')) },
      { name: 'nats', close: () => sleep(50).then(() => void closed.push('nats')) },
    ];
    // A grace of 600 ms and 200 ms after it: a drain of 550 ms leaves the NATS step its time.
    const code = await serviceShutdown({ closeSteps: steps, shutdownGraceMs: 600 }, { afterDrainMs: 200, exit: false, log: (l) => void lines.push(l) }).run('test');
    return { code, closed, failed: lines.filter((l) => l.msg === 'close failed').map((l) => l.closer) };
  };
  t.deepEqual(await run(550), { code: 0, closed: ['grpc', 'nats'], failed: [] });
  // A drain that overruns grace + after is cut, and the steps after it fail rather than hang.
  const over = await run(1_200);
  t.is(over.code, 1);
  t.deepEqual(over.failed, ['grpc', 'nats']);
});
