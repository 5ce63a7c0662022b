/**
 * Graceful shutdown on SIGTERM / SIGINT: run the registered closers in
 * reverse order of registration (register the database first and the server
 * last, so the server stops taking calls and drains before the database
 * closes), each bounded in time, then exit 0.
 *
 * API
 *   createShutdown(options?): Shutdown
 *     options.timeoutMs   bound for all closers together; 15 s (Kubernetes gives 30 s)
 *     options.signals     default ["SIGTERM", "SIGINT"]
 *     options.exit        call process.exit when done; default true
 *     options.log         (line: object) => void; default one JSON line on stderr
 *   Shutdown
 *     add(name, closer: () => unknown | Promise<unknown>): void
 *     listen(): void          install the signal handlers
 *     run(reason): Promise<number>   run closers now; resolves the exit code (0 ok, 1 a closer failed)
 *
 * Typical wiring (main.ts):
 *   const shutdown = createShutdown();
 *   shutdown.add("db", () => db.close());
 *   shutdown.add("nats", () => nc.drain());
 *   shutdown.add("clients", closeMeshClients);
 *   shutdown.add("grpc", () => server.close(10_000));
 *   shutdown.listen();
 * A second signal while closing exits at once with code 1.
 */

export type Closer = () => unknown | Promise<unknown>;

export interface ShutdownOptions {
  timeoutMs?: number;
  signals?: NodeJS.Signals[];
  exit?: boolean;
  log?: (line: Record<string, unknown>) => void;
}

export interface Shutdown {
  add(name: string, closer: Closer): void;
  listen(): void;
  run(reason: string): Promise<number>;
}

function defaultLog(line: Record<string, unknown>): void {
  process.stderr.write(JSON.stringify({ time: new Date().toISOString(), ...line }) + "\n");
}

export function createShutdown(options: ShutdownOptions = {}): Shutdown {
  const closers: { name: string; closer: Closer }[] = [];
  const log = options.log ?? defaultLog;
  const timeoutMs = options.timeoutMs ?? 15_000;
  let running: Promise<number> | undefined;

  async function closeAll(reason: string): Promise<number> {
    log({ level: "info", msg: "shutting down", reason });
    const deadline = Date.now() + timeoutMs;
    let code = 0;
    for (const { name, closer } of [...closers].reverse()) {
      const left = Math.max(0, deadline - Date.now());
      let timer: NodeJS.Timeout | undefined;
      try {
        await Promise.race([
          Promise.resolve().then(closer),
          new Promise((_, reject) => {
            timer = setTimeout(() => reject(new Error(`did not close within ${timeoutMs} ms`)), left);
          }),
        ]);
        log({ level: "info", msg: "closed", closer: name });
      } catch (e) {
        code = 1;
        log({ level: "error", msg: "close failed", closer: name, err: e instanceof Error ? e.message : String(e) });
      } finally {
        clearTimeout(timer);
      }
    }
    log({ level: "info", msg: "shut down", code });
    return code;
  }

  const shutdown: Shutdown = {
    add(name, closer) {
      closers.push({ name, closer });
    },
    run(reason) {
      running ??= closeAll(reason).then((code) => {
        if (options.exit ?? true) process.exit(code);
        return code;
      });
      return running;
    },
    listen() {
      for (const signal of options.signals ?? ["SIGTERM", "SIGINT"]) {
        process.on(signal, () => {
          if (running) {
            log({ level: "warn", msg: "second signal, exiting now", signal });
            process.exit(1);
          }
          void shutdown.run(signal);
        });
      }
    },
  };
  return shutdown;
}
