import test from 'ava';
import { create } from '@bufbuild/protobuf';
import { Code, ConnectError, type Client } from '@connectrpc/connect';
import {
  ReserveStockResponseSchema,
  type InventoryService,
  type ReserveStockRequest,
} from '../../gen/shop/inventory/v1/inventory_pb.js';
import type { PaymentService } from '../../gen/shop/payment/v1/payment_pb.js';
import { PreconditionFailureSchema } from '../../gen/google/rpc/error_details_pb.js';
import { statusFromError } from '../../mesh/batch-items.js';
import { failedPrecondition } from '../../mesh/errors.js';
import { batchedSagaPorts } from './saga-ports.js';

/** An inventory client that records its calls; only the two the saga batches answer. */
function fakeInventory() {
  const calls: string[] = [];
  const answer = (r: ReserveStockRequest) => create(ReserveStockResponseSchema, { reservation: { id: r.reservationId } });
  const client = {
    reserveStock: async (r: ReserveStockRequest) => {
      calls.push(`single ${r.reservationId}`);
      await new Promise((res) => setTimeout(res, 20));
      return answer(r);
    },
    batchReserveStock: async ({ requests }: { requests: ReserveStockRequest[] }) => {
      calls.push(`batch ${requests.map((r) => r.reservationId).join(',')}`);
      return {
        results: requests.map((r) => ({
          result: r.reservationId.startsWith('short')
            ? { case: 'error' as const, value: statusFromError(failedPrecondition('INSUFFICIENT_STOCK', 'SKU-1', 'only 0 available, 1 requested')) }
            : { case: 'response' as const, value: answer(r) },
        })),
      };
    },
  } as unknown as Client<typeof InventoryService>;
  return { client, calls };
}

test('concurrent reservations share one BatchReserveStock; a refused one fails alone, as its own call would', async (t) => {
  const inv = fakeInventory();
  const ports = batchedSagaPorts({ inventory: inv.client, payment: {} as Client<typeof PaymentService> });
  const lines = [{ sku: 'SKU-1', quantity: 1n }];
  const outcomes = await Promise.all(
    ['a', 'b', 'short-c', 'd'].map((id) =>
      ports.inventory.reserveStock({ reservationId: id, lines }).then(
        (r) => r.reservation!.id,
        (e: unknown) => ConnectError.from(e),
      ),
    ),
  );
  t.deepEqual(inv.calls, ['single a', 'batch b,short-c,d'], 'the first goes alone at once, the others together');
  t.deepEqual(outcomes.slice(0, 2), ['a', 'b']);
  t.is(outcomes[3], 'd');
  const refused = outcomes[2] as ConnectError;
  t.is(refused.code, Code.FailedPrecondition, "the saga reads the code as it would a call of its own's");
  t.is(refused.rawMessage, 'SKU-1: only 0 available, 1 requested');
  t.is(refused.findDetails(PreconditionFailureSchema)[0]?.violations[0]?.type, 'INSUFFICIENT_STOCK');
  t.is(ports.coalescers.reserveStock.calls, 2);

  // A call with options of its own (a deadline) is not batched.
  await ports.inventory.reserveStock({ reservationId: 'e', lines }, { timeoutMs: 1000 });
  t.is(inv.calls.at(-1), 'single e');
});

test('an inventory without the batch RPC (an older replica mid-deploy) gets the same calls one by one, not a cancelled saga', async (t) => {
  const inv = fakeInventory();
  const older = {
    ...inv.client,
    batchReserveStock: async () => {
      inv.calls.push('batch refused');
      throw new ConnectError('method not implemented', Code.Unimplemented);
    },
  } as unknown as Client<typeof InventoryService>;
  const ports = batchedSagaPorts({ inventory: older, payment: {} as Client<typeof PaymentService> });
  const lines = [{ sku: 'SKU-1', quantity: 1n }];
  const ids = await Promise.all(['a', 'b', 'c'].map((id) => ports.inventory.reserveStock({ reservationId: id, lines }).then((r) => r.reservation!.id)));
  t.deepEqual(ids, ['a', 'b', 'c']);
  t.deepEqual(inv.calls, ['single a', 'batch refused', 'single b', 'single c']);
});
