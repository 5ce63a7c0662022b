/**
 * The process wiring every service shares, so a service's main.ts says only what is its
 * own (its settings, its store, its handlers, the events it reacts to):
 *
 *   export const startCatalog = (config: CatalogConfig, host?: string) =>
 *     startServiceApp({
 *       name: 'catalog', config, host, migrationsFolder: catalogMigrations,
 *       setup: async ({ db }) => ({ services: [serve(CatalogService, createCatalogService(new ProductRepository(db)))] }),
 *     });
 *   runServiceMain(import.meta.url, () => startCatalog(loadConfig(catalogSettings)));
 *
 * startServiceApp, in this order:
 *   1. the database (migrated), wrapped by withEventSignals so an outbox commit wakes the relay
 *   2. NATS (reconnecting for ever), the streams it publishes to and reads from
 *   3. `setup`: the service builds its store, handlers, consumers and background work
 *   4. the outbox relay (mesh_outbox_* metrics), the durable consumers (mesh_consumer_* metrics)
 *      and the pruning of their inbox (INBOX_RETENTION, checked against redelivery first)
 *   5. the gRPC server: readiness = database ping, database outages answer UNAVAILABLE
 *   6. registration in the discovery registry (mesh:///<name>)
 * A failure at any step closes what was started and rethrows. `close()` undoes it in reverse.
 *
 * runServiceMain adds the process around it: SIGTERM/SIGINT shutdown (mesh/shutdown),
 * one "listening" line, and exit 1 with one line when the start fails.
 */
import { pathToFileURL } from 'node:url';
import type { DescMessage } from '@bufbuild/protobuf';
import { connect, type JetStreamClient, type NatsConnection } from 'nats';
import { ConfigError, duration, integer } from './config.js';
import { answerDatabaseError, openDatabase, type Database, type MeshDatabase } from './db.js';
import { withEventSignals } from './events/commit-signal.js';
import {
  DEFAULT_ACK_WAIT_MS,
  DEFAULT_MAX_DELIVER,
  startConsumer,
  type ConsumerHooks,
  type ConsumerOptions,
  type RunningConsumer,
} from './events/consumer.js';
import { inboxRetentionFloorMs, startInboxPruner, type InboxPruner } from './events/inbox.js';
import { normalizeSubjectPrefix, streamForType, streamPrefix } from './events/naming.js';
import { liveConfigBucketFor, meshLiveSettings, startLiveConfig } from './live-config.js';
import { startRelay, type OutboxRelay, type RelayHooks } from './events/relay.js';
import { DEFAULT_DUPLICATE_WINDOW_MS, ensureStreams } from './events/streams.js';
import type { InboxTable, OutboxTable } from './events/tables.js';
import { joinMesh } from './registry/announce.js';
import type { Registration } from './registry/registry.js';
import { registerMeshResolver } from './registry/resolver.js';
import { startMeshServer, type MeshServer, type ServiceRegistration } from './server.js';
import { createShutdown, type Shutdown, type ShutdownOptions } from './shutdown.js';
import { createLogger, type Logger } from './telemetry/logger.js';
import { consumerMetricsHooks, observeOutboxPublishLag, setOutboxBacklog } from './telemetry/metrics.js';

export const DEFAULT_NATS_URL = 'nats://127.0.0.1:4222';

/** Settings read by startServiceApp beyond meshSettings; spread them into a service's spec. */
export const serviceAppSettings = {
  READINESS_INTERVAL: duration('5s', 'How often the health check pings the database', { min: '10ms', max: '24d' }),
};

/** Settings of a service that consumes events (spread next to serviceAppSettings). */
export const eventConsumerSettings = {
  EVENT_MAX_DELIVER: integer({ min: 1, max: 100, default: 5, doc: 'Deliveries of a failing event before it is dead-lettered' }),
  EVENT_CONCURRENCY: integer({
    min: 1,
    max: 64,
    default: 4,
    doc: 'Events handled at once per consumer in this process (each is independent of the others)',
  }),
  INBOX_RETENTION: duration(
    '7d',
    "How long a handled event's inbox row is kept (it makes a redelivered copy change nothing). Must exceed the time a copy can still come back by itself (JetStream's duplicate window plus every redelivery's ack wait and backoff: checked at start); days, so dead-letter replays and a relay republishing after a long NATS outage are still deduplicated",
  ),
  INBOX_PRUNE_INTERVAL: duration('1h', 'How often inbox rows older than INBOX_RETENTION are deleted (in batches of 1000)', { min: '10ms', max: '24d' }),
};

const DEFAULT_INBOX_RETENTION_MS = 7 * 86_400_000;
const DEFAULT_INBOX_PRUNE_INTERVAL_MS = 3_600_000;

/** The part of a service's config this file reads (meshSettings + PORT + serviceAppSettings). */
export interface ServiceAppConfig {
  readonly PORT: number;
  readonly DATABASE_URL?: string;
  readonly DATA_DIR: string;
  readonly DB_POOL: number;
  readonly DB_PREPARE: boolean;
  readonly NATS_URL?: string;
  readonly NATS_SUBJECT_PREFIX?: string;
  readonly SHUTDOWN_GRACE: number;
  readonly READINESS_INTERVAL: number;
  /** Only services with consumers declare these (eventConsumerSettings); the consumer defaults apply otherwise. */
  readonly EVENT_MAX_DELIVER?: number;
  readonly EVENT_CONCURRENCY?: number;
  readonly INBOX_RETENTION?: number;
  readonly INBOX_PRUNE_INTERVAL?: number;
}

/**
 * A durable consumer as the service describes it; the app adds the database, JetStream,
 * the prefix, the configured deliveries/concurrency and the log + metrics hooks.
 */
export type ServiceConsumer<Desc extends DescMessage = DescMessage> = Omit<ConsumerOptions<Desc>, 'db' | 'js' | 'prefix'>;

/**
 * Checks a consumer's handler against its event type, then widens it so consumers of
 * different events fit one list: `consumers: [eventConsumer({ name, event: XSchema, handler, inbox })]`.
 */
export function eventConsumer<Desc extends DescMessage>(consumer: ServiceConsumer<Desc>): ServiceConsumer {
  return consumer as unknown as ServiceConsumer;
}

/** Something the service started in `setup` that must stop before NATS and the database close. */
export interface BackgroundTask {
  name: string;
  stop(): Promise<unknown> | unknown;
}

/** What `setup` gets: everything started so far. */
export interface ServiceAppContext<C extends ServiceAppConfig = ServiceAppConfig> {
  config: C;
  /** The database handle to write with: outbox commits wake the relay (withEventSignals). */
  db: Database;
  /** The raw handle (LISTEN, ping, driver), for the few that need it. */
  database: MeshDatabase;
  nats: NatsConnection;
  js: JetStreamClient;
  /** Normalised NATS subject prefix ('' in production). */
  prefix: string;
  log: Logger;
}

/** What `setup` returns. `expose` is merged into the app (tests reach a store or a feed through it). */
export interface ServiceAppParts<Exposed extends object = object> {
  services: ServiceRegistration[];
  consumers?: ServiceConsumer[];
  background?: BackgroundTask[];
  /** Extra fields for the "listening" line (e.g. which JWT secret is in use). */
  listening?: Record<string, unknown>;
  expose?: Exposed;
}

export interface ServiceAppOptions<C extends ServiceAppConfig, Exposed extends object> {
  /** The bounded context: names the database context, NATS connection, logger, server and registry entry. */
  name: string;
  config: C;
  migrationsFolder: string;
  /** Listen address; all interfaces by default (tests pass 127.0.0.1). */
  host?: string;
  /** Event types this service publishes: their streams are created at start. */
  publishes?: readonly DescMessage[];
  /** The service's outbox table; given, the relay publishes it. */
  outbox?: OutboxTable;
  setup(ctx: ServiceAppContext<C>): Promise<ServiceAppParts<Exposed>>;
}

export interface ServiceAppCore {
  readonly name: string;
  readonly server: MeshServer;
  readonly database: MeshDatabase;
  readonly nats: NatsConnection;
  readonly relay: OutboxRelay | undefined;
  readonly consumers: RunningConsumer[];
  readonly registration: Registration;
  readonly log: Logger;
  /** Fields for the "listening" line. */
  readonly listening: Record<string, unknown>;
  /** SHUTDOWN_GRACE: how long the server drains calls when the process is told to stop. */
  readonly shutdownGraceMs: number;
  /** The close steps, first to run first: runServiceMain hands them to mesh/shutdown one by one. */
  readonly closeSteps: readonly CloseStep[];
  /** Leaves the registry, drains calls within graceMs (SHUTDOWN_GRACE by default), then stops the rest in reverse start order. */
  close(graceMs?: number): Promise<void>;
}

export type ServiceApp<Exposed extends object = object> = ServiceAppCore & Exposed;

export interface CloseStep {
  name: string;
  close(graceMs: number): Promise<unknown> | unknown;
}

/**
 * The registry bucket of a process: MESH_REGISTRY_BUCKET, else one per subject prefix, so a
 * test run (unique prefix) never announces its instances to the shop running beside it.
 * The bucket is a stream, so it carries the stream prefix like every other stream of the run.
 */
export function registryBucketFor(prefix: string): string | undefined {
  return process.env.MESH_REGISTRY_BUCKET ?? (prefix ? `${streamPrefix(prefix)}MESH_REGISTRY` : undefined);
}

/** Relay reports as mesh_outbox_* metrics and a log line per failed batch. */
function outboxRelayHooks(context: string, log: Logger): RelayHooks {
  return {
    onPublished: ({ lagMs }) => observeOutboxPublishLag(context, lagMs / 1000),
    onBacklog: (rows) => setOutboxBacklog(context, rows),
    onError: (err) => log.warn({ err }, 'outbox relay batch failed'),
  };
}

/** Log lines for what a consumer reports, plus the service's own hooks, plus the metrics. */
function consumerHooks(consumer: string, log: Logger, own: ConsumerHooks = {}): ConsumerHooks {
  const logged: ConsumerHooks = {
    onRetry: (meta, err, delayMs) =>
      log.warn(
        { consumer, event_id: meta.eventId, event_type: meta.eventType, delivery: meta.deliveryCount, delay_ms: delayMs, err },
        'event handling failed, will retry',
      ),
    onDeadLetter: (meta, reason) =>
      log.error({ consumer, event_id: meta.eventId, event_type: meta.eventType, reason }, 'event dead-lettered'),
    onError: (err) => log.error({ consumer, err }, 'event consumer trouble'),
  };
  const all: ConsumerHooks[] = [logged, consumerMetricsHooks(consumer), own];
  return {
    onHandled: (meta, ms) => all.forEach((h) => h.onHandled?.(meta, ms)),
    onDuplicate: (meta) => all.forEach((h) => h.onDuplicate?.(meta)),
    onRetry: (meta, err, delayMs) => all.forEach((h) => h.onRetry?.(meta, err, delayMs)),
    onDeadLetter: (meta, reason) => all.forEach((h) => h.onDeadLetter?.(meta, reason)),
    onError: (err) => all.forEach((h) => h.onError?.(err)),
  };
}

/** Starts a service in this process (tests call it directly; main.ts through runServiceMain). */
export async function startServiceApp<C extends ServiceAppConfig, Exposed extends object = object>(
  options: ServiceAppOptions<C, Exposed>,
): Promise<ServiceApp<Exposed>> {
  const { name, config } = options;
  const log = createLogger({ component: name });
  const prefix = normalizeSubjectPrefix(config.NATS_SUBJECT_PREFIX ?? '');
  // Each step that started pushes how to undo it; closing runs them last-in first-out, so the
  // registry entry goes first, then the server drains, then consumers, relay, background
  // work, NATS and finally the database the others were still writing to.
  const steps: CloseStep[] = [];
  const closeAll = async (graceMs: number) => {
    for (const step of steps.splice(0).reverse()) {
      await Promise.resolve()
        .then(() => step.close(graceMs))
        .catch((err: unknown) => log.warn({ err, step: step.name }, 'close step failed'));
    }
  };

  const database = await openDatabase({
    context: name,
    url: config.DATABASE_URL,
    dataDir: config.DATA_DIR,
    migrationsFolder: options.migrationsFolder,
    maxConnections: config.DB_POOL,
    prepare: config.DB_PREPARE,
  });
  steps.push({ name: 'database', close: () => database.close() });
  try {
    // Transactions that write outbox rows wake this process's relay right after commit
    // (one coalesced NOTIFY for other replicas), instead of a NOTIFY inside each transaction.
    const db = withEventSignals(database.db);

    // Reconnect for ever: the outbox keeps events while NATS is away, and a connection that
    // gave up after the client's default 10 attempts would never relay or consume again.
    // noAsyncTraces: nats.js otherwise builds an Error (a captured stack) for every request and
    // its timer, JetStream publishes included: 2-3 % of a relaying process's CPU under the
    // orders bench. Its only use is a longer stack on a request timeout, which mesh's own
    // errors name anyway (the relay logs the subject and the event).
    const nats = await connect({ servers: config.NATS_URL ?? DEFAULT_NATS_URL, name, maxReconnectAttempts: -1, noAsyncTraces: true });
    steps.push({ name: 'nats', close: () => drainNats(nats) });
    const js = nats.jetstream();
    // `mesh:///<service>` must be dialable before setup: grpc-js picks a channel's resolver when
    // the channel is made, and a service makes its clients in setup. Made before this, a
    // mesh:/// target went to the DNS resolver and failed for the life of the process.
    registerMeshResolver(nats, { bucket: registryBucketFor(prefix) });

    const parts = await options.setup({ config, db, database, nats, js, prefix, log });
    for (const task of parts.background ?? []) steps.push({ name: task.name, close: () => task.stop() });
    const inboxRetentionMs = config.INBOX_RETENTION ?? DEFAULT_INBOX_RETENTION_MS;
    checkInboxRetention(inboxRetentionMs, parts.consumers ?? [], config.EVENT_MAX_DELIVER);

    // Our own streams and the ones we read, so the start order of services does not matter.
    const consumed = (parts.consumers ?? []).map((c) => c.event as DescMessage);
    const streams = [...(options.publishes ?? []), ...consumed].map((e) => streamForType(e.typeName, prefix));
    if (streams.length > 0) await ensureStreams(await nats.jetstreamManager(), streams, { prefix });

    let relay: OutboxRelay | undefined;
    if (options.outbox) {
      const started = await startRelay({ db, outbox: options.outbox, js, nc: nats, hooks: outboxRelayHooks(name, log) });
      relay = started;
      steps.push({ name: 'outbox relay', close: () => started.stop() });
    }

    const consumers: RunningConsumer[] = [];
    if (parts.consumers?.length) steps.push({ name: 'consumers', close: () => Promise.all(consumers.map((c) => c.stop())) });
    // One after another, so a failure stops exactly the ones already running.
    for (const consumer of parts.consumers ?? []) {
      consumers.push(
        await startConsumer({
          maxDeliver: config.EVENT_MAX_DELIVER,
          concurrency: config.EVENT_CONCURRENCY,
          ...consumer,
          db,
          js,
          prefix,
          hooks: consumerHooks(consumer.name, log, consumer.hooks),
        }),
      );
    }
    // Every consumer's inbox is pruned here, so none grows for ever (one pruner per table:
    // a service's consumers share theirs).
    const inboxes = new Set<InboxTable>((parts.consumers ?? []).map((c) => c.inbox));
    const pruners: InboxPruner[] = [...inboxes].map((inbox) =>
      startInboxPruner({
        db,
        inbox,
        retentionMs: inboxRetentionMs,
        intervalMs: config.INBOX_PRUNE_INTERVAL ?? DEFAULT_INBOX_PRUNE_INTERVAL_MS,
        onPruned: (rows) => log.info({ rows, retention_ms: inboxRetentionMs }, 'inbox pruned'),
        onError: (err) => log.warn({ err }, 'inbox pruning failed; the next pass tries again'),
      }),
    );
    if (pruners.length > 0) steps.push({ name: 'inbox pruner', close: () => Promise.all(pruners.map((p) => p.stop())) });

    const server = await startMeshServer({
      name,
      host: options.host,
      port: config.PORT,
      services: parts.services,
      // NATS is left out on purpose: RPCs work while it is away (the outbox holds the
      // events), so a NATS outage must not take every replica out of rotation.
      readiness: () => database.ping(),
      readinessIntervalMs: config.READINESS_INTERVAL,
      // A database outage answers UNAVAILABLE (callers retry), and a request string Postgres
      // cannot store INVALID_ARGUMENT naming the field, not INTERNAL. An error mapper, not an
      // interceptor: any interceptor makes every unary call build its whole Connect context
      // (a few % of the order process's CPU under the orders bench).
      mapError: answerDatabaseError,
      logger: log,
    });
    steps.push({ name: 'grpc', close: (graceMs) => server.close(graceMs) });

    // Last, so nobody is sent here before the server answers; it leaves first when closing,
    // so callers stop picking this instance before it refuses calls.
    const registration = await joinMesh(nats, { name, port: server.port, bucket: registryBucketFor(prefix) });
    steps.push({ name: 'registry', close: () => registration.stop() });

    // Runtime overrides from NATS KV: the process follows `log_level` / `log_level.<name>`
    // within a second; the other families are read by whoever needs them (the gateway).
    const live = await startLiveConfig(nats, meshLiveSettings, { bucket: liveConfigBucketFor(prefix), service: name });
    // Stopped just before NATS drains (its watcher runs on that connection).
    steps.splice(steps.findIndex((s) => s.name === 'nats') + 1, 0, { name: 'live-config', close: () => live.stop() });

    const closeSteps = [...steps].reverse();
    const core: ServiceAppCore = {
      name,
      server,
      database,
      nats,
      relay,
      consumers,
      registration,
      log,
      closeSteps,
      shutdownGraceMs: config.SHUTDOWN_GRACE,
      listening: {
        address: server.address,
        driver: database.driver,
        migrations_applied: database.migrations?.applied.length ?? 0,
        ...parts.listening,
      },
      close: (graceMs = config.SHUTDOWN_GRACE) => closeAll(graceMs),
    };
    return Object.assign(core, parts.expose);
  } catch (err) {
    await closeAll(0);
    throw err;
  }
}

/**
 * INBOX_RETENTION must outlast every way a copy of a handled event comes back by itself
 * (inboxRetentionFloorMs, per consumer with its own deliveries, ack wait and backoff):
 * a row pruned earlier would let that copy apply twice. A ConfigError naming the variable.
 */
function checkInboxRetention(retentionMs: number, consumers: readonly ServiceConsumer[], maxDeliver: number | undefined): void {
  for (const c of consumers) {
    const floor = inboxRetentionFloorMs({
      duplicateWindowMs: DEFAULT_DUPLICATE_WINDOW_MS,
      maxDeliver: c.maxDeliver ?? maxDeliver ?? DEFAULT_MAX_DELIVER,
      ackWaitMs: c.ackWaitMs ?? DEFAULT_ACK_WAIT_MS,
      backoff: c.backoff,
    });
    if (retentionMs <= floor) {
      throw new ConfigError([
        {
          variable: 'INBOX_RETENTION',
          problem: `must be longer than the ${Math.ceil(floor / 1000)} s in which consumer ${c.name} can still see a copy of an event (duplicate window + deliveries x (ack wait + backoff)), got ${Math.round(retentionMs / 1000)} s`,
        },
      ]);
    }
  }
}

/** Drain (deliver what is buffered), bounded: a NATS server that is away must not hold up the exit. */
async function drainNats(nats: NatsConnection, boundMs = 5_000): Promise<void> {
  if (nats.isClosed()) return;
  let timer: NodeJS.Timeout | undefined;
  const bound = new Promise<void>((resolve) => (timer = setTimeout(resolve, boundMs)));
  await Promise.race([nats.drain().catch(() => undefined), bound]);
  clearTimeout(timer);
  if (!nats.isClosed()) await nats.close();
}

/** Time the steps after the drain get on a signal: NATS drains and Postgres ends within 5 s each. */
export const AFTER_DRAIN_MS = 15_000;

/**
 * What a signal runs: the app's close steps in order, bounded together by the drain
 * (SHUTDOWN_GRACE) plus AFTER_DRAIN_MS for the rest (consumers, relay, NATS, database). A
 * fixed 15 s cut a longer grace short and left the later steps no time at all. Keep the sum
 * under the orchestrator's own limit (Kubernetes: terminationGracePeriodSeconds, 30 s in deploy/).
 */
export function serviceShutdown(
  app: Pick<ServiceApp, 'closeSteps' | 'shutdownGraceMs'>,
  options: Omit<ShutdownOptions, 'timeoutMs'> & { afterDrainMs?: number } = {},
): Shutdown {
  const shutdown = createShutdown({ ...options, timeoutMs: app.shutdownGraceMs + (options.afterDrainMs ?? AFTER_DRAIN_MS) });
  // mesh/shutdown runs closers in reverse order of adding: add the last step first.
  for (const step of [...app.closeSteps].reverse()) shutdown.add(step.name, () => step.close(app.shutdownGraceMs));
  return shutdown;
}

/**
 * The body of a service's main.ts: when `moduleUrl` is the entry script (not imported by a
 * test), start the app, close it step by step on SIGTERM/SIGINT, log "<name> listening";
 * on a failed start log "<name> failed to start" and exit 1.
 */
export function runServiceMain(moduleUrl: string, start: () => Promise<ServiceApp>): void {
  if (!process.argv[1] || moduleUrl !== pathToFileURL(process.argv[1]).href) return;
  const log = createLogger();
  start().then(
    (app) => {
      serviceShutdown(app).listen();
      app.log.info(app.listening, `${app.name} listening`);
    },
    (err: unknown) => {
      log.fatal({ err }, `${serviceNameOf(moduleUrl)} failed to start`);
      process.exit(1);
    },
  );
}

/** services/<name>/main.ts -> <name>. */
function serviceNameOf(moduleUrl: string): string {
  return new URL('.', moduleUrl).pathname.split('/').filter(Boolean).pop() ?? 'service';
}
