// The echo service as a process (tests that kill their upstream; benchmarks).
import { startEcho } from "./harness.js";

const port = Number(process.env.PORT ?? 5099);
const server = await startEcho(undefined, port);
process.stdout.write(`echo listening on ${server.port}\n`);
const stop = () => void server.close(1000).then(() => process.exit(0));
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
