import { withEventSignals } from '../events/commit-signal.js';
import type { EventsDb, EventsTx } from '../events/db.js';

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
