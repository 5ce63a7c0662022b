// LISTEN for the relay, over whichever Postgres client the service's drizzle uses.
//
// postgres.js: `sql.listen(channel, fn)` resolves to `{ unlisten() }` and keeps a
// dedicated connection (re-listening after reconnects). PGlite: `pg.listen(channel, fn)`
// resolves to an unsubscribe function. Both are accepted here; anything else can be
// wrapped by the caller into a `Listen`.

/** Subscribes `onNotify` to `channel`; resolves to a function that unsubscribes. */
export type Listen = (channel: string, onNotify: (payload: string) => void) => Promise<() => Promise<void>>;

interface ListeningClient {
  listen(channel: string, fn: (payload: string) => void): Promise<unknown>;
}

/** A `Listen` over a postgres.js `Sql` or a PGlite instance (e.g. `db.$client`). */
export function listenVia(client: ListeningClient): Listen {
  return async (channel, onNotify) => {
    const handle = await client.listen(channel, onNotify);
    if (typeof handle === "function") return async () => void (await handle());
    const meta = handle as { unlisten?: () => Promise<void> };
    if (typeof meta?.unlisten === "function") return () => meta.unlisten!();
    throw new Error("client.listen() answered neither an unsubscribe function nor { unlisten }");
  };
}

/** Detects a listening client behind a drizzle database (`db.$client`), if there is one. */
export function listenFromDb(db: unknown): Listen | undefined {
  const client = (db as { $client?: unknown })?.$client as Partial<ListeningClient> | undefined;
  return client && typeof client.listen === "function" ? listenVia(client as ListeningClient) : undefined;
}
