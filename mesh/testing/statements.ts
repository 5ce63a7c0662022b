import { withEventSignals } from '../events/commit-signal.js';
import type { EventsDb, EventsTx } from '../events/db.js';
import type { Teardownable } from './database.js';

/**
 * Runs `fn` in a transaction of `db` as event consumers get it (with the post-commit relay
 * wake) and returns the text of every statement it sent through drizzle's session client
 * of the transaction (raw and builder statements alike): for tests that a batch is written
 * with the statements it should be.
 */
export async function statementsOfTransaction(db: EventsDb, fn: (tx: EventsTx) => Promise<unknown>): Promise<string[]> {
  const statements: string[] = [];
  await withEventSignals(db).transaction(async (tx) => {
    type Client = { unsafe(query: string, ...rest: unknown[]): unknown };
    const session = (tx as unknown as { session: { client: Client } }).session;
    const client = session.client;
    session.client = new Proxy(client, {
      get: (target, prop) =>
        prop === 'unsafe' ? (query: string, ...rest: unknown[]) => (statements.push(query), target.unsafe(query, ...rest)) : Reflect.get(target, prop),
    });
    await fn(tx);
  });
  return statements;
}

/**
 * Records, until the test ends, the text of every statement `db`'s driver client is given
 * that contains `marker` (fixed-text statements and drizzle's alike): for tests that count
 * how many statements concurrent callers shared.
 */
export function recordStatements(t: Teardownable, db: unknown, marker: string): string[] {
  const statements: string[] = [];
  const client = (db as { $client: { unsafe: (...a: unknown[]) => unknown } }).$client;
  const unsafe = client.unsafe;
  client.unsafe = (text: unknown, ...rest: unknown[]) => {
    if (typeof text === 'string' && text.includes(marker)) statements.push(text);
    return unsafe.call(client, text, ...rest);
  };
  t.teardown(() => {
    client.unsafe = unsafe;
  });
  return statements;
}
