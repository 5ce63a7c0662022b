// Test support: an echo upstream (in-process or as a child process that a
// test can kill) and a gateway in front of it.
import { spawn, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import { SignJWT } from "jose";
import { EchoService } from "../../gen/protomesh/testing/v1/echo_pb.js";
import { serve, startMeshServer, type MeshServer } from "../../mesh/server.js";
import type { GatewayConfig } from "../config.js";
import { startGateway, type Gateway, type GatewayOptions } from "../server.js";
import { createEchoImpl, type EchoState } from "./echo-service.js";

export const testJwt = { secret: "gateway-test-secret-0123456789-abcdef", issuer: "protomesh", audience: "protomesh-shop" };

export function token(sub: string, role: "user" | "admin", o: { exp?: string | number } = {}): Promise<string> {
  return new SignJWT({ role })
    .setProtectedHeader({ alg: "HS256" })
    .setSubject(sub)
    .setIssuer(testJwt.issuer)
    .setAudience(testJwt.audience)
    .setExpirationTime(o.exp ?? "1h")
    .sign(new TextEncoder().encode(testJwt.secret));
}

export async function startEcho(state?: EchoState, port = 0): Promise<MeshServer> {
  return startMeshServer({
    name: "echo",
    host: "127.0.0.1",
    port,
    services: [serve(EchoService, createEchoImpl(state))],
    // INTERNAL and UNKNOWN are asked for on purpose here: no stack traces.
    onInternalError: () => {},
  });
}

export async function startEchoGateway(
  upstreamPort: number,
  o: Partial<GatewayOptions> & { config?: GatewayConfig } = {},
): Promise<Gateway> {
  const gw = await startGateway(
    { services: [EchoService], upstreams: { echo: `127.0.0.1:${upstreamPort}` }, jwt: testJwt, ...o },
    0,
    "127.0.0.1",
  );
  // Open the upstream channel before the tests: a cold grpc-js channel can
  // take longer than the short method timeouts the tests exercise.
  await fetch(`${gw.url}/v1/echo/warm-up`).then((r) => r.text()).catch(() => undefined);
  return gw;
}


/** The echo service in its own process, so a test can kill it. */
export async function spawnEcho(port: number): Promise<ChildProcess> {
  const main = fileURLToPath(new URL("./echo-main.ts", import.meta.url));
  const child = spawn(process.execPath, ["--import", "tsx", main], {
    env: { ...process.env, PORT: String(port), LOG_LEVEL: "silent" },
    stdio: ["ignore", "pipe", "inherit"],
  });
  await new Promise<void>((resolve, reject) => {
    child.once("exit", (c) => reject(new Error(`echo exited with ${c}`)));
    child.stdout!.on("data", (d: Buffer) => {
      if (d.toString().includes("listening")) resolve();
    });
  });
  return child;
}

export { freePort } from "../../mesh/net.js";
