// The process around the app (mesh/app runServiceMain): a catalog that cannot start
// exits 1 with one fatal line saying so, instead of hanging or dying with a stack trace.
import test from 'ava';
import { spawn } from 'node:child_process';
import { freePort } from '../../mesh/testing/index.js';

const root = new URL('../..', import.meta.url).pathname;

test('a start that fails (no database listening) exits 1 with one "catalog failed to start" line', async (t) => {
  t.timeout(60_000);
  const deadPort = await freePort(); // nothing listens there
  const env: NodeJS.ProcessEnv = { ...process.env, PORT: '0', DATABASE_URL: `postgres://root@127.0.0.1:${deadPort}/none` };
  const child = spawn(process.execPath, ['--import=tsx', 'services/catalog/main.ts'], { cwd: root, env, stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  let output = '';
  child.stdout.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr.on('data', (d: Buffer) => (output += d.toString()));
  const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
  t.is(code, 1, output);
  const fatal = output
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as { level?: string; msg?: string })
    .filter((l) => l.level === 'fatal');
  t.is(fatal.length, 1, output);
  t.is(fatal[0]!.msg, 'catalog failed to start');
  t.notRegex(output, /listening/);
});
