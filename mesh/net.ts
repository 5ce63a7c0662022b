/** Small TCP helpers shared by the gateway's readiness, the dev/test scripts, tests and benches. */
import { readFileSync } from 'node:fs';
import net from 'node:net';

/** True when a TCP connection to host:port opens within `timeoutMs`. */
export function canConnect(host: string, port: number, timeoutMs = 1500): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

/**
 * A TCP port that was free a moment ago. Prefer listening on port 0 and reading the bound port
 * when the code under test allows it; use this only when a port must be known before the
 * process that binds it starts.
 *
 * On Linux it is picked below the kernel's ephemeral range (ip_local_port_range): a port from
 * that range, free when checked, can be handed to an outgoing connection (to Postgres, NATS,
 * another service) before the process meant to listen on it binds it, and that process then
 * fails with EADDRINUSE. A CI run saw exactly that. Below the range, only another listener can
 * take it in between. Elsewhere, or if no port there is free, the kernel picks (port 0).
 */
export async function freePort(): Promise<number> {
  const ephemeralLow = ephemeralRangeStart();
  if (ephemeralLow !== undefined && ephemeralLow > 11_024) {
    const low = ephemeralLow - 10_000;
    for (let attempt = 0; attempt < 50; attempt++) {
      const port = low + Math.floor(Math.random() * (ephemeralLow - low));
      if (await bindable(port)) return port;
    }
  }
  return listenOnce(0);
}

/** The first port of the kernel's ephemeral range, on Linux. */
function ephemeralRangeStart(): number | undefined {
  try {
    const low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
    return Number.isInteger(low) && low > 0 ? low : undefined;
  } catch {
    return undefined;
  }
}

/** Whether `port` can be listened on, on every interface (as the services do), right now. */
function bindable(port: number): Promise<boolean> {
  return listenOnce(port).then(
    () => true,
    () => false,
  );
}

/** Listens on `port` (0: any), closes again, and resolves the port it had. */
function listenOnce(port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.once('error', reject);
    server.listen(port, () => {
      const address = server.address();
      const bound = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(bound));
    });
  });
}
