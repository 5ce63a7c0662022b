/**
 * InventoryService: stock per SKU and reservations against it.
 *
 * Errors, in one list:
 *   INVALID_ARGUMENT     a malformed field, named (sku, on_hand, reservation_id, lines[i].sku, lines[i].quantity, reason)
 *   FAILED_PRECONDITION  ReserveStock: a SKU cannot cover its line (the message starts with the SKU,
 *                        detail type INSUFFICIENT_STOCK), or the id was released, expired or
 *                        tombstoned by a ReleaseReservation before it (the message starts with
 *                        "reservation <id>", detail type RESERVATION_RELEASED): ids are single-use;
 *                        SetStock: on_hand below what is reserved (BELOW_RESERVED);
 *                        CommitReservation: the reservation was released (or expired)
 *   ALREADY_EXISTS       ReserveStock repeating an id with different lines
 *   NOT_FOUND            CommitReservation of an id never reserved
 *   UNAUTHENTICATED / PERMISSION_DENIED   SetStock without the admin role (x-mesh-user-role)
 *
 * BatchReserveStock and BatchCommitReservations answer each request with what
 * ReserveStock / CommitReservation would have (response, or one of the errors
 * above as its Status, fields named "requests[i]..."); the call itself fails
 * only for INVALID_ARGUMENT on `requests` (none or over 100) or an internal error.
 */
import { create } from '@bufbuild/protobuf';
import { timestampFromMs } from '@bufbuild/protobuf/wkt';
import type { ServiceImpl } from '@connectrpc/connect';
import {
  BatchCommitReservationsResponseSchema,
  BatchReserveStockResponseSchema,
  CommitReservationResponseSchema,
  GetStockResponseSchema,
  InventoryService,
  ReleaseReservationResponseSchema,
  ReservationSchema,
  ReservationStatus,
  ReserveStockResponseSchema,
  SetStockResponseSchema,
  StockLevelSchema,
  type Reservation,
  type StockLevel,
} from '../../gen/shop/inventory/v1/inventory_pb.js';
import { answerItem, checkBatchSize, passes } from '../../mesh/batch-items.js';
import { requireAdmin } from '../../mesh/identity.js';
import {
  validateLines,
  validateOnHand,
  validateReason,
  validateReservationId,
  validateSku,
  type Line,
  type ReservationRecord,
} from './domain.js';
import type { InventoryStore, StockLevelRecord } from './store.js';

export function inventoryService(store: InventoryStore): ServiceImpl<typeof InventoryService> {
  return {
    async setStock(req, ctx) {
      // The gateway already demands an admin token; checked again here because
      // services are reachable from inside the mesh too.
      requireAdmin(ctx);
      validateSku(req.sku);
      const onHand = validateOnHand(req.onHand);
      return create(SetStockResponseSchema, { stock: stockLevel(await store.setStock(req.sku, onHand)) });
    },

    async getStock(req) {
      validateSku(req.sku);
      return create(GetStockResponseSchema, { stock: stockLevel(await store.getStock(req.sku)) });
    },

    async reserveStock(req) {
      validateReservationId(req.reservationId);
      const lines = validateLines(req.lines);
      return create(ReserveStockResponseSchema, {
        reservation: reservation(await store.reserve(req.reservationId, lines)),
      });
    },

    async releaseReservation(req) {
      validateReservationId(req.reservationId);
      validateReason(req.reason);
      return create(ReleaseReservationResponseSchema, {
        reservation: reservation(await store.release(req.reservationId, req.reason)),
      });
    },

    async commitReservation(req) {
      validateReservationId(req.reservationId);
      return create(CommitReservationResponseSchema, {
        reservation: reservation(await store.commit(req.reservationId)),
      });
    },

    // The valid requests are reserved together, in request order (one statement,
    // store.reserveMany), each answered as its ReserveStock would be.
    async batchReserveStock(req) {
      checkBatchSize(req.requests);
      const valid: { index: number; id: string; lines: Line[] }[] = [];
      req.requests.forEach((r, index) => {
        try {
          validateReservationId(r.reservationId);
          valid.push({ index, id: r.reservationId, lines: validateLines(r.lines) });
        } catch {
          // answered by answerItem below, which validates again and names the fields
        }
      });
      const answers = valid.length > 0 ? await store.reserveMany(valid) : [];
      const outcomes = new Map(valid.map((v, i) => [v.index, answers[i]!]));
      const results = await Promise.all(
        req.requests.map((r, i) =>
          answerItem(i, async () => {
            validateReservationId(r.reservationId);
            validateLines(r.lines);
            const outcome = outcomes.get(i)!;
            if (outcome instanceof Error) throw outcome;
            return create(ReserveStockResponseSchema, { reservation: reservation(outcome) });
          }),
        ),
      );
      return create(BatchReserveStockResponseSchema, { results: results.map((result) => ({ result })) });
    },

    // The valid requests are committed together (one statement, store.commitMany).
    async batchCommitReservations(req) {
      checkBatchSize(req.requests);
      const valid = req.requests.filter((r) => passes(() => validateReservationId(r.reservationId))).map((r) => r.reservationId);
      const outcomes = valid.length > 0 ? await store.commitMany(valid) : new Map();
      const results = await Promise.all(
        req.requests.map((r, i) =>
          answerItem(i, async () => {
            validateReservationId(r.reservationId);
            const outcome = outcomes.get(r.reservationId)!;
            if (outcome instanceof Error) throw outcome;
            return create(CommitReservationResponseSchema, { reservation: reservation(outcome) });
          }),
        ),
      );
      return create(BatchCommitReservationsResponseSchema, { results: results.map((result) => ({ result })) });
    },
  };
}

function stockLevel(s: StockLevelRecord): StockLevel {
  return create(StockLevelSchema, {
    sku: s.sku,
    onHand: BigInt(s.onHand),
    reserved: BigInt(s.reserved),
    available: BigInt(s.onHand - s.reserved),
  });
}

const STATUS: Record<ReservationRecord['status'], ReservationStatus> = {
  RESERVED: ReservationStatus.RESERVED,
  RELEASED: ReservationStatus.RELEASED,
  COMMITTED: ReservationStatus.COMMITTED,
};

function reservation(r: ReservationRecord): Reservation {
  return create(ReservationSchema, {
    id: r.id,
    lines: r.lines.map((l) => ({ sku: l.sku, quantity: BigInt(l.quantity) })),
    status: STATUS[r.status],
    expireTime: timestampFromMs(r.expireAt),
  });
}
