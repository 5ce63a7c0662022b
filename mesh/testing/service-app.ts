/**
 * A service started in the test's own process the way its main.ts starts it, on a fresh
 * Postgres database (or in-memory PGlite) and real NATS under a unique prefix:
 *
 *   let svc: ServiceUnderTest<UserApp>;
 *   test.before(async () => {
 *     svc = await startServiceForTest(userSettings, (config) => startUser(config, '127.0.0.1'), { JWT_SECRET: '...' });
 *   });
 *   test.after.always(() => svc?.close());
 *
 * svc.app is what the start function returned, svc.nc a NATS connection of the test's own
 * (to publish events or read streams), svc.nats the run's prefixes, svc.config the parsed
 * config (to start a second replica). close() stops the app, deletes the run's streams
 * (its registry bucket included), closes the connection and drops the database.
 */
import { connect, type NatsConnection } from 'nats';
import { parseConfig, type Config, type SettingsSpec } from '../config.js';
import { createTestDatabase, type TestDatabase } from './database.js';
import { testNatsPrefix, testNatsUrl, type TestNatsPrefix } from './nats.js';

export interface ServiceUnderTest<App, S extends SettingsSpec = SettingsSpec> {
  readonly app: App;
  readonly config: Config<S>;
  /** Undefined on PGlite. */
  readonly database: TestDatabase | undefined;
  readonly nats: TestNatsPrefix;
  readonly nc: NatsConnection;
  close(): Promise<void>;
}

export interface ServiceForTestOptions {
  /** Embedded PGlite in memory instead of a Postgres test database. */
  pglite?: boolean;
}

export async function startServiceForTest<S extends SettingsSpec, App extends { close(graceMs?: number): Promise<unknown> }>(
  settings: S,
  start: (config: Config<S>) => Promise<App>,
  env: Record<string, string> = {},
  options: ServiceForTestOptions = {},
): Promise<ServiceUnderTest<App, S>> {
  const nats = testNatsPrefix();
  const database = options.pglite ? undefined : await createTestDatabase();
  let nc: NatsConnection | undefined;
  let app: App | undefined;
  const close = async () => {
    await app?.close(1000);
    if (nc) {
      await deleteTestStreams(nc, nats).catch(() => {});
      await nc.close();
    }
    await database?.drop();
  };
  try {
    const config = parseConfig(settings, {
      PORT: '0',
      NATS_URL: testNatsUrl(),
      NATS_SUBJECT_PREFIX: nats.subjectPrefix,
      ...(database ? { DATABASE_URL: database.url } : { DATA_DIR: 'memory://' }),
      ...env,
    });
    nc = await connect({ servers: testNatsUrl() });
    app = await start(config);
    return { app, config, database, nats, nc, close };
  } catch (err) {
    await close();
    throw err;
  }
}

/** Deletes the streams of a test run: its event streams, dead letters and KV buckets (registry). */
export async function deleteTestStreams(nc: NatsConnection, nats: TestNatsPrefix): Promise<void> {
  const jsm = await nc.jetstreamManager();
  for await (const name of jsm.streams.names()) {
    if (name.startsWith(nats.streamPrefix) || name.startsWith(`KV_${nats.streamPrefix}`)) {
      await jsm.streams.delete(name).catch(() => {});
    }
  }
}
