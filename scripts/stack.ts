/**
 * Starts the shop as child processes, one per service (and optionally the
 * gateway), and waits until each answers gRPC health SERVING.
 *
 * The dev command (scripts/dev.ts) and the end-to-end tests (test/) use it, so
 * both run the services exactly as production would: `node --import tsx
 * services/<name>/main.ts`, configured only through environment variables.
 *
 *   const stack = await startStack({ env: { DATABASE_URL, NATS_URL, NATS_SUBJECT_PREFIX } });
 *   stack.addr('order')            // "127.0.0.1:41234"
 *   await stack.kill('order')      // SIGKILL, as a crash
 *   await stack.start('order')     // same port, same env
 *   await stack.stop()             // SIGTERM everything, wait for exit
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, type WriteStream } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { create, fromBinary, toBinary } from '@bufbuild/protobuf';
import {
  HealthCheckRequestSchema,
  HealthCheckResponseSchema,
  HealthCheckResponse_ServingStatus,
} from '../gen/grpc/health/v1/health_pb.js';
import { freePort } from './infra.js';
import { CatalogService } from '../gen/shop/catalog/v1/catalog_pb.js';
import { InventoryService } from '../gen/shop/inventory/v1/inventory_pb.js';
import { NotificationService } from '../gen/shop/notification/v1/notification_pb.js';
import { OrderService } from '../gen/shop/order/v1/order_pb.js';
import { PaymentService } from '../gen/shop/payment/v1/payment_pb.js';
import { UserService } from '../gen/shop/user/v1/user_pb.js';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
/** Loaded before each process's code: OpenTelemetry (gRPC/HTTP spans), /metrics, log trace ids. */
const TELEMETRY = pathToFileURL(path.join(ROOT, 'mesh', 'telemetry', 'register.ts')).href;
/**
 * Extra node flags for every service child, split on spaces: STACK_NODE_FLAGS='--cpu-prof
 * --cpu-prof-dir=/tmp/prof' profiles each process of a bench (node refuses --cpu-prof in NODE_OPTIONS).
 */
const NODE_FLAGS = (process.env.STACK_NODE_FLAGS ?? '').split(' ').filter(Boolean);

/** The shop's services. */
export const SHOP_SERVICES = ['catalog', 'inventory', 'payment', 'user', 'notification', 'order'] as const;
export type ShopService = (typeof SHOP_SERVICES)[number];

/** The environment variable through which other processes find a service. */
export function addrVariable(name: ShopService): string {
  return `${name.toUpperCase()}_ADDR`;
}

export interface StackOptions {
  /** Services to run; all six by default. */
  services?: readonly ShopService[];
  /** Environment for every child (DATABASE_URL, NATS_URL, NATS_SUBJECT_PREFIX, ...). */
  env?: Record<string, string | undefined>;
  /** Extra environment per service (e.g. { order: { SAGA_CRASH_AFTER: 'reserve' } }). */
  serviceEnv?: Partial<Record<ShopService, Record<string, string>>>;
  /** Fixed ports (the dev command); free ports are chosen when absent. */
  ports?: Partial<Record<ShopService, number>>;
  /** Where each child's output goes: a directory of <name>.log files (default: a temp dir). */
  logDir?: string;
  /** Called with each line a child prints (the dev command prefixes and shows them). */
  onLine?: (name: string, line: string) => void;
  /** How long to wait for a service to report SERVING. */
  readyTimeoutMs?: number;
}

export interface RunningService {
  name: ShopService;
  port: number;
  process: ChildProcess;
}

export interface Stack {
  /** host:port of a running service. */
  addr(name: ShopService): string;
  /** Environment naming every service's address (what another process needs to find them). */
  readonly addrs: Record<string, string>;
  /** Directory holding <name>.log for every child. */
  readonly logDir: string;
  /** Starts (or restarts) one service with the same port and env, waiting for SERVING. */
  start(name: ShopService, extraEnv?: Record<string, string>): Promise<RunningService>;
  /** Sends a signal (SIGKILL by default: a crash) and waits for the process to exit. */
  kill(name: ShopService, signal?: NodeJS.Signals): Promise<number | null>;
  /** Stops every child with SIGTERM (SIGKILL after `graceMs`) and waits. */
  stop(graceMs?: number): Promise<void>;
  readonly running: ReadonlyMap<ShopService, RunningService>;
}

/** Asks grpc.health.v1 Check once; resolves the serving status or undefined when unreachable. */
export function checkHealth(address: string, service = '', timeoutMs = 1000): Promise<HealthCheckResponse_ServingStatus | undefined> {
  const client = new grpc.Client(address, grpc.credentials.createInsecure());
  return new Promise((resolve) => {
    client.makeUnaryRequest(
      '/grpc.health.v1.Health/Check',
      (m: ReturnType<typeof create<typeof HealthCheckRequestSchema>>) => Buffer.from(toBinary(HealthCheckRequestSchema, m)),
      (b: Buffer) => fromBinary(HealthCheckResponseSchema, b),
      create(HealthCheckRequestSchema, { service }),
      { deadline: Date.now() + timeoutMs },
      (err, res) => {
        client.close();
        resolve(err || !res ? undefined : res.status);
      },
    );
  });
}

/**
 * The gRPC service each process serves. Readiness asks health about it by name, not about
 * the server as a whole (""): a port chosen free can be taken by another listener before the
 * child binds it (another service of this stack, another test's), and that listener's health
 * would answer SERVING for "" while the child dies of EADDRINUSE. Asked by name, a listener
 * that is not this service answers NOT_FOUND, and the child's exit is reported instead.
 */
const SERVED: Record<ShopService, string> = {
  catalog: CatalogService.typeName,
  inventory: InventoryService.typeName,
  payment: PaymentService.typeName,
  user: UserService.typeName,
  notification: NotificationService.typeName,
  order: OrderService.typeName,
};

/** Polls health until SERVING; rejects with the child's exit or a timeout. */
async function waitServing(name: ShopService, address: string, child: ChildProcess, timeoutMs: number, logFile: string): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`${name} exited (${child.exitCode ?? child.signalCode}) before it was ready; see ${logFile}`);
    }
    if ((await checkHealth(address, SERVED[name], 500)) === HealthCheckResponse_ServingStatus.SERVING) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${name} was not SERVING at ${address} within ${timeoutMs} ms; see ${logFile}`);
}

export async function startStack(options: StackOptions = {}): Promise<Stack> {
  const names = options.services ?? SHOP_SERVICES;
  const logDir = options.logDir ?? path.join(os.tmpdir(), `protomesh-stack-${process.pid}-${Date.now()}`);
  mkdirSync(logDir, { recursive: true });
  const ports = new Map<ShopService, number>();
  for (const name of SHOP_SERVICES) {
    // Distinct: the kernel may hand the same free port to two consecutive asks.
    let port = options.ports?.[name] ?? (await freePort());
    while (!options.ports?.[name] && [...ports.values()].includes(port)) port = await freePort();
    ports.set(name, port);
  }
  const addrs: Record<string, string> = {};
  for (const [name, port] of ports) addrs[addrVariable(name)] = `127.0.0.1:${port}`;

  const running = new Map<ShopService, RunningService>();
  const logs = new Map<ShopService, WriteStream>();

  const start = async (name: ShopService, extraEnv: Record<string, string> = {}): Promise<RunningService> => {
    const existing = running.get(name);
    if (existing && existing.process.exitCode === null && existing.process.signalCode === null) {
      throw new Error(`${name} is already running`);
    }
    const port = ports.get(name)!;
    const logFile = path.join(logDir, `${name}.log`);
    let log = logs.get(name);
    if (!log) {
      log = createWriteStream(logFile, { flags: 'a' });
      logs.set(name, log);
    }
    const child = spawn(process.execPath, [...NODE_FLAGS, '--import', 'tsx', '--import', TELEMETRY, path.join(ROOT, 'services', name, 'main.ts')], {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: {
        ...process.env,
        ...addrs,
        ...options.env,
        ...options.serviceEnv?.[name],
        ...extraEnv,
        PORT: String(port),
      },
    });
    const sink = log;
    for (const stream of [child.stdout!, child.stderr!]) {
      let buffered = '';
      stream.on('data', (chunk: Buffer) => {
        sink.write(chunk);
        if (!options.onLine) return;
        buffered += chunk.toString('utf8');
        let nl: number;
        while ((nl = buffered.indexOf('\n')) >= 0) {
          options.onLine(name, buffered.slice(0, nl));
          buffered = buffered.slice(nl + 1);
        }
      });
    }
    const service = { name, port, process: child };
    running.set(name, service);
    await waitServing(name, `127.0.0.1:${port}`, child, options.readyTimeoutMs ?? 30_000, logFile);
    return service;
  };

  const kill = async (name: ShopService, signal: NodeJS.Signals = 'SIGKILL'): Promise<number | null> => {
    const service = running.get(name);
    if (!service) return null;
    const child = service.process;
    if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    child.kill(signal);
    return exited;
  };

  const stop = async (graceMs = 10_000): Promise<void> => {
    await Promise.all(
      [...running.values()].map(async ({ name, process: child }) => {
        if (child.exitCode !== null || child.signalCode !== null) return;
        const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
        await kill(name, 'SIGTERM');
        clearTimeout(timer);
      }),
    );
    await Promise.all([...logs.values()].map((log) => new Promise((r) => log.end(r))));
  };

  try {
    // All together: a service's clients connect lazily and its calls retry UNAVAILABLE, so
    // none needs another to be up first (the order saga simply waits for its upstreams).
    await Promise.all(names.map((name) => start(name)));
  } catch (err) {
    await stop(2000);
    throw err;
  }

  return {
    addr: (name) => `127.0.0.1:${ports.get(name)}`,
    addrs,
    logDir,
    start,
    kill,
    stop,
    running,
  };
}

export interface RunningGateway {
  url: string;
  port: number;
  process: ChildProcess;
  stop(): Promise<void>;
}

/**
 * Starts gateway/main.ts in front of a running stack and waits for /readyz.
 * The gateway finds each upstream through the same <NAME>_ADDR variables.
 */
export async function startGateway(stack: Stack, options: {
  env?: Record<string, string | undefined>;
  port?: number;
  onLine?: (line: string) => void;
  readyTimeoutMs?: number;
} = {}): Promise<RunningGateway> {
  const port = options.port ?? (await freePort());
  const logFile = path.join(stack.logDir, 'gateway.log');
  const log = createWriteStream(logFile, { flags: 'a' });
  const child = spawn(process.execPath, ['--import', 'tsx', '--import', TELEMETRY, path.join(ROOT, 'gateway', 'main.ts')], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...stack.addrs, ...options.env, PORT: String(port) },
  });
  for (const stream of [child.stdout!, child.stderr!]) {
    let buffered = '';
    stream.on('data', (chunk: Buffer) => {
      log.write(chunk);
      if (!options.onLine) return;
      buffered += chunk.toString('utf8');
      let nl: number;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        options.onLine(buffered.slice(0, nl));
        buffered = buffered.slice(nl + 1);
      }
    });
  }
  const url = `http://127.0.0.1:${port}`;
  const until = Date.now() + (options.readyTimeoutMs ?? 30_000);
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`the gateway exited (${child.exitCode ?? child.signalCode}) before it was ready; see ${logFile}`);
    }
    if (await fetch(`${url}/readyz`).then((r) => r.ok, () => false)) break;
    if (Date.now() > until) {
      child.kill('SIGKILL');
      throw new Error(`the gateway was not ready at ${url}/readyz in time; see ${logFile}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    url,
    port,
    process: child,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        const timer = setTimeout(() => child.kill('SIGKILL'), 8000);
        child.kill('SIGTERM');
        await exited;
        clearTimeout(timer);
      }
      await new Promise((r) => log.end(r));
    },
  };
}

/**
 * Runs every services/<name>/seed.ts that exists, in parallel (each touches
 * only its own context's data), with the given environment. Seeds are
 * idempotent, so running them on every start is safe.
 */
export async function runSeeds(env: NodeJS.ProcessEnv, onDone?: (name: string, lastLine: string) => void): Promise<void> {
  const seeds = SHOP_SERVICES.filter((name) => existsSync(path.join(ROOT, 'services', name, 'seed.ts')));
  await Promise.all(
    seeds.map(
      (name) =>
        new Promise<void>((resolve, reject) => {
          const child = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'services', name, 'seed.ts')], {
            cwd: ROOT,
            env,
            stdio: ['ignore', 'pipe', 'pipe'],
          });
          let out = '';
          child.stdout!.on('data', (c) => (out += c));
          child.stderr!.on('data', (c) => (out += c));
          child.on('exit', (code) => {
            if (code !== 0) return reject(new Error(`seeding ${name} failed (exit ${code}):\n${out}`));
            onDone?.(name, out.trim().split('\n').pop() ?? '');
            resolve();
          });
        }),
    ),
  );
}
