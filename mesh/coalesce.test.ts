import test from 'ava';
import { currentTraceContext, runWithTraceContext } from './call-context.js';
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

test('splitOn: a batch call refused as a whole is sent again as one call per input, each with its own outcome', async (t) => {
  const sent: string[] = [];
  const c = new Coalescer<number, string>({
    sendOne: async (n) => {
      sent.push(`one ${n}`);
      await new Promise((r) => setTimeout(r, 5));
      if (n < 0) throw new Error(`refused ${n}`);
      return `one ${n}`;
    },
    sendBatch: async (ns) => {
      sent.push(`batch ${ns.join(',')}`);
      throw new Error('no batch method');
    },
    splitOn: (err) => (err as Error).message === 'no batch method',
  });
  const all = [1, 2, -3].map((n) => settle(c.call(n)));
  t.deepEqual(await Promise.all(all), ['one 1', 'one 2', 'error: refused -3']);
  t.deepEqual(sent, ['one 1', 'batch 2,-3', 'one 2', 'one -3']);
  t.is(c.calls, 4, 'the batch and the two calls it was split into');
});

test('stragglerMs: a batch in flight that long stops holding back the calls behind it, up to maxInFlight', async (t) => {
  const sent: number[][] = [];
  const gates = new Map<number, () => void>();
  const c = new Coalescer<number, string>({
    sendOne: (n) => {
      sent.push([n]);
      return new Promise((resolve) => gates.set(n, () => resolve(`one ${n}`)));
    },
    sendBatch: (ns) => {
      sent.push(ns);
      return new Promise((resolve) => gates.set(ns[0]!, () => resolve(ns.map((n) => `batch ${n}`))));
    },
    stragglerMs: 30,
    maxInFlight: 2,
  });
  const slow = settle(c.call(1)); // never answered until the end: the slow card
  const behind = [2, 3].map((n) => settle(c.call(n)));
  t.deepEqual(sent, [[1]], 'held back while the first is young');
  await new Promise((r) => setTimeout(r, 60));
  t.deepEqual(sent, [[1], [2, 3]], 'sent once the first became a straggler');
  gates.get(2)!();
  t.deepEqual(await Promise.all(behind), ['batch 2', 'batch 3'], 'answered while the straggler is still out');
  const more = [4, 5].map((n) => settle(c.call(n)));
  await new Promise((r) => setTimeout(r, 60));
  t.deepEqual(sent.at(-1), [4], 'a new batch after the straggler');
  const last = settle(c.call(6));
  await new Promise((r) => setTimeout(r, 60));
  t.is(sent.length, 3, 'maxInFlight 2: the straggler and [4] are out, 5 and 6 wait');
  gates.get(1)!();
  t.is(await slow, 'one 1');
  await new Promise((r) => setImmediate(r));
  t.deepEqual(sent.at(-1), [5, 6], 'sent when a place frees up');
  gates.get(4)!();
  gates.get(5)!();
  t.deepEqual(await Promise.all([...more, last]), ['one 4', 'batch 5', 'batch 6']);
});

test('without stragglerMs a slow batch holds back every call behind it', async (t) => {
  const sent: number[][] = [];
  let answer!: () => void;
  const c = new Coalescer<number, string>({
    sendOne: (n) => {
      sent.push([n]);
      if (n !== 1) return Promise.resolve(`one ${n}`);
      return new Promise((resolve) => (answer = () => resolve(`one ${n}`)));
    },
    sendBatch: async (ns) => {
      sent.push(ns);
      return ns.map((n) => `batch ${n}`);
    },
  });
  const first = settle(c.call(1));
  const behind = settle(c.call(2));
  await new Promise((r) => setTimeout(r, 40));
  t.deepEqual(sent, [[1]]);
  answer();
  t.is(await first, 'one 1');
  t.is(await behind, 'one 2');
});

test("each call is sent in its caller's trace context, a batch in its first input's, never in the trace of whoever started the first batch", async (t) => {
  const seen: string[] = [];
  let answer: (() => void) | undefined;
  const c = new Coalescer<number, string>({
    sendOne: async (n) => {
      seen.push(`one ${n}: ${String(currentTraceContext())}`);
      if (n === 1) await new Promise<void>((r) => (answer = r));
      return `one ${n}`;
    },
    sendBatch: async (ns) => {
      seen.push(`batch ${ns.join(',')}: ${String(currentTraceContext())}`);
      await new Promise((r) => setTimeout(r, 5));
      return ns.map((n) => `batch ${n}`);
    },
  });
  const call = (n: number) => runWithTraceContext(`trace-${n}`, () => settle(c.call(n)));
  const first = call(1);
  const second = [call(2), call(3)];
  answer!();
  await Promise.all([first, ...second]);
  // Sent from the completion of [2, 3], which ran in trace-1's flush: still their own traces.
  const third = [call(4), call(5)];
  const fourth = call(6);
  await Promise.all([...third, fourth]);
  t.deepEqual(seen, ['one 1: trace-1', 'batch 2,3: trace-2', 'one 4: trace-4', 'batch 5,6: trace-5']);
});
