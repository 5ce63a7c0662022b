/**
 * The order service process, on mesh/app like every service: config ->
 * database (migrated) -> NATS (stream, outbox relay) -> here: clients of
 * catalog, inventory and payment, the saga orchestrator, OrderService ->
 * gRPC server (health, reflection, registry) -> graceful shutdown (the saga
 * stops after the server has drained).
 *
 *   npm run start:order    PORT (5004), DATABASE_URL (unset = PGlite in DATA_DIR/order), NATS_URL,
 *                          CATALOG_ADDR, INVENTORY_ADDR, PAYMENT_ADDR, SAGA_*, LOG_LEVEL, ...
 *
 * SAGA_CRASH_AFTER=reserve|authorize|confirm|compensate is a test hook: the
 * process SIGKILLs itself right after that step (and storing its transition, except
 * reserve -> authorize, which is not stored), so the
 * crash tests can prove a restarted service finishes the saga.
 */
import { fileURLToPath } from 'node:url';
import { CatalogService } from '../../gen/shop/catalog/v1/catalog_pb.js';
import { InventoryService } from '../../gen/shop/inventory/v1/inventory_pb.js';
import { OrderPlacedSchema, OrderService } from '../../gen/shop/order/v1/order_pb.js';
import { PaymentService } from '../../gen/shop/payment/v1/payment_pb.js';
import { runServiceMain, serviceAppSettings, startServiceApp, type ServiceApp } from '../../mesh/app.js';
import { closeMeshClients, createMeshClient } from '../../mesh/client.js';
import {
  ConfigError,
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
import { serve } from '../../mesh/server.js';
import { OrderChanges } from './changes.js';
import { CRASH_POINTS, type CrashPoint } from './domain.js';
import { SagaOrchestrator, type SagaSettings } from './saga.js';
import { batchedSagaPorts } from './saga-ports.js';
import { registerSagaObligationsGauge } from './saga-metrics.js';
import { outbox } from './schema.js';
import { createOrderService } from './service.js';

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
  ...serviceAppSettings,
  PORT: port(servicePorts.order, 'gRPC listen port of the order service'),
  CATALOG_ADDR: string(`127.0.0.1:${servicePorts.catalog}`, 'host:port of the catalog service'),
  INVENTORY_ADDR: string(`127.0.0.1:${servicePorts.inventory}`, 'host:port of the inventory service'),
  PAYMENT_ADDR: string(`127.0.0.1:${servicePorts.payment}`, 'host:port of the payment service'),
  SAGA_DEADLINE: duration('60s', 'How long a saga may take to reserve and authorize before it cancels with "timeout"'),
  SAGA_FINAL_WITHIN: duration(
    '2m',
    'An order is CONFIRMED or CANCELLED at most this long after it was placed (plus one downstream call), even while inventory or payment is down; what is left to release, refund or commit keeps retrying in the background. Longer than SAGA_DEADLINE, far shorter than inventory\'s RESERVATION_TTL',
  ),
  SAGA_LEASE: duration('15s', "How long a worker holds a saga without renewing it; a crashed replica's sagas resume after it"),
  SAGA_POLL: duration('500ms', "How often due sagas (retries, crashed replicas' work) are looked for", { min: '10ms', max: '24d' }),
  SAGA_CONCURRENCY: integer({ min: 1, max: 10_000, default: 64, doc: 'Sagas the poller runs at once' }),
  SAGA_RETRY_BASE: duration('100ms', 'First retry delay of a step that failed transiently'),
  SAGA_RETRY_MAX: duration('5s', 'Largest retry delay'),
  SAGA_CRASH_AFTER: crashPoint,
  WATCH_POLL: duration(
    '1s',
    "WatchOrder and WatchMyOrders re-read this often (they see other replicas' changes then); the WatchMyOrders streams of a process re-read together, in one statement",
    { min: '10ms', max: '24d' },
  ),
};
export type OrderConfig = Config<typeof orderSettings>;

export type OrderApp = ServiceApp<{ saga: SagaOrchestrator }>;

/**
 * The saga's settings from the service's config: one place, so that a test's extra
 * replicas run exactly as the service's own (same retries, lease, bound and prefix).
 */
export function sagaSettingsOf(config: OrderConfig, subjectPrefix: string): SagaSettings {
  return {
    leaseMs: config.SAGA_LEASE,
    pollIntervalMs: config.SAGA_POLL,
    concurrency: config.SAGA_CONCURRENCY,
    retry: { baseDelayMs: config.SAGA_RETRY_BASE, maxDelayMs: config.SAGA_RETRY_MAX },
    subjectPrefix,
    finalWithinMs: config.SAGA_FINAL_WITHIN,
    crashAfter: config.SAGA_CRASH_AFTER,
  };
}

/** Starts the service in this process; tests call it with their own config. */
export function startOrder(config: OrderConfig, host?: string): Promise<OrderApp> {
  // The bound must leave the deadline room: a saga gives up taking things at SAGA_DEADLINE and
  // settles at SAGA_FINAL_WITHIN only if undoing them then fails (services/order/domain.ts).
  if (config.SAGA_FINAL_WITHIN <= config.SAGA_DEADLINE) {
    return Promise.reject(
      new ConfigError([{ variable: 'SAGA_FINAL_WITHIN', problem: `must be longer than SAGA_DEADLINE (${config.SAGA_DEADLINE} ms), got ${config.SAGA_FINAL_WITHIN} ms` }]),
    );
  }
  return startServiceApp({
    name: 'order',
    config,
    host,
    migrationsFolder: orderMigrations,
    publishes: [OrderPlacedSchema], // one stream covers every shop.order.v1 event
    outbox,
    setup: async ({ db, prefix, log }) => {
      const catalog = createMeshClient(CatalogService, config.CATALOG_ADDR);
      // Concurrent sagas share their reserve, authorize, capture and commit calls (saga-ports.ts).
      const ports = batchedSagaPorts({
        inventory: createMeshClient(InventoryService, config.INVENTORY_ADDR),
        payment: createMeshClient(PaymentService, config.PAYMENT_ADDR),
      });
      const changes = new OrderChanges();
      const saga = new SagaOrchestrator(
        db,
        ports,
        changes,
        sagaSettingsOf(config, prefix),
        log,
      );
      saga.start();
      registerSagaObligationsGauge(db);
      return {
        services: [
          serve(
            OrderService,
            createOrderService({
              db,
              catalog,
              saga,
              changes,
              sagaDeadlineMs: config.SAGA_DEADLINE,
              subjectPrefix: prefix,
              watchPollMs: config.WATCH_POLL,
            }),
          ),
        ],
        // Stopped after the server has drained (no new kicks), before NATS and the database close.
        background: [
          { name: 'saga', stop: () => saga.stop() },
          { name: 'mesh clients', stop: () => closeMeshClients() },
        ],
        listening: { crash_after: config.SAGA_CRASH_AFTER ?? null },
        expose: { saga },
      };
    },
  });
}

runServiceMain(import.meta.url, () => startOrder(loadConfig(orderSettings)));
