/**
 * The inventory service process: the inventory database, the expiry sweeper,
 * InventoryService, the Stock* outbox, and the shared process wiring of
 * mesh/app.ts (stream, relay, health, registry, graceful shutdown).
 *
 *   npm run start:inventory   PORT (5003), DATABASE_URL (unset = PGlite in DATA_DIR/inventory), NATS_URL,
 *                             RESERVATION_TTL (15m), RESERVATION_SWEEP_INTERVAL (5s), SEED_INVENTORY, LOG_LEVEL, ...
 */
import { InventoryService, StockReservedSchema } from '../../gen/shop/inventory/v1/inventory_pb.js';
import { runServiceMain, serviceAppSettings, startServiceApp, type ServiceApp } from '../../mesh/app.js';
import { boolean, duration, loadConfig, meshSettings, port, servicePorts, type Config } from '../../mesh/config.js';
import { serve } from '../../mesh/server.js';
import { outbox } from './schema.js';
import { inventoryMigrations, seedInventory } from './seed.js';
import { inventoryService } from './service.js';
import { InventoryStore } from './store.js';
import { startSweeper, type Sweeper } from './sweeper.js';

export const inventorySettings = {
  ...meshSettings,
  ...serviceAppSettings,
  PORT: port(servicePorts.inventory, 'gRPC listen port of the inventory service'),
  RESERVATION_TTL: duration('15m', 'How long a reservation holds stock if neither committed nor released'),
  RESERVATION_SWEEP_INTERVAL: duration('5s', 'How often expired reservations are looked for and released', { min: '10ms', max: '24d' }),
  SEED_INVENTORY: boolean(false, 'Stock the catalog seed SKUs at start (idempotent)'),
};
export type InventoryConfig = Config<typeof inventorySettings>;

export type InventoryApp = ServiceApp<{ store: InventoryStore; sweeper: Sweeper }>;

/** Starts the service in this process; tests call it with their own config. */
export function startInventory(config: InventoryConfig, host?: string): Promise<InventoryApp> {
  return startServiceApp({
    name: 'inventory',
    config,
    host,
    migrationsFolder: inventoryMigrations,
    publishes: [StockReservedSchema], // one stream covers every shop.inventory.v1 event
    outbox,
    setup: async ({ db, prefix, log }) => {
      const store = new InventoryStore({ db, reservationTtlMs: config.RESERVATION_TTL, subjectPrefix: prefix });
      if (config.SEED_INVENTORY) log.info(await seedInventory(store), 'seeded the catalog seed SKUs');
      const sweeper = startSweeper(store, {
        intervalMs: config.RESERVATION_SWEEP_INTERVAL,
        onReleased: (count) => log.info({ count }, 'expired reservations released'),
        onError: (err) => log.warn({ err }, 'expiry sweep failed'),
      });
      return {
        services: [serve(InventoryService, inventoryService(store))],
        background: [{ name: 'sweeper', stop: () => sweeper.stop() }],
        listening: { reservation_ttl_ms: config.RESERVATION_TTL },
        expose: { store, sweeper },
      };
    },
  });
}

runServiceMain(import.meta.url, () => startInventory(loadConfig(inventorySettings)));
