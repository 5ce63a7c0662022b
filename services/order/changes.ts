/**
 * In-process notice that an order's status changed, so WatchOrder answers at
 * once when the saga running in this process moves an order. A change made
 * by another replica is not heard here: WatchOrder also re-reads the order
 * on a timer, so it sees those too, only later.
 */
import { EventEmitter } from 'node:events';
import type { OrderStatusName } from './domain.js';

/** What changed, when the one who changed it knows (the saga does): watchers need not re-read. */
export interface OrderChange {
  status: OrderStatusName;
  cancelReason: string;
  updateTime: Date;
}

export class OrderChanges {
  readonly #emitter = new EventEmitter();

  constructor() {
    // One listener per open WatchOrder stream on the same order; there is no leak to warn about.
    this.#emitter.setMaxListeners(0);
  }

  /** Tells every watcher of `orderId` that it changed (and how, when known). */
  changed(orderId: string, change?: OrderChange): void {
    this.#emitter.emit(orderId, change);
  }

  /** Calls `fn` on every change of `orderId` until the returned function is called. */
  subscribe(orderId: string, fn: (change: OrderChange | undefined) => void): () => void {
    this.#emitter.on(orderId, fn);
    return () => this.#emitter.off(orderId, fn);
  }
}
