import test from 'ava';
import type { Listen } from '../../mesh/events/listen.js';
import { NotificationFeed } from './feed.js';
import { RECORDED_CHANNEL } from './repository.js';
import type { NotificationRow } from './schema.js';

/** A Listen that the test drives by hand, and rows held in a map. */
function fixture() {
  const handlers = new Map<string, (payload: string) => void>();
  const listen: Listen = async (channel, fn) => {
    handlers.set(channel, fn);
    return async () => void handlers.delete(channel);
  };
  const rows = new Map<string, NotificationRow>();
  const loads: string[] = [];
  const feed = new NotificationFeed({
    listen,
    load: async (id) => {
      loads.push(id);
      // Later rows load faster: the feed must still deliver in announcement order.
      await new Promise((r) => setTimeout(r, id === 'n1' ? 20 : 0));
      return rows.get(id);
    },
  });
  const announce = (id: string, userId: string) => {
    rows.set(id, { id, userId, seq: BigInt(rows.size + 1), kind: 'order_confirmed', title: id, body: '', orderId: 'o', sourceEventId: id, createTime: new Date() });
    handlers.get(RECORDED_CHANNEL)?.(JSON.stringify({ id, userId }));
  };
  return { feed, announce, handlers, loads, raw: (payload: string) => handlers.get(RECORDED_CHANNEL)?.(payload) };
}

test('a watcher gets its own user notifications, in announcement order', async (t) => {
  const { feed, announce } = fixture();
  await feed.start();
  const got: string[] = [];
  const other: string[] = [];
  feed.subscribe('ann', (row) => got.push(row.id));
  feed.subscribe('bob', (row) => other.push(row.id));
  announce('n1', 'ann');
  announce('n2', 'bob');
  announce('n3', 'ann');
  await feed.stop();
  t.deepEqual(got, ['n1', 'n3']);
  t.deepEqual(other, ['n2']);
});

test('announcements for users nobody watches are not even loaded; bad payloads are ignored', async (t) => {
  const { feed, announce, loads, raw } = fixture();
  await feed.start();
  const got: string[] = [];
  feed.subscribe('ann', (row) => got.push(row.id));
  announce('n1', 'nobody');
  raw('not json');
  announce('n2', 'ann');
  await feed.stop();
  t.deepEqual(loads, ['n2']);
  t.deepEqual(got, ['n2']);
});

test('unsubscribe stops delivery and forgets the user; stop() unlistens', async (t) => {
  const { feed, announce, handlers } = fixture();
  await feed.start();
  const got: string[] = [];
  const off = feed.subscribe('ann', (row) => got.push(row.id));
  const off2 = feed.subscribe('ann', () => {});
  t.is(feed.watcherCount('ann'), 2);
  off();
  t.is(feed.watcherCount('ann'), 1);
  off2();
  t.is(feed.watcherCount(), 0);
  announce('n1', 'ann');
  await feed.stop();
  t.deepEqual(got, []);
  t.false(handlers.has(RECORDED_CHANNEL));
});
