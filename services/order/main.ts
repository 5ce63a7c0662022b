/**
 * The order service process: config -> database (migrated) -> NATS (stream,
 * outbox relay) -> clients of catalog, inventory and payment -> saga
 * orchestrator -> gRPC server (OrderService + health + reflection) ->
 * graceful shutdown.
 *
 *   npm run start:order    PORT (5004), DATABASE_URL (unset = PGlite in DATA_DIR/order), NATS_URL,
 *                          CATALOG_ADDR, INVENTORY_ADDR, PAYMENT_ADDR, SAGA_*, LOG_LEVEL, ...
 *
 * SAGA_CRASH_AFTER=reserve|authorize|confirm|compensate is a test hook: the
 * process SIGKILLs itself right after storing that step's transition, so the
 * crash tests can prove a restarted service finishes the saga.
 */
import { fileURLToPath, pathToFileURL } from 'node:url';
import { connect, type NatsConnection } from 'nats';
import { CatalogService } from '../../gen/shop/catalog/v1/catalog_pb.js';
import { InventoryService } from '../../gen/shop/inventory/v1/inventory_pb.js';
import { OrderPlacedSchema, OrderService } from '../../gen/shop/order/v1/order_pb.js';
import { PaymentService } from '../../gen/shop/payment/v1/payment_pb.js';
import { closeMeshClients, createMeshClient } from '../../mesh/client.js';
import {
  Invalid,
  duration,
  integer,
  loadConfig,
  meshSettings,
  port,
  servicePorts,
  string,
  type Config,
  type Setting,
} from '../../mesh/config.js';
import { openDatabase, type MeshDatabase } from '../../mesh/db.js';
import { normalizeSubjectPrefix, streamForType } from '../../mesh/events/naming.js';
import { startRelay, type OutboxRelay } from '../../mesh/events/relay.js';
import { ensureStreams } from '../../mesh/events/streams.js';
import { serve, startMeshServer, type MeshServer } from '../../mesh/server.js';
import { createShutdown } from '../../mesh/shutdown.js';
import { createLogger } from '../../mesh/telemetry/logger.js';
import { OrderChanges } from './changes.js';
import { CRASH_POINTS, type CrashPoint } from './domain.js';
import { SagaOrchestrator, type SagaPorts } from './saga.js';
import { outbox } from './schema.js';
import { createOrderService } from './service.js';

export const DEFAULT_NATS_URL = 'nats://127.0.0.1:4222';
export const orderMigrations = fileURLToPath(new URL('./migrations', import.meta.url));

const crashPoint: Setting<CrashPoint | undefined> = {
  expected: `one of ${CRASH_POINTS.join('|')}`,
  defaultText: undefined,
  optional: true,
  doc: 'Test hook: SIGKILL the process right after this saga step is stored',
  fallback: undefined,
  parse: (raw) => ((CRASH_POINTS as readonly string[]).includes(raw) ? (raw as CrashPoint) : new Invalid()),
};

export const orderSettings = {
  ...meshSettings,
  PORT: port(servicePorts.order, 'gRPC listen port of the order service'),
  CATALOG_ADDR: string(`127.0.0.1:${servicePorts.catalog}`, 'host:port of the catalog service'),
  INVENTORY_ADDR: string(`127.0.0.1:${servicePorts.inventory}`, 'host:port of the inventory service'),
  PAYMENT_ADDR: string(`127.0.0.1:${servicePorts.payment}`, 'host:port of the payment service'),
  SAGA_DEADLINE: duration('60s', 'How long a saga may take to reserve and authorize before it cancels with "timeout"'),
  SAGA_LEASE: duration('15s', 'How long a worker holds a saga; a crashed replica\'s sagas resume after it'),
  SAGA_POLL: duration('500ms', 'How often due sagas (retries, crashed replicas\' work) are looked for'),
  SAGA_CONCURRENCY: integer({ min: 1, max: 10_000, default: 64, doc: 'Sagas the poller runs at once' }),
  SAGA_RETRY_BASE: duration('100ms', 'First retry delay of a step that failed transiently'),
  SAGA_RETRY_MAX: duration('5s', 'Largest retry delay'),
  SAGA_CRASH_AFTER: crashPoint,
  WATCH_POLL: duration('1s', 'WatchOrder re-reads the order this often (sees other replicas\' changes)'),
  DB_POOL: integer({ min: 1, max: 200, default: 10, doc: 'Postgres connections of this process (the pool of every service shares the server\'s max_connections)' }),
  READINESS_INTERVAL: duration('5s', 'How often the health check pings the database'),
};
export type OrderConfig = Config<typeof orderSettings>;

export interface OrderApp {
  server: MeshServer;
  database: MeshDatabase;
  nats: NatsConnection;
  relay: OutboxRelay;
  saga: SagaOrchestrator;
  close(graceMs?: number): Promise<void>;
}

/** Starts the service in this process; tests call it with their own config. */
export async function startOrder(config: OrderConfig, opts: { host?: string } = {}): Promise<OrderApp> {
  const log = createLogger({ component: 'order' });
  const prefix = normalizeSubjectPrefix(config.NATS_SUBJECT_PREFIX ?? '');
  const database = await openDatabase({
    context: 'order',
    url: config.DATABASE_URL,
    dataDir: config.DATA_DIR,
    migrationsFolder: orderMigrations,
    maxConnections: config.DB_POOL,
  });
  const closers: Array<() => Promise<unknown>> = [() => database.close()];
  const closeAll = async () => {
    for (const close of closers.splice(0).reverse()) await close().catch(() => {});
  };
  try {
    const nats = await connect({ servers: config.NATS_URL ?? DEFAULT_NATS_URL, name: 'order' });
    closers.push(() => nats.drain());
    await ensureStreams(await nats.jetstreamManager(), [streamForType(OrderPlacedSchema.typeName, prefix)], { prefix });
    const relay = await startRelay({ db: database.db, outbox, js: nats.jetstream(), nc: nats });
    closers.push(() => relay.stop());

    const catalog = createMeshClient(CatalogService, config.CATALOG_ADDR);
    const ports: SagaPorts = {
      inventory: createMeshClient(InventoryService, config.INVENTORY_ADDR),
      payment: createMeshClient(PaymentService, config.PAYMENT_ADDR),
    };
    closers.push(async () => closeMeshClients());

    const changes = new OrderChanges();
    const saga = new SagaOrchestrator(
      database.db,
      ports,
      changes,
      {
        leaseMs: config.SAGA_LEASE,
        pollIntervalMs: config.SAGA_POLL,
        concurrency: config.SAGA_CONCURRENCY,
        retry: { baseDelayMs: config.SAGA_RETRY_BASE, maxDelayMs: config.SAGA_RETRY_MAX },
        subjectPrefix: prefix,
        crashAfter: config.SAGA_CRASH_AFTER,
      },
      log,
    );
    saga.start();
    closers.push(() => saga.stop());

    const server = await startMeshServer({
      name: 'order',
      host: opts.host,
      port: config.PORT,
      services: [
        serve(
          OrderService,
          createOrderService({
            db: database.db,
            catalog,
            saga,
            changes,
            sagaDeadlineMs: config.SAGA_DEADLINE,
            subjectPrefix: prefix,
            watchPollMs: config.WATCH_POLL,
          }),
        ),
      ],
      readiness: () => database.ping(),
      readinessIntervalMs: config.READINESS_INTERVAL,
    });
    return {
      server,
      database,
      nats,
      relay,
      saga,
      async close(graceMs = config.SHUTDOWN_GRACE) {
        await server.close(graceMs);
        await closeAll();
      },
    };
  } catch (err) {
    await closeAll();
    throw err;
  }
}

async function main(): Promise<void> {
  const config = loadConfig(orderSettings);
  const app = await startOrder(config);
  const shutdown = createShutdown();
  // Closers run in reverse: the server drains first, then the saga, relay, NATS and the database close.
  shutdown.add('saga+events+db', () => app.close(0));
  shutdown.add('grpc', () => app.server.close(config.SHUTDOWN_GRACE));
  shutdown.listen();
  process.stderr.write(
    `${JSON.stringify({
      level: 'info',
      msg: 'order listening',
      address: app.server.address,
      driver: app.database.driver,
      migrations_applied: app.database.migrations?.applied.length ?? 0,
      crash_after: config.SAGA_CRASH_AFTER ?? null,
    })}\n`,
  );
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err: unknown) => {
    process.stderr.write(
      `${JSON.stringify({ level: 'fatal', msg: 'order failed to start', err: err instanceof Error ? err.message : String(err) })}\n`,
    );
    process.exit(1);
  });
}
