/**
 * `npm test`: finds (or starts) the servers the suite needs, then runs ava in
 * two passes: the module, service and bench-helper tests (two files at a time), then the
 * end-to-end tests in test/ one file at a time (each starts the whole shop as
 * child processes; two at once on a 2-core machine only slows both down and
 * crowds Postgres' connection limit). Extra arguments go to a single ava run,
 * e.g. `npm test -- services/catalog`.
 */
import { spawn } from 'node:child_process';
import { dropLeftoverTestDatabases, dropLeftoverTestStreams } from '../mesh/testing/index.js';
import { ensureNats, ensurePostgres, InfraError } from './infra.js';

async function main(): Promise<number> {
  let databaseUrl: string;
  let nats: Awaited<ReturnType<typeof ensureNats>>;
  try {
    databaseUrl = await ensurePostgres();
    nats = await ensureNats();
  } catch (err) {
    if (err instanceof InfraError) {
      console.error(`test: ${err.message}`);
      return 2;
    }
    throw err;
  }
  console.log(`test: Postgres at ${redact(databaseUrl)}, NATS at ${nats.url}${nats.child ? ' (started for this run)' : ''}`);
  const env = { ...process.env, DATABASE_URL: databaseUrl, NATS_URL: nats.url };
  // Leftovers of killed runs (over an hour old) would only crowd the servers.
  process.env.DATABASE_URL = databaseUrl;
  const [dbs, streams] = await Promise.all([
    dropLeftoverTestDatabases(60).catch(() => []),
    dropLeftoverTestStreams(nats.url, 60).catch(() => []),
  ]);
  if (dbs.length + streams.length > 0) console.log(`test: removed ${dbs.length} leftover test databases and ${streams.length} leftover test streams`);
  const extra = process.argv.slice(2);
  const passes = extra.length > 0 ? [extra] : [['mesh', 'services', 'gateway', 'bench'], ['test', '--concurrency=1']];
  let code = 0;
  for (const args of passes) {
    const passCode = await runAva(args, env);
    if (passCode !== 0) code = passCode;
    if (stopping) break;
  }
  await nats.child?.stop();
  return code;
}

let stopping = false;

function runAva(args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const started = Date.now();
  console.log(`test: ava ${args.join(' ')}`);
  const ava = spawn(process.execPath, ['node_modules/ava/entrypoints/cli.mjs', ...args], { stdio: 'inherit', env });
  const forward = (signal: NodeJS.Signals) => {
    stopping = true;
    ava.kill(signal);
  };
  process.on('SIGINT', forward);
  process.on('SIGTERM', forward);
  return new Promise<number>((resolve) =>
    ava.on('exit', (c, s) => {
      process.off('SIGINT', forward);
      process.off('SIGTERM', forward);
      console.log(`test: ava ${args.join(' ')} finished in ${((Date.now() - started) / 1000).toFixed(0)} s (exit ${c ?? s})`);
      resolve(c ?? (s ? 1 : 0));
    }),
  );
}

function redact(url: string): string {
  const u = new URL(url);
  if (u.password) u.password = '***';
  return u.toString();
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
