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
 * deadline is the catalog method's (mesh/client's default). The coalescing
 * itself is mesh/coalesce.ts's.
 */
import { Code, ConnectError, type Client } from '@connectrpc/connect';
import { Coalescer } from '../../mesh/coalesce.js';
import type { CatalogService, Product } from '../../gen/shop/catalog/v1/catalog_pb.js';

/** What BatchGetProducts answers, for one lookup's SKUs. */
export interface PriceLookup {
  products: Product[];
  missingSkus: string[];
}

/** The catalog's limit of SKUs per BatchGetProducts (catalog/domain.ts MAX_BATCH). */
const MAX_SKUS_PER_CALL = 100;

export class CatalogPrices {
  readonly #catalog: Client<typeof CatalogService>;
  readonly #lookups: Coalescer<string[], PriceLookup>;

  constructor(catalog: Client<typeof CatalogService>, options: { maxSkusPerCall?: number } = {}) {
    this.#catalog = catalog;
    const maxSkus = options.maxSkusPerCall ?? MAX_SKUS_PER_CALL;
    this.#lookups = new Coalescer<string[], PriceLookup>({
      name: 'BatchGetProducts',
      sendOne: (skus) => this.#own(skus),
      sendBatch: (batch) => this.#shared(batch),
      maxItems: Number.MAX_SAFE_INTEGER, // bounded by SKUs, below
      // The union of the SKUs stays within the catalog's limit (a lone lookup over it goes
      // alone and hears the catalog's own error).
      fits: (batch, next) => new Set([...batch.flat(), ...next]).size <= maxSkus,
      // Someone's SKU was refused: each lookup is asked again alone, so each hears its own answer.
      splitOn: (err) => ConnectError.from(err).code === Code.InvalidArgument,
    });
  }

  /** BatchGetProducts calls sent and lookups answered, for tests and the bench's account. */
  get calls(): number {
    return this.#lookups.calls;
  }

  get lookups(): number {
    return this.#lookups.inputs;
  }

  /** The products of `skus` (in the catalog's order) and the SKUs it does not know. */
  lookup(skus: string[]): Promise<PriceLookup> {
    return this.#lookups.call(skus);
  }

  async #own(skus: string[]): Promise<PriceLookup> {
    const res = await this.#catalog.batchGetProducts({ skus });
    return { products: res.products, missingSkus: res.missingSkus };
  }

  /** One call for the union of the lookups' SKUs, answered to each as a call of its own. */
  async #shared(batch: string[][]): Promise<(PriceLookup | Error)[]> {
    const res = await this.#catalog.batchGetProducts({ skus: [...new Set(batch.flat())] });
    const bySku = new Map(res.products.map((p) => [p.sku, p]));
    const missing = new Set(res.missingSkus);
    return batch.map((skus) => {
      // The same shape as a call of its own: products in request order, each SKU once.
      const own = [...new Set(skus)];
      return {
        products: own.flatMap((s) => {
          const p = bySku.get(s);
          return p ? [p] : [];
        }),
        missingSkus: own.filter((s) => missing.has(s) || !bySku.has(s)),
      };
    });
  }
}
