/**
 * Finds the two servers the tests and the dev command need, Postgres and NATS
 * with JetStream, and starts what it can when they are missing:
 *
 *   - Postgres at DATABASE_URL (or postgres://root@127.0.0.1:5432/postgres).
 *     Not started here: a missing server gets one line saying how to get one.
 *   - NATS at NATS_URL (or nats://127.0.0.1:4222). When nothing answers and
 *     `nats-server` is on PATH, a child nats-server with JetStream is started
 *     on a free port with its store under .data/, and NATS_URL points at it.
 *
 * Used by scripts/test.ts; the dev command (scripts/dev.ts) has its own rules
 * (embedded PGlite when DATABASE_URL is unset).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { canConnect, freePort } from '../mesh/net.js';
import path from 'node:path';

export const DEFAULT_DATABASE_URL = 'postgres://root@127.0.0.1:5432/postgres';
export const DEFAULT_NATS_URL = 'nats://127.0.0.1:4222';

export { canConnect, freePort } from '../mesh/net.js';

function hostPort(url: string, defaultPort: number): { host: string; port: number } {
  const u = new URL(url);
  return { host: u.hostname || '127.0.0.1', port: Number(u.port || defaultPort) };
}

export class InfraError extends Error {}

/** Checks Postgres; throws InfraError with one line of advice when it is not there. */
export async function ensurePostgres(env: NodeJS.ProcessEnv = process.env): Promise<string> {
  const url = env.DATABASE_URL || DEFAULT_DATABASE_URL;
  const { host, port } = hostPort(url, 5432);
  if (await canConnect(host, port)) return url;
  throw new InfraError(
    `Postgres is not reachable at ${host}:${port}: install and start it (Debian/Ubuntu: sudo apt-get install -y postgresql) or set DATABASE_URL`,
  );
}

/** A nats-server child started by ensureNats, stopped by stop(). */
export interface NatsChild {
  url: string;
  process: ChildProcess;
  stop(): Promise<void>;
}

/** Starts nats-server with JetStream on a free loopback port, store under `storeDir`. */
export async function startNatsServer(storeDir: string, port?: number): Promise<NatsChild> {
  mkdirSync(storeDir, { recursive: true });
  const chosen = port ?? (await freePort());
  const child = spawn('nats-server', ['-js', '-a', '127.0.0.1', '-p', String(chosen), '-sd', storeDir], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr?.on('data', (chunk) => (stderr += String(chunk)));
  const failed = new Promise<never>((_, reject) => {
    child.once('error', (err) =>
      reject(
        new InfraError(
          (err as NodeJS.ErrnoException).code === 'ENOENT'
            ? 'nats-server is not installed: sudo apt-get install -y nats-server (or set NATS_URL to a running NATS with JetStream)'
            : `nats-server failed to start: ${err.message}`,
        ),
      ),
    );
    child.once('exit', (code) => reject(new InfraError(`nats-server exited with code ${code}: ${stderr.trim().split('\n').pop()}`)));
  });
  const ready = (async () => {
    for (let i = 0; i < 100; i++) {
      if (await canConnect('127.0.0.1', chosen, 200)) return;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new InfraError(`nats-server did not listen on 127.0.0.1:${chosen} within 10 s`);
  })();
  await Promise.race([ready, failed]);
  failed.catch(() => {});
  return {
    url: `nats://127.0.0.1:${chosen}`,
    process: child,
    stop: () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.kill('SIGTERM');
      }),
  };
}

/** Finds NATS, or starts a child nats-server when none answers. */
export async function ensureNats(env: NodeJS.ProcessEnv = process.env, dataDir = '.data'): Promise<{ url: string; child?: NatsChild }> {
  const url = env.NATS_URL || DEFAULT_NATS_URL;
  const { host, port } = hostPort(url, 4222);
  if (await canConnect(host, port)) return { url };
  if (env.NATS_URL) throw new InfraError(`NATS is not reachable at NATS_URL=${url}: start it or unset NATS_URL`);
  const child = await startNatsServer(path.resolve(dataDir, 'nats-test'));
  return { url: child.url, child };
}
