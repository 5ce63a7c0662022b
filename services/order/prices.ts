/**
 * Price lookups for PlaceOrder, coalesced across concurrent orders into one
 * catalog BatchGetProducts.
 *
 * Under load many PlaceOrders price their lines at the same moment; each
 * lookup was one RPC of its own (client side in this process, the ceiling
 * of the orders bench, and server side in catalog). Here at most one
 * BatchGetProducts is in flight: lookups that arrive meanwhile wait for it
 * and then go out together, as one call for the union of their SKUs (at
 * most the catalog's batch limit per call). So an idle shop sends each
 * lookup at once, as before, and a busy one sends fewer, larger calls: the
 * batch grows with the load, and no timer adds latency.
 *
 * Each lookup gets exactly the answer a call of its own would have had: its
 * products and its missing SKUs. When a shared call is refused with
 * INVALID_ARGUMENT (a SKU the catalog rejects), its lookups are retried one
 * by one, so only the order that sent the bad SKU hears about it, with its
 * own field numbering. Other failures (UNAVAILABLE, a deadline) reach every
 * lookup of the call; PlaceOrder is idempotent and the client retries.
 *
 * A shared call runs outside any one PlaceOrder's call context: one caller's
 * deadline or cancellation must not fail the others' lookups. Its own
 * deadline is the catalog method's (mesh/client's default).
 */
import { Code, ConnectError, type Client } from '@connectrpc/connect';
import { runWithCallContext } from '../../mesh/call-context.js';
import type { CatalogService, Product } from '../../gen/shop/catalog/v1/catalog_pb.js';

/** What BatchGetProducts answers, for one lookup's SKUs. */
export interface PriceLookup {
  products: Product[];
  missingSkus: string[];
}

interface Waiting {
  skus: string[];
  resolve(answer: PriceLookup): void;
  reject(err: unknown): void;
}

/** The catalog's limit of SKUs per BatchGetProducts (catalog/domain.ts MAX_BATCH). */
const MAX_SKUS_PER_CALL = 100;

export class CatalogPrices {
  readonly #catalog: Client<typeof CatalogService>;
  readonly #maxSkus: number;
  #queue: Waiting[] = [];
  #inFlight = false;
  /** BatchGetProducts calls sent and lookups answered, for tests and the bench's account. */
  calls = 0;
  lookups = 0;

  constructor(catalog: Client<typeof CatalogService>, options: { maxSkusPerCall?: number } = {}) {
    this.#catalog = catalog;
    this.#maxSkus = options.maxSkusPerCall ?? MAX_SKUS_PER_CALL;
  }

  /** The products of `skus` (in the catalog's order) and the SKUs it does not know. */
  lookup(skus: string[]): Promise<PriceLookup> {
    return new Promise<PriceLookup>((resolve, reject) => {
      this.#queue.push({ skus, resolve, reject });
      if (!this.#inFlight) this.#flush();
    });
  }

  /** Sends the waiting lookups, as many as fit in one call; comes back while any are left. */
  #flush(): void {
    const batch: Waiting[] = [];
    const skus = new Set<string>();
    while (this.#queue.length > 0) {
      const next = this.#queue[0]!;
      const added = next.skus.filter((s) => !skus.has(s)).length;
      // The first lookup always goes (the catalog answers a too-large one with its own error).
      if (batch.length > 0 && skus.size + added > this.#maxSkus) break;
      this.#queue.shift();
      batch.push(next);
      for (const s of next.skus) skus.add(s);
    }
    if (batch.length === 0) return;
    this.#inFlight = true;
    void runWithCallContext({ header: new Headers() }, () => this.#send(batch, [...skus])).finally(() => {
      this.#inFlight = false;
      if (this.#queue.length > 0) this.#flush();
    });
  }

  async #send(batch: Waiting[], skus: string[]): Promise<void> {
    this.calls++;
    this.lookups += batch.length;
    if (batch.length === 1) {
      const only = batch[0]!;
      await this.#catalog.batchGetProducts({ skus: only.skus }).then(
        (res) => only.resolve({ products: res.products, missingSkus: res.missingSkus }),
        (err) => only.reject(err),
      );
      return;
    }
    let res;
    try {
      res = await this.#catalog.batchGetProducts({ skus });
    } catch (err) {
      if (ConnectError.from(err).code === Code.InvalidArgument) {
        // Someone's SKU was refused: ask for each lookup alone, so each hears its own answer.
        await Promise.all(batch.map((w) => this.#send([w], w.skus)));
        return;
      }
      for (const w of batch) w.reject(err);
      return;
    }
    const bySku = new Map(res.products.map((p) => [p.sku, p]));
    const missing = new Set(res.missingSkus);
    for (const w of batch) {
      // The same shape as a call of its own: products in request order, each SKU once.
      const own = [...new Set(w.skus)];
      w.resolve({
        products: own.flatMap((s) => {
          const p = bySku.get(s);
          return p ? [p] : [];
        }),
        missingSkus: own.filter((s) => missing.has(s) || !bySku.has(s)),
      });
    }
  }
}
