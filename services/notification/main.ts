/**
 * The notification service process: config -> database (migrated) -> NATS
 * (streams, outbox relay, consumers of OrderConfirmed / OrderCancelled /
 * PaymentFailed) -> live feed (LISTEN) -> gRPC server (NotificationService +
 * health + reflection) -> graceful shutdown.
 *
 *   npm run start:notification     PORT (5006), DATABASE_URL (unset = PGlite in DATA_DIR/notification),
 *                                  NATS_URL, NATS_SUBJECT_PREFIX, LOG_LEVEL, ...
 *
 * Replicas: any number. The consumers are durable and shared (each event is
 * handled by one replica), and every replica LISTENs for recorded
 * notifications (feed.ts), so a watcher on any replica hears them all.
 */
import { pathToFileURL } from 'node:url';
import { connect, type NatsConnection } from 'nats';
import { NotificationSentSchema, NotificationService } from '../../gen/shop/notification/v1/notification_pb.js';
import { duration, integer, loadConfig, meshSettings, port, servicePorts, type Config } from '../../mesh/config.js';
import { databaseUnavailableInterceptor, openDatabase, type MeshDatabase } from '../../mesh/db.js';
import type { ConsumerHooks, RunningConsumer } from '../../mesh/events/consumer.js';
import { listenFromDb } from '../../mesh/events/listen.js';
import { normalizeSubjectPrefix, streamForType } from '../../mesh/events/naming.js';
import { withEventSignals } from '../../mesh/events/commit-signal.js';
import { startRelay, type OutboxRelay } from '../../mesh/events/relay.js';
import { ensureStreams } from '../../mesh/events/streams.js';
import { serve, startMeshServer, type MeshServer } from '../../mesh/server.js';
import { createShutdown } from '../../mesh/shutdown.js';
import { CONSUMED_EVENTS, startNotificationConsumers } from './consumers.js';
import { NotificationFeed } from './feed.js';
import { NotificationRepository } from './repository.js';
import { outbox } from './schema.js';
import { createNotificationService } from './service.js';

export const DEFAULT_NATS_URL = 'nats://127.0.0.1:4222';

function log(line: Record<string, unknown>): void {
  process.stderr.write(`${JSON.stringify({ service: 'notification', ...line })}\n`);
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
export const notificationMigrations = new URL('./migrations', import.meta.url).pathname;

export const notificationSettings = {
  ...meshSettings,
  PORT: port(servicePorts.notification, 'gRPC listen port of the notification service'),
  READINESS_INTERVAL: duration('5s', 'How often the health check pings the database'),
  EVENT_MAX_DELIVER: integer({ min: 1, max: 100, default: 5, doc: 'Deliveries of a failing event before it is dead-lettered' }),
  EVENT_CONCURRENCY: integer({ min: 1, max: 64, default: 4, doc: 'Events handled at once per consumer in this process (each is independent of the others)' }),
};
export type NotificationConfig = Config<typeof notificationSettings>;

export interface NotificationApp {
  server: MeshServer;
  database: MeshDatabase;
  nats: NatsConnection;
  relay: OutboxRelay;
  consumers: RunningConsumer[];
  feed: NotificationFeed;
  /** Stops taking calls (draining within graceMs), stops the feed, consumers and relay, closes NATS and the database. */
  close(graceMs?: number): Promise<void>;
}

/** Starts the service in this process; tests call it with their own config. */
export async function startNotification(config: NotificationConfig, host?: string): Promise<NotificationApp> {
  const prefix = normalizeSubjectPrefix(config.NATS_SUBJECT_PREFIX ?? '');
  const database = await openDatabase({
    context: 'notification',
    url: config.DATABASE_URL,
    dataDir: config.DATA_DIR,
    migrationsFolder: notificationMigrations,
  });
  // Transactions that write outbox rows wake this process's relay right after commit
  // (one coalesced NOTIFY for other replicas), instead of a NOTIFY inside each transaction.
  const db = withEventSignals(database.db);
  const closers: Array<() => Promise<unknown>> = [() => database.close()];
  const closeAll = async () => {
    for (const close of closers.splice(0).reverse()) await close().catch(() => {});
  };
  try {
    const repo = new NotificationRepository(db);
    const listen = listenFromDb(database.db);
    if (!listen) throw new Error('the database client cannot LISTEN: WatchNotifications needs postgres.js or PGlite');
    const feed = new NotificationFeed({
      listen,
      load: (id) => repo.findById(id),
      onError: (err) => log({ level: 'error', msg: 'notification feed failed', err: String(err) }),
    });
    // LISTEN before the consumers start, so nothing recorded from here on is missed by a watcher.
    await feed.start();
    closers.push(() => feed.stop());

    const nats = await connect({ servers: config.NATS_URL ?? DEFAULT_NATS_URL, name: 'notification' });
    closers.push(() => nats.drain());
    const js = nats.jetstream();
    // Our own stream, and the ones we read, so the start order of services does not matter.
    await ensureStreams(
      await nats.jetstreamManager(),
      [NotificationSentSchema, ...CONSUMED_EVENTS].map((e) => streamForType(e.typeName, prefix)),
      { prefix },
    );
    const relay = await startRelay({ db, outbox, js, nc: nats, hooks: relayHooks });
    closers.push(() => relay.stop());
    const consumers = await startNotificationConsumers({
      db,
      js,
      prefix,
      maxDeliver: config.EVENT_MAX_DELIVER,
      concurrency: config.EVENT_CONCURRENCY,
      hooks: consumerHooks,
    });
    closers.push(() => Promise.all(consumers.map((c) => c.stop())));

    const server = await startMeshServer({
      name: 'notification',
      host,
      port: config.PORT,
      services: [serve(NotificationService, createNotificationService({ repo, feed }))],
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
      feed,
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
  const config = loadConfig(notificationSettings);
  const app = await startNotification(config);
  const shutdown = createShutdown();
  // Closers run in reverse: the server drains first (watch streams end with UNAVAILABLE so
  // clients reconnect to another replica), then the feed, consumers, relay, NATS and the database.
  shutdown.add('events+db', () => app.close(0));
  shutdown.add('grpc', () => app.server.close(config.SHUTDOWN_GRACE));
  shutdown.listen();
  log({
    level: 'info',
    msg: 'notification listening',
    address: app.server.address,
    driver: app.database.driver,
    migrations_applied: app.database.migrations?.applied.length ?? 0,
  });
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err: unknown) => {
    log({ level: 'fatal', msg: 'notification failed to start', err: err instanceof Error ? err.message : String(err) });
    process.exit(1);
  });
}
