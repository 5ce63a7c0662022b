/**
 * The payment service process: config -> database (migrated) -> NATS
 * (stream, outbox relay) -> gRPC server (PaymentService + health +
 * reflection) -> graceful shutdown.
 *
 *   npm run start:payment   PORT (5005), DATABASE_URL (unset = PGlite in DATA_DIR/payment), NATS_URL,
 *                           PAYMENT_SLOW_MS (3000: how long tok_slow takes), LOG_LEVEL, ...
 *
 * With PGlite (one connection for the process) a tok_slow authorization makes
 * every other payment call wait for it; set DATABASE_URL for anything busy.
 */
import { pathToFileURL } from 'node:url';
import { connect, type NatsConnection } from 'nats';
import { PaymentAuthorizedSchema, PaymentService } from '../../gen/shop/payment/v1/payment_pb.js';
import { duration, integer, loadConfig, meshSettings, port, servicePorts, type Config } from '../../mesh/config.js';
import { databaseUnavailableInterceptor, openDatabase, type MeshDatabase } from '../../mesh/db.js';
import { normalizeSubjectPrefix, streamForType } from '../../mesh/events/naming.js';
import { withEventSignals } from '../../mesh/events/commit-signal.js';
import { startRelay, type OutboxRelay, type RelayHooks } from '../../mesh/events/relay.js';
import { ensureStreams } from '../../mesh/events/streams.js';
import { serve, startMeshServer, type MeshServer } from '../../mesh/server.js';
import { createShutdown } from '../../mesh/shutdown.js';
import { createLogger } from '../../mesh/telemetry/logger.js';
import { observeOutboxPublishLag, setOutboxBacklog } from '../../mesh/telemetry/metrics.js';
import { SimulatedProcessor, type CardProcessor } from './processor.js';
import { outbox } from './schema.js';
import { paymentService } from './service.js';
import { PaymentStore } from './store.js';

export const DEFAULT_NATS_URL = 'nats://127.0.0.1:4222';
export const paymentMigrations = new URL('./migrations', import.meta.url).pathname;

export const paymentSettings = {
  ...meshSettings,
  PORT: port(servicePorts.payment, 'gRPC listen port of the payment service'),
  PAYMENT_SLOW_MS: integer({ min: 0, max: 60_000, default: 3000, doc: 'How long the simulated processor takes for tok_slow (ms)' }),
  READINESS_INTERVAL: duration('5s', 'How often the health check pings the database'),
  DB_POOL: integer({ min: 1, max: 200, default: 10, doc: 'Postgres connections in the pool (DATABASE_URL only)' }),
};
export type PaymentConfig = Config<typeof paymentSettings>;

export interface PaymentApp {
  server: MeshServer;
  database: MeshDatabase;
  store: PaymentStore;
  nats: NatsConnection;
  relay: OutboxRelay;
  /** Stops taking calls (draining within graceMs), then the relay, NATS and the database. */
  close(graceMs?: number): Promise<void>;
}

const log = createLogger({ component: 'payment' });

/** The relay's reports, as log lines and the mesh_outbox_* metrics. */
const relayHooks: RelayHooks = {
  onPublished: ({ lagMs }) => observeOutboxPublishLag('payment', lagMs / 1000),
  onBacklog: (rows) => setOutboxBacklog('payment', rows),
  onError: (err) => log.warn({ err }, 'outbox relay batch failed'),
};

/** Starts the service in this process; tests call it with their own config (and may bring their own processor). */
export async function startPayment(
  config: PaymentConfig,
  host?: string,
  processor: CardProcessor = new SimulatedProcessor({ slowMs: config.PAYMENT_SLOW_MS }),
): Promise<PaymentApp> {
  const prefix = normalizeSubjectPrefix(config.NATS_SUBJECT_PREFIX ?? '');
  const database = await openDatabase({
    context: 'payment',
    url: config.DATABASE_URL,
    dataDir: config.DATA_DIR,
    migrationsFolder: paymentMigrations,
    maxConnections: config.DB_POOL,
  });
  // Transactions that write outbox rows wake this process's relay right after commit
  // (one coalesced NOTIFY for other replicas), instead of a NOTIFY inside each transaction.
  const db = withEventSignals(database.db);
  const closers: Array<() => Promise<unknown>> = [() => database.close()];
  const closeAll = async () => {
    for (const close of closers.splice(0).reverse()) await close().catch(() => {});
  };
  try {
    const store = new PaymentStore({ db, processor, subjectPrefix: prefix });

    const nats = await connect({ servers: config.NATS_URL ?? DEFAULT_NATS_URL, name: 'payment' });
    closers.push(() => nats.drain());
    await ensureStreams(await nats.jetstreamManager(), [streamForType(PaymentAuthorizedSchema.typeName, prefix)], { prefix });
    const relay = await startRelay({
      db,
      outbox,
      js: nats.jetstream(),
      nc: nats,
      hooks: relayHooks,
    });
    closers.push(() => relay.stop());

    const server = await startMeshServer({
      name: 'payment',
      host,
      port: config.PORT,
      services: [serve(PaymentService, paymentService(store))],
      readiness: () => database.ping(),
      readinessIntervalMs: config.READINESS_INTERVAL,
      // A database outage answers UNAVAILABLE (callers retry), not INTERNAL.
      interceptors: [databaseUnavailableInterceptor()],
    });
    return {
      server,
      database,
      store,
      nats,
      relay,
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
  const config = loadConfig(paymentSettings);
  const app = await startPayment(config);
  const shutdown = createShutdown();
  // Closers run in reverse: the server drains first, then relay, NATS and the database close.
  shutdown.add('events+db', () => app.close(0));
  shutdown.add('grpc', () => app.server.close(config.SHUTDOWN_GRACE));
  shutdown.listen();
  log.info(
    {
      address: app.server.address,
      driver: app.database.driver,
      migrations_applied: app.database.migrations?.applied.length ?? 0,
      payment_slow_ms: config.PAYMENT_SLOW_MS,
    },
    'payment listening',
  );
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err: unknown) => {
    log.fatal({ err }, 'payment failed to start');
    process.exit(1);
  });
}
