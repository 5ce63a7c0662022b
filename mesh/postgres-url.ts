import postgres from 'postgres';

/**
 * A DATABASE_URL as postgres.js should see it, libpq's `host` and `port` query parameters
 * included.
 *
 * libpq (psql, pg_dump, every other driver's docs) reaches a server on a Unix socket as
 * `postgres://user@localhost/db?host=/var/run/postgresql`: the `host` parameter overrides the
 * URL's host, and a value starting with `/` is the socket's directory. postgres.js reads no
 * such parameter: it sends every query parameter it does not know to the server as a
 * run-time setting, and the connection failed with `unrecognized configuration parameter
 * "host"`. So this takes `host` and `port` out of the URL and hands them over as the options
 * postgres.js does read (a directory becomes `<dir>/.s.PGSQL.<port>`, as libpq does).
 */
export interface PostgresConnection {
  /** The URL without the parameters moved into `options`. */
  url: string;
  /** Spread into postgres.js' options (before your own). */
  options: { host?: string; port?: number };
}

export function postgresConnection(databaseUrl: string): PostgresConnection {
  const u = new URL(databaseUrl);
  const host = u.searchParams.get('host') ?? undefined;
  const portText = u.searchParams.get('port') ?? undefined;
  if (host === undefined && portText === undefined) return { url: databaseUrl, options: {} };
  let port: number | undefined;
  if (portText !== undefined) {
    port = Number(portText);
    if (!Number.isInteger(port) || port < 1 || port > 65535) {
      throw new Error(`DATABASE_URL: port=${JSON.stringify(portText)} is not a port number (1-65535)`);
    }
  }
  if (host === '') throw new Error('DATABASE_URL: host= is empty (a host name, or the directory of a Unix socket)');
  u.searchParams.delete('host');
  u.searchParams.delete('port');
  return { url: u.toString(), options: { ...(host !== undefined ? { host } : {}), ...(port !== undefined ? { port } : {}) } };
}

/** A postgres.js client for a DATABASE_URL, its libpq `host`/`port` parameters honoured; `options` as postgres.js takes them. */
export function openPostgres(databaseUrl: string, options: postgres.Options<{}> = {}): postgres.Sql {
  const connection = postgresConnection(databaseUrl);
  return postgres(connection.url, { ...connection.options, ...options });
}
