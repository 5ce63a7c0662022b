import test from 'ava';
import { create } from '@bufbuild/protobuf';
import { OrderSchema, OrderStatus } from '../../gen/shop/order/v1/order_pb.js';
import { SentOrders } from './sent-orders.js';

const order = (id: string, status: OrderStatus, cancelReason = '') => create(OrderSchema, { id, status, cancelReason });
const isFinal = (o: { status: OrderStatus }) => o.status === OrderStatus.CONFIRMED || o.status === OrderStatus.CANCELLED;

test('each state is sent once; a final state heard twice (announced and re-read) is sent once', (t) => {
  const sent = new SentOrders(isFinal, 60_000);
  t.true(sent.next(order('a', OrderStatus.PENDING)));
  t.false(sent.next(order('a', OrderStatus.PENDING)));
  t.true(sent.next(order('a', OrderStatus.CANCELLED, 'payment declined')));
  t.false(sent.next(order('a', OrderStatus.CANCELLED, 'payment declined')), 'the copy from the other source');
  t.is(sent.get('a')?.status, OrderStatus.CANCELLED);
});

test('openIds lists the orders not yet final and forgets final ones after keepFinalMs', (t) => {
  let now = 1_000;
  const sent = new SentOrders(isFinal, 5_000, () => now);
  sent.next(order('open', OrderStatus.PENDING));
  sent.next(order('done', OrderStatus.CONFIRMED));
  t.deepEqual(sent.openIds(), ['open']);
  t.truthy(sent.get('done'), 'remembered while a copy may still arrive');
  now += 5_001;
  t.deepEqual(sent.openIds(), ['open']);
  t.is(sent.get('done'), undefined, 'forgotten after keepFinalMs');
});
