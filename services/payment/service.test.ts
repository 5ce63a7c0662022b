/**
 * PaymentService over real gRPC, started as main.ts wires it, on a fresh
 * Postgres database and real NATS JetStream under a unique prefix.
 */
import test, { type ExecutionContext } from 'ava';
import { randomUUID } from 'node:crypto';
import { fromBinary } from '@bufbuild/protobuf';
import { Code, ConnectError, type Client } from '@connectrpc/connect';
import { asc, eq, sql } from 'drizzle-orm';
import type { NatsConnection } from 'nats';
import {
  PaymentAuthorizedSchema,
  PaymentFailedSchema,
  PaymentRefundedSchema,
  PaymentService,
  PaymentStatus,
} from '../../gen/shop/payment/v1/payment_pb.js';
import { PreconditionFailureSchema } from '../../gen/google/rpc/error_details_pb.js';
import { createMeshClient } from '../../mesh/client.js';
import { itemOutcome } from '../../mesh/batch-items.js';
import { fieldViolations } from '../../mesh/errors.js';
import { streamForType } from '../../mesh/events/naming.js';
import { identityHeaders } from '../../mesh/identity.js';
import { sameOutcome, settle, startServiceForTest, type ServiceUnderTest, type TestNatsPrefix } from '../../mesh/testing/index.js';
import { paymentSettings, startPayment, type PaymentApp } from './main.js';
import { outbox, payments } from './schema.js';

let svc: ServiceUnderTest<PaymentApp>;
let app: PaymentApp;
let client: Client<typeof PaymentService>;
let nc: NatsConnection;
let nats: TestNatsPrefix;

test.before(async () => {
  svc = await startServiceForTest(paymentSettings, (config) => startPayment(config, '127.0.0.1'), {
    PAYMENT_SLOW_MS: '300',
    LOG_LEVEL: 'warn',
  });
  ({ app, nc, nats } = svc);
  // No retries: a test must see the first answer.
  client = createMeshClient(PaymentService, app.server.address, { retry: { maxAttempts: 1 } });
});

test.after.always(() => svc?.close());

const EUR = (amountMinor: bigint) => ({ currencyCode: 'EUR', amountMinor });

/**
 * A generous deadline: these tests prove correctness, not speed, and the
 * concurrent ones queue on one order's lock; a loaded CI machine must not
 * turn a slow answer into a failure.
 */
const PATIENT = { timeoutMs: 60_000 };

function authorize(orderId: string, cardToken = 'tok_visa', amountMinor = 4_200n, userId = 'user-1') {
  return client.authorizePayment({ orderId, userId, amount: EUR(amountMinor), cardToken }, PATIENT);
}

const as = (userId: string, role: 'user' | 'admin' = 'user') => ({ headers: identityHeaders({ userId, role }) });

async function rejects(t: ExecutionContext, p: Promise<unknown>, code: Code): Promise<ConnectError> {
  const err = await t.throwsAsync(p);
  t.true(err instanceof ConnectError, String(err));
  t.is((err as ConnectError).code, code, (err as ConnectError).message);
  return err as ConnectError;
}

async function eventsOf(orderId: string) {
  return app.database.db.select().from(outbox).where(eq(outbox.aggregateId, orderId)).orderBy(asc(outbox.seq));
}

async function rowsOf(orderId: string) {
  return app.database.db.select().from(payments).where(eq(payments.orderId, orderId));
}

async function until<T>(what: string, probe: () => Promise<T | undefined | false>, limitMs = 15_000): Promise<T> {
  const end = Date.now() + limitMs;
  for (;;) {
    const v = await probe().catch(() => undefined);
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test('tok_visa authorizes once: a retry answers the same payment and writes no second event', async (t) => {
  const orderId = randomUUID();
  const { payment } = await authorize(orderId);
  t.is(payment!.status, PaymentStatus.AUTHORIZED);
  t.is(payment!.orderId, orderId);
  t.is(payment!.userId, 'user-1');
  t.deepEqual([payment!.amount!.currencyCode, payment!.amount!.amountMinor], ['EUR', 4_200n]);
  t.is(payment!.cardLast4, 'visa');
  t.is(payment!.declineReason, '');
  const again = await authorize(orderId);
  t.deepEqual(again.payment, payment);
  const events = await eventsOf(orderId);
  t.deepEqual(events.map((e) => e.eventType), ['shop.payment.v1.PaymentAuthorized']);
  const ev = fromBinary(PaymentAuthorizedSchema, events[0]!.payload);
  t.is(ev.paymentId, payment!.id);
  t.is(ev.amount!.amountMinor, 4_200n);
});

test('PaymentAuthorized reaches NATS through the outbox relay', async (t) => {
  const orderId = randomUUID();
  const { payment } = await authorize(orderId, 'tok_visa', 777n);
  const jsm = await nc.jetstreamManager();
  const stream = streamForType(PaymentAuthorizedSchema.typeName, nats.subjectPrefix).name;
  const subject = `${nats.subjectPrefix}${PaymentAuthorizedSchema.typeName}`;
  // Other tests publish too: look through the stream for this order's event.
  const msg = await until('PaymentAuthorized on NATS', async () => {
    const { state } = await jsm.streams.info(stream);
    for (let seq = state.first_seq; seq <= state.last_seq; seq++) {
      const m = await jsm.streams.getMessage(stream, { seq }).catch(() => undefined);
      if (m?.subject === subject && fromBinary(PaymentAuthorizedSchema, m.data).orderId === orderId) return m;
    }
    return undefined;
  });
  t.is(fromBinary(PaymentAuthorizedSchema, msg.data).paymentId, payment!.id);
});

test('declines are answers, not errors: tok_declined, unknown tokens and amounts over the limit', async (t) => {
  const cases: Array<[string, bigint, string]> = [
    ['tok_declined', 100n, 'card declined'],
    ['tok_mastercard', 100n, 'unknown card token'],
    ['tok_visa', 1_000_001n, 'amount over limit'],
    ['tok_slow', 5_000_000n, 'amount over limit'],
  ];
  for (const [token, amount, reason] of cases) {
    const orderId = randomUUID();
    const { payment } = await authorize(orderId, token, amount);
    t.is(payment!.status, PaymentStatus.DECLINED, token);
    t.is(payment!.declineReason, reason, token);
    const again = await authorize(orderId, token, amount);
    t.deepEqual(again.payment, payment, 'a retry of a decline answers the same decline');
    const events = await eventsOf(orderId);
    t.deepEqual(events.map((e) => e.eventType), ['shop.payment.v1.PaymentFailed'], token);
    const ev = fromBinary(PaymentFailedSchema, events[0]!.payload);
    t.is(ev.reason, reason);
    t.is(ev.orderId, orderId);
  }
  const limit = await authorize(randomUUID(), 'tok_visa', 1_000_000n);
  t.is(limit.payment!.status, PaymentStatus.AUTHORIZED, 'exactly the limit is fine');
});

test('tok_error is UNAVAILABLE and records nothing; a retry once the processor is back succeeds', async (t) => {
  const orderId = randomUUID();
  await rejects(t, authorize(orderId, 'tok_error'), Code.Unavailable);
  t.is((await rowsOf(orderId)).length, 0);
  t.is((await eventsOf(orderId)).length, 0);
  const { payment } = await authorize(orderId, 'tok_visa');
  t.is(payment!.status, PaymentStatus.AUTHORIZED);
});

test('two concurrent AuthorizePayment calls for one order (tok_slow) charge once and answer the first result', async (t) => {
  const orderId = randomUUID();
  const [a, b] = await Promise.all([authorize(orderId, 'tok_slow'), authorize(orderId, 'tok_slow')]);
  t.is(a.payment!.status, PaymentStatus.AUTHORIZED);
  t.deepEqual(a.payment, b.payment);
  t.is((await rowsOf(orderId)).length, 1);
  t.is((await eventsOf(orderId)).length, 1);
});

test('ten concurrent retries of one authorization charge once', async (t) => {
  const orderId = randomUUID();
  const answers = await Promise.all(Array.from({ length: 10 }, () => authorize(orderId)));
  const ids = new Set(answers.map((a) => a.payment!.id));
  t.is(ids.size, 1);
  t.is((await eventsOf(orderId)).length, 1);
});

test('the same order with another amount or user is ALREADY_EXISTS', async (t) => {
  const orderId = randomUUID();
  await authorize(orderId, 'tok_visa', 100n);
  await rejects(t, authorize(orderId, 'tok_visa', 101n), Code.AlreadyExists);
  await rejects(t, authorize(orderId, 'tok_visa', 100n, 'user-2'), Code.AlreadyExists);
});

test('capture charges an authorization once; refund of a capture refunds it once', async (t) => {
  const orderId = randomUUID();
  const { payment: authorized } = await authorize(orderId);
  const c1 = await client.capturePayment({ orderId });
  t.is(c1.payment!.status, PaymentStatus.CAPTURED);
  t.is(c1.payment!.id, authorized!.id);
  const c2 = await client.capturePayment({ orderId });
  t.is(c2.payment!.status, PaymentStatus.CAPTURED);
  const r1 = await client.refundPayment({ orderId, reason: 'customer returned it' });
  t.is(r1.payment!.status, PaymentStatus.REFUNDED);
  const r2 = await client.refundPayment({ orderId, reason: 'customer returned it' });
  t.is(r2.payment!.status, PaymentStatus.REFUNDED);
  const events = await eventsOf(orderId);
  t.deepEqual(events.map((e) => e.eventType), ['shop.payment.v1.PaymentAuthorized', 'shop.payment.v1.PaymentRefunded']);
  const ev = fromBinary(PaymentRefundedSchema, events[1]!.payload);
  t.is(ev.reason, 'customer returned it');
  t.is(ev.amount!.amountMinor, 4_200n);
  await rejects(t, client.capturePayment({ orderId }), Code.FailedPrecondition);
});

test('refund of an authorization voids it, once; it can no longer be captured', async (t) => {
  const orderId = randomUUID();
  await authorize(orderId);
  const v1 = await client.refundPayment({ orderId, reason: 'out of stock' });
  t.is(v1.payment!.status, PaymentStatus.VOIDED);
  const v2 = await client.refundPayment({ orderId, reason: 'out of stock' });
  t.is(v2.payment!.status, PaymentStatus.VOIDED);
  t.deepEqual((await eventsOf(orderId)).map((e) => e.eventType), [
    'shop.payment.v1.PaymentAuthorized',
    'shop.payment.v1.PaymentRefunded',
  ]);
  await rejects(t, client.capturePayment({ orderId }), Code.FailedPrecondition);
  t.deepEqual((await authorize(orderId)).payment, v2.payment, 'a late retry of the authorization answers the stored payment');
});

test('capture of an unknown order is NOT_FOUND, of a declined one FAILED_PRECONDITION; refund of a decline answers no payment', async (t) => {
  await rejects(t, client.capturePayment({ orderId: randomUUID() }), Code.NotFound);
  const orderId = randomUUID();
  await authorize(orderId, 'tok_declined');
  await rejects(t, client.capturePayment({ orderId }), Code.FailedPrecondition);
  const refund = await client.refundPayment({ orderId, reason: 'cancelled' });
  t.is(refund.payment, undefined);
  t.deepEqual((await eventsOf(orderId)).map((e) => e.eventType), ['shop.payment.v1.PaymentFailed']);
});

test('refund of an order never charged leaves a tombstone: a late AuthorizePayment is refused (FAILED_PRECONDITION) and charges nothing', async (t) => {
  const orderId = randomUUID();
  const r1 = await client.refundPayment({ orderId, reason: 'saga timed out' });
  t.is(r1.payment, undefined);
  const r2 = await client.refundPayment({ orderId, reason: 'saga timed out' });
  t.is(r2.payment, undefined);
  const err = await rejects(t, authorize(orderId), Code.FailedPrecondition);
  t.regex(err.rawMessage, /refunded before it was authorized/);
  t.deepEqual(err.findDetails(PreconditionFailureSchema)[0]?.violations.map((v) => v.type), ['ORDER_REFUNDED']);
  await rejects(t, client.capturePayment({ orderId }), Code.FailedPrecondition);
  await rejects(t, client.getPayment({ orderId }, as('user-1')), Code.NotFound);
  t.is((await eventsOf(orderId)).length, 0);
  const rows = await rowsOf(orderId);
  t.deepEqual(rows.map((r) => r.status), ['TOMBSTONE']);
});

test('a refund racing a slow authorization never leaves money held', async (t) => {
  const orderId = randomUUID();
  const auth = authorize(orderId, 'tok_slow').then(
    (r) => r.payment!.status,
    (e: unknown) => ConnectError.from(e).code,
  );
  const refund = client.refundPayment({ orderId, reason: 'cancelled by customer' }, PATIENT);
  const [authResult, refundResult] = await Promise.all([auth, refund]);
  const [row] = await rowsOf(orderId);
  if (authResult === PaymentStatus.AUTHORIZED) {
    // The authorization went first: the refund waited for it, then voided it.
    t.is(refundResult.payment?.status, PaymentStatus.VOIDED);
    t.is(row!.status, 'VOIDED');
  } else {
    // The refund went first: the authorization found the tombstone.
    t.is(authResult, Code.FailedPrecondition);
    t.is(refundResult.payment, undefined);
    t.is(row!.status, 'TOMBSTONE');
  }
});

test("GetPayment answers the payer's own payment (and admins), anyone else NOT_FOUND", async (t) => {
  const orderId = randomUUID();
  const { payment } = await authorize(orderId, 'tok_visa', 999n, 'user-7');
  const own = await client.getPayment({ orderId }, as('user-7'));
  t.deepEqual(own.payment, payment);
  const admin = await client.getPayment({ orderId }, as('boss', 'admin'));
  t.is(admin.payment!.id, payment!.id);
  await rejects(t, client.getPayment({ orderId }, as('user-8')), Code.NotFound);
  await rejects(t, client.getPayment({ orderId: randomUUID() }, as('user-7')), Code.NotFound);
  await rejects(t, client.getPayment({ orderId }), Code.Unauthenticated);
});

test('bad input names the field, for every RPC', async (t) => {
  const ok = { orderId: 'o-1', userId: 'u-1', amount: EUR(100n), cardToken: 'tok_visa' };
  const cases: Array<[string, () => Promise<unknown>, string]> = [
    ['Authorize no order', () => client.authorizePayment({ ...ok, orderId: '' }), 'order_id'],
    ['Authorize bad order', () => client.authorizePayment({ ...ok, orderId: 'a b' }), 'order_id'],
    ['Authorize no user', () => client.authorizePayment({ ...ok, userId: '' }), 'user_id'],
    ['Authorize no amount', () => client.authorizePayment({ ...ok, amount: undefined }), 'amount'],
    ['Authorize bad currency', () => client.authorizePayment({ ...ok, amount: { currencyCode: 'eur', amountMinor: 1n } }), 'amount.currency_code'],
    ['Authorize zero amount', () => client.authorizePayment({ ...ok, amount: EUR(0n) }), 'amount.amount_minor'],
    ['Authorize negative amount', () => client.authorizePayment({ ...ok, amount: EUR(-5n) }), 'amount.amount_minor'],
    ['Authorize no token', () => client.authorizePayment({ ...ok, cardToken: '' }), 'card_token'],
    ['Authorize bad token', () => client.authorizePayment({ ...ok, cardToken: 'tok visa!' }), 'card_token'],
    ['Capture no order', () => client.capturePayment({ orderId: '' }), 'order_id'],
    ['Refund no order', () => client.refundPayment({ orderId: '' }), 'order_id'],
    ['Refund long reason', () => client.refundPayment({ orderId: 'o-1', reason: 'x'.repeat(501) }), 'reason'],
    ['Get no order', () => client.getPayment({ orderId: '' }, as('u-1')), 'order_id'],
  ];
  for (const [name, call, field] of cases) {
    const err = await rejects(t, call(), Code.InvalidArgument);
    t.is(fieldViolations(err)[0]?.field, field, name);
    t.true(err.rawMessage.startsWith(`${field}:`), `${name}: ${err.rawMessage}`);
  }
  t.is((await rowsOf('o-1')).length, 0, 'nothing was written');
});

// Serial: the DDL must not queue behind (or block) other tests' transactions.
test.serial('a failed outbox write leaves no payment: the decision and its event commit together', async (t) => {
  const orderId = randomUUID();
  await app.database.db.execute(
    sql.raw(`alter table payment.outbox add constraint no_doomed check (aggregate_id <> '${orderId}') not valid`),
  );
  try {
    await rejects(t, authorize(orderId), Code.Internal);
    await rejects(t, authorize(orderId, 'tok_declined'), Code.Internal);
  } finally {
    await app.database.db.execute(sql.raw(`alter table payment.outbox drop constraint no_doomed`));
  }
  t.is((await rowsOf(orderId)).length, 0);
  const { payment } = await authorize(orderId);
  t.is(payment!.status, PaymentStatus.AUTHORIZED, 'the retry after the fault charges, once');
  t.is((await eventsOf(orderId)).length, 1);
});

test.serial('a failed outbox write leaves the refund undone: the payment stays as it was', async (t) => {
  const orderId = randomUUID();
  await authorize(orderId);
  await client.capturePayment({ orderId });
  await app.database.db.execute(
    sql.raw(`alter table payment.outbox add constraint no_doomed_refund check (aggregate_id <> '${orderId}') not valid`),
  );
  try {
    await rejects(t, client.refundPayment({ orderId, reason: 'x' }), Code.Internal);
  } finally {
    await app.database.db.execute(sql.raw(`alter table payment.outbox drop constraint no_doomed_refund`));
  }
  t.deepEqual((await rowsOf(orderId)).map((r) => r.status), ['CAPTURED']);
  const { payment } = await client.refundPayment({ orderId, reason: 'x' });
  t.is(payment!.status, PaymentStatus.REFUNDED);
  t.deepEqual((await eventsOf(orderId)).map((e) => e.eventType), ['shop.payment.v1.PaymentAuthorized', 'shop.payment.v1.PaymentRefunded']);
});

// ---- batches: each request answered as its single RPC would answer it ----

const visa = (orderId: string, amountMinor = 4_200n, cardToken = 'tok_visa') => ({ orderId, userId: 'user-1', amount: EUR(amountMinor), cardToken });

test('BatchAuthorizePayments answers each request as AuthorizePayment would: a decline, an outage or a bad field fails none of the others; a repeated batch charges nothing more', async (t) => {
  const [ok, declined, down, bad, tomb, other] = Array.from({ length: 6 }, () => randomUUID());
  await client.refundPayment({ orderId: tomb!, reason: 'cancelled' });
  await authorize(other!, 'tok_visa', 100n);
  const requests = [
    visa(ok!),
    visa(declined!, 4_200n, 'tok_declined'),
    visa(down!, 4_200n, 'tok_error'),
    visa(bad!, 0n),
    visa(tomb!),
    visa(ok!),
    visa(other!, 101n),
  ];
  const first = (await client.batchAuthorizePayments({ requests }, PATIENT)).results.map(itemOutcome);
  const what = (o: unknown) => (o instanceof ConnectError ? Code[o.code] : PaymentStatus[(o as { payment: { status: PaymentStatus } }).payment.status]);
  t.deepEqual(first.map(what), ['AUTHORIZED', 'DECLINED', 'Unavailable', 'InvalidArgument', 'FailedPrecondition', 'AUTHORIZED', 'AlreadyExists']);
  t.deepEqual(fieldViolations(first[3] as ConnectError).map((v) => v.field), ['requests[3].amount.amount_minor']);
  sameOutcome(t, first[5], first[0], 'a repeated order in one batch answers the first result');
  t.deepEqual((await eventsOf(ok!)).map((e) => e.eventType), ['shop.payment.v1.PaymentAuthorized']);
  t.deepEqual((await eventsOf(declined!)).map((e) => e.eventType), ['shop.payment.v1.PaymentFailed']);
  t.is(fromBinary(PaymentFailedSchema, (await eventsOf(declined!))[0]!.payload).reason, 'card declined');
  for (const id of [down!, bad!]) t.is((await rowsOf(id)).length, 0, 'an outage or a bad request records nothing');
  t.is((await eventsOf(tomb!)).length, 0, 'a tombstone holds nothing');

  const again = (await client.batchAuthorizePayments({ requests }, PATIENT)).results.map(itemOutcome);
  for (let i = 0; i < requests.length; i++) sameOutcome(t, again[i], first[i], `repeat of requests[${i}]`);
  for (const i of [0, 1, 2, 4, 6]) sameOutcome(t, first[i], await settle(client.authorizePayment(requests[i]!, PATIENT)), `single requests[${i}]`);
  t.is((await rowsOf(ok!)).length, 1);
  t.is((await eventsOf(ok!)).length, 1, 'charged once');
});

test('concurrent batches and single calls for the same orders charge each order once', async (t) => {
  const orders = Array.from({ length: 10 }, () => randomUUID());
  const batches = Array.from({ length: 5 }, (_, b) =>
    client.batchAuthorizePayments({ requests: (b % 2 ? [...orders].reverse() : orders).map((o) => visa(o, 500n, o.endsWith('0') ? 'tok_slow' : 'tok_visa')) }, PATIENT),
  );
  const singles = orders.map((o) => authorize(o, o.endsWith('0') ? 'tok_slow' : 'tok_visa', 500n));
  const [answers, single] = await Promise.all([Promise.all(batches), Promise.all(singles)]);
  for (const [k, o] of orders.entries()) {
    const ids = new Set([single[k]!.payment!.id, ...answers.map((a) => (itemOutcome(a.results.find((r) => itemOutcome(r) instanceof ConnectError || (itemOutcome(r) as { payment: { orderId: string } }).payment.orderId === o)!) as { payment: { id: string } }).payment.id)]);
    t.is(ids.size, 1, `order ${o}: one payment answered by every call`);
    t.is((await rowsOf(o)).length, 1);
    t.is((await eventsOf(o)).length, 1);
  }
});

test('BatchCapturePayments captures each authorization once, as CapturePayment would', async (t) => {
  const [a, b, declined, unknown] = Array.from({ length: 4 }, () => randomUUID());
  await authorize(a!);
  await authorize(b!);
  await authorize(declined!, 'tok_declined');
  const requests = [{ orderId: a! }, { orderId: unknown! }, { orderId: declined! }, { orderId: 'has space' }, { orderId: b! }, { orderId: a! }];
  const first = (await client.batchCapturePayments({ requests }, PATIENT)).results.map(itemOutcome);
  const what = (o: unknown) => (o instanceof ConnectError ? Code[o.code] : PaymentStatus[(o as { payment: { status: PaymentStatus } }).payment.status]);
  t.deepEqual(first.map(what), ['CAPTURED', 'NotFound', 'FailedPrecondition', 'InvalidArgument', 'CAPTURED', 'CAPTURED']);
  t.deepEqual(fieldViolations(first[3] as ConnectError).map((v) => v.field), ['requests[3].order_id']);
  sameOutcome(t, first[5], first[0], 'a repeated order in one batch answers the same');
  const again = (await client.batchCapturePayments({ requests }, PATIENT)).results.map(itemOutcome);
  for (let i = 0; i < requests.length; i++) {
    if (i === 3) continue;
    sameOutcome(t, again[i], first[i], `repeat of requests[${i}]`);
    sameOutcome(t, first[i], await settle(client.capturePayment(requests[i]!, PATIENT)), `single requests[${i}]`);
  }
  const refunded = await client.refundPayment({ orderId: a!, reason: 'returned' });
  t.is(refunded.payment!.status, PaymentStatus.REFUNDED, 'a batch-captured payment refunds as any other');
  await rejects(t, client.batchCapturePayments({ requests: [] }), Code.InvalidArgument);
  await rejects(t, client.batchAuthorizePayments({ requests: Array.from({ length: 101 }, () => visa(randomUUID())) }), Code.InvalidArgument);
});
