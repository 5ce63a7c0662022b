/**
 * `npm test`: finds (or starts) the servers the suite needs, then runs ava.
 * Extra arguments go to ava, e.g. `npm test -- services/catalog`.
 */
import { spawn } from 'node:child_process';
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
  const ava = spawn(process.execPath, ['node_modules/ava/entrypoints/cli.mjs', ...process.argv.slice(2)], {
    stdio: 'inherit',
    env: { ...process.env, DATABASE_URL: databaseUrl, NATS_URL: nats.url },
  });
  const forward = (signal: NodeJS.Signals) => ava.kill(signal);
  process.on('SIGINT', forward);
  process.on('SIGTERM', forward);
  const code = await new Promise<number>((resolve) => ava.on('exit', (c, s) => resolve(c ?? (s ? 1 : 0))));
  await nats.child?.stop();
  return code;
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
