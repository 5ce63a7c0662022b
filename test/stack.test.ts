// scripts/stack.ts' readiness: a service counts as started only when the listener on its
// port is that service. A port chosen free can be taken before the child binds it; the child
// then dies of EADDRINUSE while the other listener answers health checks. Before, the check
// asked health about the server as a whole and took the other listener's SERVING as ready,
// so the tests' calls went to the wrong service (UNIMPLEMENTED).
import test from 'ava';
import { readFileSync } from 'node:fs';
import { parseConfig } from '../mesh/config.js';
import { createTestDatabase, testNatsPrefix, testNatsUrl } from '../mesh/testing/index.js';
import { catalogSettings, startCatalog } from '../services/catalog/main.js';
import { startStack } from '../scripts/stack.js';

test('a service whose port another service holds is reported as not started, with its EADDRINUSE', async (t) => {
  t.timeout(90_000);
  const db = await createTestDatabase(t);
  const catalog = await startCatalog(parseConfig(catalogSettings, { DATABASE_URL: db.url, PORT: '0' }), '127.0.0.1');
  t.teardown(() => catalog.close(500));
  const port = Number(catalog.server.address.split(':').at(-1));
  const env = { DATABASE_URL: db.url, NATS_URL: testNatsUrl(), NATS_SUBJECT_PREFIX: testNatsPrefix().subjectPrefix, LOG_LEVEL: 'warn' };
  const err = await t.throwsAsync(startStack({ services: ['inventory'], ports: { inventory: port }, env, readyTimeoutMs: 60_000 }));
  t.regex(err!.message, /inventory exited .* before it was ready; see (\S+)/);
  const logFile = /see (\S+)$/.exec(err!.message)![1];
  t.regex(readFileSync(logFile, 'utf8'), /EADDRINUSE/);
});
