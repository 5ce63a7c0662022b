/**
 * The edge gateway process: wiring only.
 *
 * Every service found in gen/ with public methods is exposed; its upstream
 * address comes from, in order:
 *   <NAME>_ADDR            e.g. CATALOG_ADDR=127.0.0.1:5002 (the name is the
 *                          service's (protomesh.v1.service).name, upper-cased)
 *   UPSTREAMS              e.g. "catalog=127.0.0.1:5002,order=10.0.0.7:5004"
 *   mesh/config servicePorts on 127.0.0.1 (one-machine default)
 * A service with no address is skipped with a warning.
 *
 * Other settings:
 *   PORT (8080)            one port: HTTP/1.1 and h2c; REST, Connect, gRPC-Web, gRPC
 *   GATEWAY_CONFIG         JSON or YAML policy overrides, hot-reloaded (see gateway/config.ts)
 *   GATEWAY_REPLICAS (1)   gateway replicas sharing each rate limit (each enforces 1/N)
 *   STATIC_DIR             files served for GET requests no route claims (the storefront)
 *   CORS_ORIGINS           comma-separated allowed origins (adds to the config file's)
 *   JWT_SECRET, JWT_ISSUER (protomesh), JWT_AUDIENCE (protomesh-shop)
 *   JWT_PUBLIC_KEY_FILE    verify RS/ES/EdDSA tokens with this PEM instead of a secret
 *   GATEWAY_EXPOSE_TESTING=1  also expose the test-only protomesh.testing services
 *   GATEWAY_UPSTREAM_CLIENT   h2 (default) | mesh (mesh/client, grpc-js) | connect
 *   GATEWAY_WORKERS (1)    processes sharing the port (node:cluster); each is a
 *                          replica for the rate-limit share (limit / (replicas x workers))
 *   NATS_URL               when set, runtime overrides from the mesh's NATS KV config bucket
 *                          (MESH_CONFIG_BUCKET, default mesh_config): timeout_ms, rate_limit,
 *                          breaker and log_level keys, applied within a second (live-overrides.ts)
 */
import cluster from "node:cluster";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { DEV_JWT_SECRET, jwtSettings, loadConfig, servicePorts } from "../mesh/config.js";
import { createLogger } from "../mesh/telemetry/logger.js";
import { defaultConfig, readConfigFile, withEnvironment, type GatewayConfig } from "./config.js";
import { describeService, loadServicesFromGen } from "./descriptors.js";
import { startGateway } from "./server.js";
import { overlayLiveValues, type MeshLiveConfig } from "./live-overrides.js";
import { liveConfigBucketFor, meshLiveSettings, startLiveConfig } from "../mesh/live-config.js";
import { normalizeSubjectPrefix } from "../mesh/events/naming.js";
import { connect, type NatsConnection } from "nats";
import { createGrpcTransport } from "@connectrpc/connect-node";

const log = createLogger({ component: "gateway" });
const env = process.env;


function upstreamAddress(name: string): string | undefined {
  const direct = env[`${name.toUpperCase().replace(/[^A-Z0-9]/g, "_")}_ADDR`];
  if (direct) return direct;
  for (const pair of (env.UPSTREAMS ?? "").split(",")) {
    const [k, v] = pair.split("=").map((s) => s.trim());
    if (k === name && v) return v;
  }
  const port = (servicePorts as Record<string, number>)[name];
  return port ? `127.0.0.1:${port}` : undefined;
}

/**
 * What the environment gets wrong, checked before anything starts (in the cluster primary
 * too: a worker that exits at start would be forked again and again): a bad GATEWAY_REPLICAS,
 * and a mesh:/// upstream, which the services' clients resolve through the NATS registry and
 * the edge's own HTTP/2 transport does not.
 */
function environmentProblem(): string | undefined {
  try {
    withEnvironment(defaultConfig, env);
  } catch (e) {
    return (e as Error).message;
  }
  // Every address given: <NAME>_ADDR variables and the pairs of UPSTREAMS.
  const given: [where: string, address: string][] = [
    ...Object.entries(env).flatMap(([k, v]): [string, string][] => (k.endsWith("_ADDR") && v ? [[k, v]] : [])),
    ...(env.UPSTREAMS ?? "").split(",").map((pair): [string, string] => [`UPSTREAMS ${pair.trim()}`, pair.split("=")[1]?.trim() ?? ""]),
  ];
  const mesh = given.find(([, address]) => address.startsWith("mesh:"));
  if (mesh) return `${mesh[0]}${mesh[0].startsWith("UPSTREAMS") ? "" : `=${mesh[1]}`}: the gateway dials host:port or dns:///host:port, not mesh:/// (that is for the services' clients)`;
  return undefined;
}

const problem = environmentProblem();
if (problem) {
  log.error(problem);
  process.exit(1);
}

const workers = Math.max(1, Number(env.GATEWAY_WORKERS ?? 1));

if (workers > 1 && cluster.isPrimary) {
  // The primary only supervises: workers share the listening port.
  let stopping = false;
  for (let i = 0; i < workers; i++) cluster.fork();
  cluster.on("exit", (w, code, signal) => {
    if (stopping) {
      if (Object.keys(cluster.workers ?? {}).length === 0) process.exit(0);
      return;
    }
    log.error({ pid: w.process.pid, code, signal }, "gateway worker exited; starting another");
    cluster.fork();
  });
  const stop = () => {
    stopping = true;
    for (const w of Object.values(cluster.workers ?? {})) w?.process.kill("SIGTERM");
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
} else {
  await runGateway();
}

async function runGateway(): Promise<void> {
  const genDir = fileURLToPath(new URL("../gen", import.meta.url));
  const exposeTesting = env.GATEWAY_EXPOSE_TESTING === "1";
  const all = await loadServicesFromGen(
    genDir,
    (typeName) => !typeName.startsWith("grpc.") && (exposeTesting || !typeName.startsWith("protomesh.testing.")),
  );
  const upstreams: Record<string, string> = {};
  const services = all.filter((s) => {
    const d = describeService(s);
    if (d.methods.length === 0) return false;
    const addr = upstreamAddress(d.upstream);
    if (!addr) {
      log.warn({ service: s.typeName, upstream: d.upstream }, `no address for upstream "${d.upstream}": not exposed`);
      return false;
    }
    upstreams[d.upstream] = addr;
    return true;
  });

  // The file (or the defaults) as written; the environment's part goes on in the overlay
  // below, so that a reloaded file keeps it.
  let config: GatewayConfig = defaultConfig;
  if (env.GATEWAY_CONFIG) config = readConfigFile(env.GATEWAY_CONFIG);

  // Live overrides: read before the gateway starts, so the first config already has them.
  let nats: NatsConnection | undefined;
  let live: MeshLiveConfig | undefined;
  if (env.NATS_URL) {
    nats = await connect({ servers: env.NATS_URL, name: "gateway", maxReconnectAttempts: -1 });
    live = await startLiveConfig(nats, meshLiveSettings, {
      bucket: liveConfigBucketFor(normalizeSubjectPrefix(env.NATS_SUBJECT_PREFIX ?? "")),
      service: "gateway",
    });
  }
  const exposedMethods = services.flatMap((s) => describeService(s).methods);

  // The same JWT_* declaration the user service signs with (mesh/config.ts).
  const jwtConfig = loadConfig(jwtSettings);
  if (jwtConfig.JWT_SECRET === DEV_JWT_SECRET && !env.JWT_PUBLIC_KEY_FILE) log.warn("JWT_SECRET unset: using the development default");
  const gateway = await startGateway(
    {
      services,
      upstreams,
      config,
      configPath: env.GATEWAY_CONFIG,
      staticDir: env.STATIC_DIR,
      overlay: (c) => {
        const withEnv = withEnvironment(c, env, workers);
        return live ? overlayLiveValues(withEnv, live, exposedMethods) : withEnv;
      },
      // Upstream client for REST, Connect and gRPC-Web calls: the gateway's
      // lean HTTP/2 transport (default), mesh/client ("mesh", grpc-js) or
      // connect-node's gRPC transport ("connect").
      transportFor:
        env.GATEWAY_UPSTREAM_CLIENT === "connect"
          ? (_name, target) => createGrpcTransport({ baseUrl: `http://${target}` })
          : env.GATEWAY_UPSTREAM_CLIENT === "mesh"
            ? "mesh"
            : undefined,
      jwt: {
        secret: env.JWT_PUBLIC_KEY_FILE ? undefined : jwtConfig.JWT_SECRET,
        publicKeyPem: env.JWT_PUBLIC_KEY_FILE ? readFileSync(env.JWT_PUBLIC_KEY_FILE, "utf8") : undefined,
        issuer: jwtConfig.JWT_ISSUER,
        audience: jwtConfig.JWT_AUDIENCE,
      },
    },
    Number(env.PORT ?? 8080),
    env.HOST ?? "0.0.0.0",
  );
  log.info({ upstreams }, `gateway ready on :${gateway.port}`);
  for (const family of ["timeout_ms", "rate_limit", "breaker"] as const) {
    live?.subscribe(family, (change) => {
      gateway.reapplyConfig();
      log.info({ key: change.key, op: change.op }, "live override applied");
    });
  }

  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, "gateway stopping");
    // Readiness turns 503 at once; calls in flight get up to 10 s to finish.
    void gateway
      .close(Number(env.SHUTDOWN_GRACE_MS ?? 10_000))
      .then(async () => {
        await live?.stop();
        await nats?.drain();
      })
      .then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
}
