/**
 * `make dev`: the whole shop on one machine, from a fresh clone.
 *
 *   1. NATS: NATS_URL when set; otherwise a nats-server child with JetStream,
 *      its store in .data/nats (installed from Debian when missing and we can).
 *   2. Data: DATABASE_URL when set; otherwise each service keeps its data in
 *      embedded PGlite under .data/<context>.
 *   3. Builds the storefront when it is missing or stale; the services seed the
 *      catalog, stock and the admin account as they start (idempotent).
 *   4. Starts the six services and the gateway, one readable line each as it
 *      becomes ready, then prints where to look.
 *   Ctrl-C stops everything, children included; the next run keeps the data.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { servicePorts } from '../mesh/config.js';
import { canConnect, startNatsServer, type NatsChild } from './infra.js';
import { ROOT, SHOP_SERVICES, startGateway, startStack, type RunningGateway, type Stack } from './stack.js';

const started = Date.now();
const DATA_DIR = path.resolve(ROOT, process.env.DATA_DIR ?? '.data');
const GATEWAY_PORT = Number(process.env.GATEWAY_PORT ?? 8080);
const colors = [36, 33, 35, 32, 34, 31, 90];
const width = Math.max(...[...SHOP_SERVICES, 'gateway', 'nats', 'dev'].map((n) => n.length));

function say(name: string, text: string, color = 90): void {
  const tag = process.stdout.isTTY ? `\x1b[${color}m${name.padEnd(width)}\x1b[0m` : name.padEnd(width);
  console.log(`${tag} | ${text}`);
}

/** JSON log lines from the services, shown as "level msg" with the useful fields. */
function readable(line: string): string | undefined {
  if (!line.startsWith('{')) return line;
  try {
    const rec = JSON.parse(line) as Record<string, unknown>;
    const level = typeof rec.level === 'string' ? rec.level : String(rec.level ?? '');
    if (process.env.DEV_VERBOSE !== '1' && (level === 'debug' || level === 'trace' || level === '20' || level === '10')) return undefined;
    const extra = ['method', 'code', 'err', 'error', 'address', 'port']
      .filter((k) => rec[k] !== undefined)
      .map((k) => `${k}=${typeof rec[k] === 'object' ? JSON.stringify(rec[k]) : rec[k]}`)
      .join(' ');
    return `${level === 'info' || level === '30' ? '' : `${level} `}${rec.msg ?? ''}${extra ? ` ${extra}` : ''}`;
  } catch {
    return line;
  }
}

async function ensureNats(): Promise<{ url: string; child?: NatsChild }> {
  if (process.env.NATS_URL) return { url: process.env.NATS_URL };
  if (spawnSync('nats-server', ['--version']).error) {
    if (process.getuid?.() === 0 && existsSync('/usr/bin/apt-get')) {
      say('nats', 'nats-server not found: installing Debian package nats-server');
      const res = spawnSync('apt-get', ['install', '-y', 'nats-server'], { stdio: 'inherit' });
      if (res.status !== 0) throw new Error('could not install nats-server: run `sudo apt-get install -y nats-server` or set NATS_URL');
    } else {
      throw new Error('nats-server is not installed: run `sudo apt-get install -y nats-server` or set NATS_URL');
    }
  }
  // 4222 when free; another port when something (a system NATS) already has it.
  const port = (await canConnect('127.0.0.1', 4222, 300)) ? undefined : 4222;
  const child = await startNatsServer(path.join(DATA_DIR, 'nats'), port);
  return { url: child.url, child };
}

function newestMtime(dir: string): number {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, entry.name);
    newest = Math.max(newest, entry.isDirectory() ? newestMtime(p) : statSync(p).mtimeMs);
  }
  return newest;
}

function buildStorefront(): void {
  const dist = path.join(ROOT, 'web', 'dist', 'index.html');
  const stale =
    !existsSync(dist) ||
    statSync(dist).mtimeMs < Math.max(newestMtime(path.join(ROOT, 'web', 'src')), newestMtime(path.join(ROOT, 'gen')));
  if (!stale) return;
  say('web', 'building the storefront (vite build)');
  const res = spawnSync(process.execPath, [path.join(ROOT, 'node_modules', 'vite', 'bin', 'vite.js'), 'build', 'web', '--logLevel', 'error'], {
    cwd: ROOT,
    stdio: 'inherit',
  });
  if (res.status !== 0) throw new Error('the storefront did not build: see the output above');
}

async function main(): Promise<void> {
  mkdirSync(DATA_DIR, { recursive: true });
  let stack: Stack | undefined;
  let gateway: RunningGateway | undefined;
  let nats: NatsChild | undefined;
  let stopping = false;

  const shutdown = async (code: number) => {
    if (stopping) return;
    stopping = true;
    say('dev', 'stopping…');
    await gateway?.stop();
    await stack?.stop(8000);
    await nats?.stop();
    say('dev', 'stopped; data kept in ' + path.relative(ROOT, DATA_DIR));
    process.exit(code);
  };
  process.on('SIGINT', () => void shutdown(0));
  process.on('SIGTERM', () => void shutdown(0));

  try {
    // A port that already answers is another shop (a second `make dev`?): its health checks
    // would pass for ours, so refuse instead of reporting a shop that is not ours.
    for (const [name, port] of [...Object.entries(servicePorts), ['gateway', GATEWAY_PORT] as const]) {
      if (await canConnect('127.0.0.1', Number(port), 300)) {
        throw new Error(`port ${port} (${name}) is already in use: is another \`make dev\` running? Stop it, or free the port`);
      }
    }
    const found = await ensureNats();
    nats = found.child;
    say('nats', `${found.child ? 'started' : 'using'} ${found.url}${found.child ? ` (JetStream store ${path.relative(ROOT, DATA_DIR)}/nats)` : ''}`, colors[6]);
    const env: Record<string, string | undefined> = {
      NATS_URL: found.url,
      DATA_DIR,
      DATABASE_URL: process.env.DATABASE_URL,
      LOG_LEVEL: process.env.LOG_LEVEL ?? 'info',
    };
    say('dev', process.env.DATABASE_URL ? 'data: Postgres at DATABASE_URL' : `data: embedded PGlite under ${path.relative(ROOT, DATA_DIR)}/<context>`);
    buildStorefront();

    stack = await startStack({
      env,
      // Each service seeds its own data as it starts (idempotent): no second process has to
      // open the same embedded PGlite directory first.
      serviceEnv: { catalog: { SEED_CATALOG: 'true' }, inventory: { SEED_INVENTORY: 'true' }, user: { SEED_ADMIN: 'true' } },
      ports: servicePorts,
      logDir: path.join(DATA_DIR, 'logs'),
      // A first start on embedded PGlite initialises a data directory per context: slow on a busy machine.
      readyTimeoutMs: 120_000,
      onLine: (name, line) => {
        const text = readable(line);
        if (text) say(name, text, colors[SHOP_SERVICES.indexOf(name as never)]);
      },
    });
    for (const name of SHOP_SERVICES) say(name, `ready on ${stack.addr(name)}`, colors[SHOP_SERVICES.indexOf(name)]);

    gateway = await startGateway(stack, {
      env: { ...env, STATIC_DIR: path.join(ROOT, 'web', 'dist') },
      port: GATEWAY_PORT,
      onLine: (line) => {
        const text = readable(line);
        if (text) say('gateway', text, colors[6]);
      },
    });
    gateway.process.on('exit', (code) => {
      if (!stopping) {
        say('gateway', `exited with code ${code}`);
        void shutdown(1);
      }
    });
    say('gateway', `ready on http://localhost:${GATEWAY_PORT}`, colors[6]);

    const seconds = ((Date.now() - started) / 1000).toFixed(1);
    console.log(`
  protomesh shop is up (${seconds} s)

  storefront   http://localhost:${GATEWAY_PORT}/
  REST         curl http://localhost:${GATEWAY_PORT}/v1/products?pageSize=3
  OpenAPI      http://localhost:${GATEWAY_PORT}/openapi.json
  gRPC         grpcurl -plaintext localhost:${GATEWAY_PORT} list
               grpcurl -plaintext -d '{"sku":"COF-ETH-YIRG"}' localhost:${servicePorts.catalog} shop.catalog.v1.CatalogService/GetProduct
  admin        admin@shop.test / admin-dev-password (ADMIN_PASSWORD overrides)
  logs         ${path.relative(ROOT, path.join(DATA_DIR, 'logs'))}/<service>.log

  Ctrl-C stops everything; data stays in ${path.relative(ROOT, DATA_DIR)}/.
`);
    for (const name of SHOP_SERVICES) {
      stack.running.get(name)?.process.on('exit', (code, signal) => {
        if (!stopping) say(name, `exited (${code ?? signal}); see ${path.relative(ROOT, stack!.logDir)}/${name}.log`);
      });
    }
  } catch (err) {
    say('dev', `error: ${err instanceof Error ? err.message : String(err)}`, 31);
    await shutdown(1);
  }
}

void main();
