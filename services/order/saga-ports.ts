/**
 * The saga's downstream calls, coalesced across concurrent sagas into the
 * batch RPCs (mesh/coalesce.ts: no timer, at most one batch in flight per
 * method, a lone call goes alone as the single RPC).
 *
 * Under load every order's saga makes ReserveStock, AuthorizePayment,
 * CapturePayment and CommitReservation at about the same moment as many
 * others; each was a grpc-js client call here (the ceiling of the orders
 * bench) and a server call plus its own transactions in inventory or
 * payment. Here they go out as BatchReserveStock, BatchAuthorizePayments,
 * BatchCapturePayments and BatchCommitReservations: one call, and in payment
 * and for commits one transaction, for every saga waiting at that step.
 *
 * Each saga gets exactly the outcome a call of its own would have had (the
 * batch answers each request with the single RPC's response or its error), so
 * saga.ts cannot tell the difference: a refusal (out of stock, declined) is
 * that saga's alone; a batch call that fails (UNAVAILABLE, a deadline) reaches
 * every saga in it, and each retries with its own backoff, idempotent by order
 * id. A call made with CallOptions (a deadline or signal of its own) goes
 * alone as the single RPC. Refund and release stay single: compensation is rare.
 *
 * Trade-off: a batch answers when its slowest request is done, so a slow card
 * (tok_slow, PAYMENT_SLOW_MS) holds up the authorizations batched with it. It
 * does not hold up the ones that arrive after: a batch still in flight after
 * `stragglerMs` (250 ms) no longer holds the next one back (up to 4 batches
 * in flight per method).
 *
 * Rolling deploys: an inventory or payment replica older than its batch RPCs
 * answers them UNIMPLEMENTED; the batch is then sent again as single calls
 * (without this, the saga would read UNIMPLEMENTED as a refusal and cancel).
 */
import { create } from '@bufbuild/protobuf';
import { Code, ConnectError, type CallOptions, type Client } from '@connectrpc/connect';
import {
  CommitReservationRequestSchema,
  ReserveStockRequestSchema,
  type CommitReservationRequest,
  type CommitReservationResponse,
  type InventoryService,
  type ReserveStockRequest,
  type ReserveStockResponse,
} from '../../gen/shop/inventory/v1/inventory_pb.js';
import {
  AuthorizePaymentRequestSchema,
  CapturePaymentRequestSchema,
  type AuthorizePaymentRequest,
  type AuthorizePaymentResponse,
  type CapturePaymentRequest,
  type CapturePaymentResponse,
  type PaymentService,
} from '../../gen/shop/payment/v1/payment_pb.js';
import { MAX_BATCH_REQUESTS, itemOutcome } from '../../mesh/batch-items.js';
import { Coalescer } from '../../mesh/coalesce.js';
import type { SagaPorts } from './saga.js';

/** The saga's ports with its four hot calls coalesced; `coalescers` for tests and the bench's account. */
export interface BatchedSagaPorts extends SagaPorts {
  coalescers: {
    reserveStock: Coalescer<ReserveStockRequest, ReserveStockResponse>;
    commitReservation: Coalescer<CommitReservationRequest, CommitReservationResponse>;
    authorizePayment: Coalescer<AuthorizePaymentRequest, AuthorizePaymentResponse>;
    capturePayment: Coalescer<CapturePaymentRequest, CapturePaymentResponse>;
  };
}

/** After this long, a batch in flight no longer holds back the calls waiting behind it. */
export const BATCH_STRAGGLER_MS = 250;

export function batchedSagaPorts(ports: SagaPorts, options: { stragglerMs?: number } = {}): BatchedSagaPorts {
  const { inventory, payment } = ports;
  const shared = {
    maxItems: MAX_BATCH_REQUESTS,
    stragglerMs: options.stragglerMs ?? BATCH_STRAGGLER_MS,
    // A peer without the batch method (older, mid-deploy): the same calls, one by one.
    splitOn: (err: unknown) => ConnectError.from(err).code === Code.Unimplemented,
  };
  const coalescers = {
    reserveStock: new Coalescer<ReserveStockRequest, ReserveStockResponse>({
      name: 'BatchReserveStock',
      sendOne: (req) => inventory.reserveStock(req),
      sendBatch: async (requests) => (await inventory.batchReserveStock({ requests })).results.map(itemOutcome),
      ...shared,
    }),
    commitReservation: new Coalescer<CommitReservationRequest, CommitReservationResponse>({
      name: 'BatchCommitReservations',
      sendOne: (req) => inventory.commitReservation(req),
      sendBatch: async (requests) => (await inventory.batchCommitReservations({ requests })).results.map(itemOutcome),
      ...shared,
    }),
    authorizePayment: new Coalescer<AuthorizePaymentRequest, AuthorizePaymentResponse>({
      name: 'BatchAuthorizePayments',
      sendOne: (req) => payment.authorizePayment(req),
      sendBatch: async (requests) => (await payment.batchAuthorizePayments({ requests })).results.map(itemOutcome),
      ...shared,
    }),
    capturePayment: new Coalescer<CapturePaymentRequest, CapturePaymentResponse>({
      name: 'BatchCapturePayments',
      sendOne: (req) => payment.capturePayment(req),
      sendBatch: async (requests) => (await payment.batchCapturePayments({ requests })).results.map(itemOutcome),
      ...shared,
    }),
  };
  const alone = (options: CallOptions | undefined) => options !== undefined;
  return {
    coalescers,
    inventory: {
      ...inventory,
      reserveStock: (req, options) =>
        alone(options) ? inventory.reserveStock(req, options) : coalescers.reserveStock.call(create(ReserveStockRequestSchema, req)),
      commitReservation: (req, options) =>
        alone(options)
          ? inventory.commitReservation(req, options)
          : coalescers.commitReservation.call(create(CommitReservationRequestSchema, req)),
    } satisfies Client<typeof InventoryService>,
    payment: {
      ...payment,
      authorizePayment: (req, options) =>
        alone(options)
          ? payment.authorizePayment(req, options)
          : coalescers.authorizePayment.call(create(AuthorizePaymentRequestSchema, req)),
      capturePayment: (req, options) =>
        alone(options) ? payment.capturePayment(req, options) : coalescers.capturePayment.call(create(CapturePaymentRequestSchema, req)),
    } satisfies Client<typeof PaymentService>,
  };
}
