import { createServer } from 'node:net';

/**
 * A TCP port that was free a moment ago on 127.0.0.1. Prefer listening on port
 * 0 and reading the bound port when the code under test allows it; use this
 * only when a port must be known before the process that binds it starts.
 */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}
