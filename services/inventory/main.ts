/**
 * The inventory service process: config -> database (migrated) -> NATS
 * (stream, outbox relay) -> expiry sweeper -> gRPC server (InventoryService +
 * health + reflection) -> graceful shutdown.
 *
 *   npm run start:inventory   PORT (5003), DATABASE_URL (unset = PGlite in DATA_DIR/inventory), NATS_URL,
 *                             RESERVATION_TTL (15m), RESERVATION_SWEEP_INTERVAL (5s), SEED_INVENTORY, LOG_LEVEL, ...
 */
import { pathToFileURL } from 'node:url';
import { connect, type NatsConnection } from 'nats';
import { InventoryService, StockReservedSchema } from '../../gen/shop/inventory/v1/inventory_pb.js';
import { boolean, duration, integer, loadConfig, meshSettings, port, servicePorts, type Config } from '../../mesh/config.js';
import { databaseUnavailableInterceptor, openDatabase, type MeshDatabase } from '../../mesh/db.js';
import { normalizeSubjectPrefix, streamForType } from '../../mesh/events/naming.js';
import { withEventSignals } from '../../mesh/events/commit-signal.js';
import { startRelay, type OutboxRelay, type RelayHooks } from '../../mesh/events/relay.js';
import { ensureStreams } from '../../mesh/events/streams.js';
import { serve, startMeshServer, type MeshServer } from '../../mesh/server.js';
import { createShutdown } from '../../mesh/shutdown.js';
import { createLogger } from '../../mesh/telemetry/logger.js';
import { observeOutboxPublishLag, setOutboxBacklog } from '../../mesh/telemetry/metrics.js';
import { outbox } from './schema.js';
import { inventoryMigrations, seedInventory } from './seed.js';
import { inventoryService } from './service.js';
import { InventoryStore } from './store.js';
import { startSweeper, type Sweeper } from './sweeper.js';

export const DEFAULT_NATS_URL = 'nats://127.0.0.1:4222';

export const inventorySettings = {
  ...meshSettings,
  PORT: port(servicePorts.inventory, 'gRPC listen port of the inventory service'),
  RESERVATION_TTL: duration('15m', 'How long a reservation holds stock if neither committed nor released'),
  RESERVATION_SWEEP_INTERVAL: duration('5s', 'How often expired reservations are looked for and released'),
  SEED_INVENTORY: boolean(false, 'Stock the catalog seed SKUs at start (idempotent)'),
  READINESS_INTERVAL: duration('5s', 'How often the health check pings the database'),
  DB_POOL: integer({ min: 1, max: 200, default: 10, doc: 'Postgres connections in the pool (DATABASE_URL only)' }),
};
export type InventoryConfig = Config<typeof inventorySettings>;

export interface InventoryApp {
  server: MeshServer;
  database: MeshDatabase;
  store: InventoryStore;
  nats: NatsConnection;
  relay: OutboxRelay;
  sweeper: Sweeper;
  /** Stops taking calls (draining within graceMs), then the sweeper, the relay, NATS and the database. */
  close(graceMs?: number): Promise<void>;
}

const log = createLogger({ component: 'inventory' });

/** The relay's reports, as log lines and the mesh_outbox_* metrics. */
const relayHooks: RelayHooks = {
  onPublished: ({ lagMs }) => observeOutboxPublishLag('inventory', lagMs / 1000),
  onBacklog: (rows) => setOutboxBacklog('inventory', rows),
  onError: (err) => log.warn({ err }, 'outbox relay batch failed'),
};

/** Starts the service in this process; tests call it with their own config. */
export async function startInventory(config: InventoryConfig, host?: string): Promise<InventoryApp> {
  const prefix = normalizeSubjectPrefix(config.NATS_SUBJECT_PREFIX ?? '');
  const database = await openDatabase({
    context: 'inventory',
    url: config.DATABASE_URL,
    dataDir: config.DATA_DIR,
    migrationsFolder: inventoryMigrations,
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
    const store = new InventoryStore({ db, reservationTtlMs: config.RESERVATION_TTL, subjectPrefix: prefix });
    if (config.SEED_INVENTORY) log.info(await seedInventory(store), 'seeded the catalog seed SKUs');

    const nats = await connect({ servers: config.NATS_URL ?? DEFAULT_NATS_URL, name: 'inventory' });
    closers.push(() => nats.drain());
    await ensureStreams(await nats.jetstreamManager(), [streamForType(StockReservedSchema.typeName, prefix)], { prefix });
    const relay = await startRelay({
      db,
      outbox,
      js: nats.jetstream(),
      nc: nats,
      hooks: relayHooks,
    });
    closers.push(() => relay.stop());

    const sweeper = startSweeper(store, {
      intervalMs: config.RESERVATION_SWEEP_INTERVAL,
      onReleased: (count) => log.info({ count }, 'expired reservations released'),
      onError: (err) => log.warn({ err }, 'expiry sweep failed'),
    });
    closers.push(() => sweeper.stop());

    const server = await startMeshServer({
      name: 'inventory',
      host,
      port: config.PORT,
      services: [serve(InventoryService, inventoryService(store))],
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
      sweeper,
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
  const config = loadConfig(inventorySettings);
  const app = await startInventory(config);
  const shutdown = createShutdown();
  // Closers run in reverse: the server drains first, then sweeper, relay, NATS and the database close.
  shutdown.add('events+db', () => app.close(0));
  shutdown.add('grpc', () => app.server.close(config.SHUTDOWN_GRACE));
  shutdown.listen();
  log.info(
    {
      address: app.server.address,
      driver: app.database.driver,
      migrations_applied: app.database.migrations?.applied.length ?? 0,
      reservation_ttl_ms: config.RESERVATION_TTL,
    },
    'inventory listening',
  );
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err: unknown) => {
    log.fatal({ err }, 'inventory failed to start');
    process.exit(1);
  });
}
