import test from 'ava';
import { Coalescer } from './coalesce.js';

/** A coalescer whose calls are recorded and answered when the test says so. */
function harness(options: { maxItems?: number; fits?: (batch: readonly number[], next: number) => boolean } = {}) {
  const sent: number[][] = [];
  let inFlight = 0;
  let maxInFlight = 0;
  const gates: Array<() => void> = [];
  const gate = () => new Promise<void>((r) => gates.push(r));
  const track = async <T>(fn: () => T): Promise<T> => {
    maxInFlight = Math.max(maxInFlight, ++inFlight);
    await gate();
    inFlight--;
    return fn();
  };
  const c = new Coalescer<number, string>({
    ...options,
    sendOne: (n) => {
      sent.push([n]);
      return track(() => {
        if (n < 0) throw new Error(`refused ${n}`);
        return `one ${n}`;
      });
    },
    sendBatch: (ns) => {
      sent.push(ns);
      return track(() => {
        if (ns.includes(999)) throw new Error('batch lost');
        return ns.map((n) => (n < 0 ? new Error(`refused ${n}`) : `batch ${n}`));
      });
    },
  });
  const open = async () => {
    await new Promise((r) => setImmediate(r));
    gates.shift()?.();
    await new Promise((r) => setImmediate(r));
  };
  return { c, sent, open, maxInFlight: () => maxInFlight };
}

const settle = (p: Promise<string>) => p.then((v) => v, (e: Error) => `error: ${e.message}`);

test('a lone call goes at once, alone; calls arriving meanwhile go out together, each with its own outcome', async (t) => {
  const h = harness();
  const first = settle(h.c.call(1));
  t.deepEqual(h.sent, [[1]], 'sent without waiting for a timer');
  const rest = [2, -3, 4].map((n) => settle(h.c.call(n)));
  t.deepEqual(h.sent, [[1]], 'nothing more while one is in flight');
  await h.open();
  t.is(await first, 'one 1');
  t.deepEqual(h.sent, [[1], [2, -3, 4]]);
  await h.open();
  t.deepEqual(await Promise.all(rest), ['batch 2', 'error: refused -3', 'batch 4'], "one refusal fails none of the others");
  t.is(h.maxInFlight(), 1);
  t.is(h.c.calls, 2);
  t.is(h.c.inputs, 4);
});

test('a batch call that fails reaches every input of that batch, and only that batch', async (t) => {
  const h = harness();
  const first = settle(h.c.call(1));
  const lost = [2, 999].map((n) => settle(h.c.call(n)));
  await h.open();
  const later = settle(h.c.call(5));
  await h.open();
  t.deepEqual(await Promise.all([first, ...lost]), ['one 1', 'error: batch lost', 'error: batch lost']);
  await h.open();
  t.is(await later, 'one 5');
});

test('batches hold at most maxItems, and only what fits', async (t) => {
  const h = harness({ maxItems: 3, fits: (batch, next) => batch.reduce((a, b) => a + b, 0) + next <= 10 });
  const all = [0, 1, 2, 3, 4, 5, 6].map((n) => settle(h.c.call(n)));
  for (let i = 0; i < 4; i++) await h.open();
  await Promise.all(all);
  t.deepEqual(h.sent, [[0], [1, 2, 3], [4, 5], [6]]);
});
