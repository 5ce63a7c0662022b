/**
 * The user service process: config -> database (migrated) -> NATS (streams,
 * outbox relay, OrderConfirmed consumer) -> gRPC server (UserService + health
 * + reflection) -> graceful shutdown.
 *
 *   npm run start:user     PORT (5001), DATABASE_URL (unset = PGlite in DATA_DIR/user), NATS_URL,
 *                          JWT_SECRET, JWT_ISSUER, JWT_AUDIENCE, JWT_TTL, LOG_LEVEL, ...
 *
 * JWT_SECRET has a development default (DEV_JWT_SECRET in tokens.ts) so the
 * shop runs from a fresh clone; anything reachable by others must set its own,
 * and the gateway must be given the same value, issuer and audience.
 */
import { pathToFileURL } from 'node:url';
import { connect, type NatsConnection } from 'nats';
import { UserRegisteredSchema, UserService } from '../../gen/shop/user/v1/user_pb.js';
import { duration, integer, loadConfig, meshSettings, port, servicePorts, type Config } from '../../mesh/config.js';
import { databaseUnavailableInterceptor, openDatabase, type MeshDatabase } from '../../mesh/db.js';
import type { ConsumerHooks, RunningConsumer } from '../../mesh/events/consumer.js';
import { normalizeSubjectPrefix, streamForType } from '../../mesh/events/naming.js';
import { withEventSignals } from '../../mesh/events/commit-signal.js';
import { startRelay, type OutboxRelay } from '../../mesh/events/relay.js';
import { ensureStreams } from '../../mesh/events/streams.js';
import { serve, startMeshServer, type MeshServer } from '../../mesh/server.js';
import { createShutdown } from '../../mesh/shutdown.js';
import { CONSUMED_EVENTS, startUserConsumers } from './consumers.js';
import { prepareDecoy } from './password.js';
import { UserRepository } from './repository.js';
import { outbox } from './schema.js';
import { userMigrations } from './seed.js';
import { createUserService } from './service.js';
import { DEV_JWT_SECRET, jwtSettings } from './tokens.js';

export { jwtSettings };

export const DEFAULT_NATS_URL = 'nats://127.0.0.1:4222';

function log(line: Record<string, unknown>): void {
  process.stderr.write(`${JSON.stringify({ service: 'user', ...line })}\n`);
}

/** What the event backbone reports: failures worth a line in the log. */
const relayHooks = {
  onError: (err: unknown) => log({ level: 'warn', msg: 'outbox relay batch failed', err: String(err) }),
};
const consumerHooks: ConsumerHooks = {
  onRetry: (meta, err, delayMs) =>
    log({ level: 'warn', msg: 'event handling failed, will retry', event_id: meta.eventId, event_type: meta.eventType, delivery: meta.deliveryCount, delay_ms: delayMs, err: String(err) }),
  onDeadLetter: (meta, reason) =>
    log({ level: 'error', msg: 'event dead-lettered', event_id: meta.eventId, event_type: meta.eventType, reason }),
  onError: (err) => log({ level: 'error', msg: 'event consumer trouble', err: String(err) }),
};


export const userSettings = {
  ...meshSettings,
  ...jwtSettings,
  PORT: port(servicePorts.user, 'gRPC listen port of the user service'),
  READINESS_INTERVAL: duration('5s', 'How often the health check pings the database'),
  EVENT_MAX_DELIVER: integer({ min: 1, max: 100, default: 5, doc: 'Deliveries of a failing event before it is dead-lettered' }),
  EVENT_CONCURRENCY: integer({ min: 1, max: 64, default: 4, doc: 'Events handled at once per consumer in this process (each is independent of the others)' }),
};
export type UserConfig = Config<typeof userSettings>;

export interface UserApp {
  server: MeshServer;
  database: MeshDatabase;
  nats: NatsConnection;
  relay: OutboxRelay;
  consumers: RunningConsumer[];
  /** Stops taking calls (draining within graceMs), stops consuming and relaying, closes NATS and the database. */
  close(graceMs?: number): Promise<void>;
}

/** Starts the service in this process; tests call it with their own config. */
export async function startUser(config: UserConfig, host?: string): Promise<UserApp> {
  const prefix = normalizeSubjectPrefix(config.NATS_SUBJECT_PREFIX ?? '');
  const database = await openDatabase({
    context: 'user',
    url: config.DATABASE_URL,
    dataDir: config.DATA_DIR,
    migrationsFolder: userMigrations,
  });
  // Transactions that write outbox rows wake this process's relay right after commit
  // (one coalesced NOTIFY for other replicas), instead of a NOTIFY inside each transaction.
  const db = withEventSignals(database.db);
  const closers: Array<() => Promise<unknown>> = [() => database.close()];
  const closeAll = async () => {
    for (const close of closers.splice(0).reverse()) await close().catch(() => {});
  };
  try {
    const nats = await connect({ servers: config.NATS_URL ?? DEFAULT_NATS_URL, name: 'user' });
    closers.push(() => nats.drain());
    const js = nats.jetstream();
    // Our own stream, and the ones we read, so the start order of services does not matter.
    await ensureStreams(
      await nats.jetstreamManager(),
      [UserRegisteredSchema, ...CONSUMED_EVENTS].map((e) => streamForType(e.typeName, prefix)),
      { prefix },
    );
    const relay = await startRelay({ db, outbox, js, nc: nats, hooks: relayHooks });
    closers.push(() => relay.stop());
    const consumers = await startUserConsumers({
      db,
      js,
      prefix,
      maxDeliver: config.EVENT_MAX_DELIVER,
      concurrency: config.EVENT_CONCURRENCY,
      hooks: consumerHooks,
    });
    closers.push(() => Promise.all(consumers.map((c) => c.stop())));

    const repo = new UserRepository(db, prefix);
    await prepareDecoy();
    const server = await startMeshServer({
      name: 'user',
      host,
      port: config.PORT,
      services: [
        serve(
          UserService,
          createUserService({
            repo,
            tokens: {
              secret: config.JWT_SECRET,
              issuer: config.JWT_ISSUER,
              audience: config.JWT_AUDIENCE,
              ttlMs: config.JWT_TTL,
            },
          }),
        ),
      ],
      readiness: () => database.ping(),
      readinessIntervalMs: config.READINESS_INTERVAL,
      // A database outage answers UNAVAILABLE (callers retry), not INTERNAL.
      interceptors: [databaseUnavailableInterceptor()],
    });
    return {
      server,
      database,
      nats,
      relay,
      consumers,
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
  const config = loadConfig(userSettings);
  const app = await startUser(config);
  const shutdown = createShutdown();
  // Closers run in reverse: the server drains first, then consumers, relay, NATS and the database close.
  shutdown.add('events+db', () => app.close(0));
  shutdown.add('grpc', () => app.server.close(config.SHUTDOWN_GRACE));
  shutdown.listen();
  log({
    level: 'info',
    msg: 'user listening',
    address: app.server.address,
    driver: app.database.driver,
    migrations_applied: app.database.migrations?.applied.length ?? 0,
    jwt_secret: config.JWT_SECRET === DEV_JWT_SECRET ? 'development default' : 'set',
  });
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err: unknown) => {
    log({ level: 'fatal', msg: 'user failed to start', err: err instanceof Error ? err.message : String(err) });
    process.exit(1);
  });
}
