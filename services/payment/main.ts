/**
 * The payment service process: the payment database, the card processor,
 * PaymentService, the Payment* outbox, and the shared process wiring of
 * mesh/app.ts (stream, relay, health, registry, graceful shutdown).
 *
 *   npm run start:payment   PORT (5005), DATABASE_URL (unset = PGlite in DATA_DIR/payment), NATS_URL,
 *                           PAYMENT_SLOW_MS (3000: how long tok_slow takes), LOG_LEVEL, ...
 *
 * With PGlite (one connection for the process) a tok_slow authorization makes
 * every other payment call wait for it; set DATABASE_URL for anything busy.
 */
import { PaymentAuthorizedSchema, PaymentService } from '../../gen/shop/payment/v1/payment_pb.js';
import { runServiceMain, serviceAppSettings, startServiceApp, type ServiceApp } from '../../mesh/app.js';
import { integer, loadConfig, meshSettings, port, servicePorts, type Config } from '../../mesh/config.js';
import { serve } from '../../mesh/server.js';
import { SimulatedProcessor, type CardProcessor } from './processor.js';
import { outbox } from './schema.js';
import { paymentService } from './service.js';
import { PaymentStore } from './store.js';

export const paymentMigrations = new URL('./migrations', import.meta.url).pathname;

export const paymentSettings = {
  ...meshSettings,
  ...serviceAppSettings,
  PORT: port(servicePorts.payment, 'gRPC listen port of the payment service'),
  PAYMENT_SLOW_MS: integer({ min: 0, max: 60_000, default: 3000, doc: 'How long the simulated processor takes for tok_slow (ms)' }),
};
export type PaymentConfig = Config<typeof paymentSettings>;

export type PaymentApp = ServiceApp<{ store: PaymentStore }>;

/** Starts the service in this process; tests call it with their own config (and may bring their own processor). */
export function startPayment(
  config: PaymentConfig,
  host?: string,
  processor: CardProcessor = new SimulatedProcessor({ slowMs: config.PAYMENT_SLOW_MS }),
): Promise<PaymentApp> {
  return startServiceApp({
    name: 'payment',
    config,
    host,
    migrationsFolder: paymentMigrations,
    publishes: [PaymentAuthorizedSchema], // one stream covers every shop.payment.v1 event
    outbox,
    setup: async ({ db, prefix }) => {
      const store = new PaymentStore({ db, processor, subjectPrefix: prefix });
      return {
        services: [serve(PaymentService, paymentService(store))],
        listening: { payment_slow_ms: config.PAYMENT_SLOW_MS },
        expose: { store },
      };
    },
  });
}

runServiceMain(import.meta.url, () => startPayment(loadConfig(paymentSettings)));
