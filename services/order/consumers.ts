/**
 * The events the order service reacts to: none.
 *
 * The saga is orchestrated, not choreographed: the order service asks
 * inventory and payment by RPC (idempotent, keyed by the order id) and reads
 * their answers, so it never waits for StockReserved or PaymentAuthorized.
 * Listening to them as well would give two sources of truth for one step.
 * The list exists so the folder has the shape of every other service; a
 * consumer added here goes into startOrder's `consumers` (mesh/app).
 */
import type { ServiceConsumer } from '../../mesh/app.js';

export const orderConsumers: ServiceConsumer[] = [];
