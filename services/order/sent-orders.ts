/**
 * What a WatchMyOrders stream has sent: the last state of each order, so a state is sent once.
 *
 * The stream hears an order from three places (this process's announcement, the periodic
 * re-read of the open orders, and the read of an order that left that list), and two of them
 * may carry the same final state in one round or in two rounds that follow each other. So the
 * final state sent is remembered too, for `keepFinalMs` (long past the next re-read), and then
 * forgotten, so a long-lived stream does not keep every order its shopper ever placed.
 */
import type { Order } from '../../gen/shop/order/v1/order_pb.js';

export class SentOrders {
  readonly #last = new Map<string, { order: Order; finalAt?: number }>();
  readonly #isFinal: (order: Order) => boolean;
  readonly #keepFinalMs: number;
  readonly #now: () => number;

  constructor(isFinal: (order: Order) => boolean, keepFinalMs: number, now: () => number = Date.now) {
    this.#isFinal = isFinal;
    this.#keepFinalMs = keepFinalMs;
    this.#now = now;
  }

  /** Whether `order` is news (a status or reason not sent before); if so, it is recorded as sent. */
  next(order: Order): boolean {
    const last = this.#last.get(order.id)?.order;
    if (last && last.status === order.status && last.cancelReason === order.cancelReason) return false;
    this.#last.set(order.id, { order, finalAt: this.#isFinal(order) ? this.#now() : undefined });
    return true;
  }

  /** The last state sent of `id`, final ones included while they are remembered. */
  get(id: string): Order | undefined {
    return this.#last.get(id)?.order;
  }

  /** The orders sent and not yet final; forgets the final ones older than keepFinalMs. */
  openIds(): string[] {
    const forgetBefore = this.#now() - this.#keepFinalMs;
    const open: string[] = [];
    for (const [id, { finalAt }] of this.#last) {
      if (finalAt === undefined) open.push(id);
      else if (finalAt < forgetBefore) this.#last.delete(id);
    }
    return open;
  }
}
