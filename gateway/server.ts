// The edge gateway: one port, HTTP/1.1 and h2c (prior knowledge), serving
// REST/JSON (google.api.http), Connect, gRPC-Web and gRPC for every public
// method of the services it is given, with the policies of pipeline.ts.
import { createReadStream, statSync, type FSWatcher } from "node:fs";
import http, { type IncomingMessage, type ServerResponse } from "node:http";
import http2, { type Http2ServerRequest, type Http2ServerResponse } from "node:http2";
import net, { type AddressInfo, type Socket } from "node:net";
import { extname, join, normalize, resolve as resolvePath } from "node:path";
import type { DescService } from "@bufbuild/protobuf";
import { Code, type Transport } from "@connectrpc/connect";
import { createMeshTransport } from "../mesh/client.js";
import { countRateLimitRejection, metricsRegistry, observeHttpRequest, watchBreaker } from "../mesh/telemetry/metrics.js";
import { createLogger } from "../mesh/telemetry/logger.js";
import { defaultConfig, watchConfigFile, type GatewayConfig } from "./config.js";
import { describeService, type GatewayMethod, type GatewayService } from "./descriptors.js";
import { EdgeError } from "./errors.js";
import { buildOpenApi } from "./openapi.js";
import { Pipeline } from "./pipeline.js";
import { createAuthenticator, type JwtSettings } from "./policy/auth.js";
import { Breakers } from "./policy/circuit-breaker.js";
import { corsResponseHeaders, preflight } from "./policy/cors.js";
import { UpstreamSessions, createGrpcProxy } from "./routes/grpc-proxy.js";
import { createRestHandler, writeRestError, type AnyRequest, type AnyResponse } from "./routes/rest.js";
import { createRpcRoutes } from "./routes/rpc.js";
import { createRestRouter } from "./transcode/router.js";
import { createH2GrpcTransport } from "./upstream/h2-transport.js";
import { createTrafficPolicy } from "./traffic/policy.js";
import { createUpstreamReadiness } from "./readiness.js";

export interface GatewayOptions {
  /** The services to expose (their public methods). */
  readonly services: readonly DescService[];
  /** "host:port" of each upstream by its (protomesh.v1.service).name. */
  readonly upstreams: Readonly<Record<string, string>>;
  readonly jwt?: JwtSettings;
  readonly config?: GatewayConfig;
  /** A JSON or YAML file overriding policies; watched and hot-reloaded. */
  readonly configPath?: string;
  /** Files served for GET requests no route claims (the storefront). */
  readonly staticDir?: string;
  /**
   * Transport per upstream for REST, Connect and gRPC-Web calls. Default: the
   * lean HTTP/2 gRPC transport (upstream/h2-transport.ts); "mesh" selects
   * mesh/client (grpc-js).
   */
  readonly transportFor?: ((upstream: string, target: string) => Transport) | "mesh";
  /** Proxy plain gRPC frames without re-encoding (default true). */
  readonly grpcFastPath?: boolean;
  /**
   * Applied to every config before it takes effect (the initial one, each file
   * reload, each reapplyConfig): the live overrides from NATS KV ride here.
   */
  readonly overlay?: (fileConfig: GatewayConfig) => GatewayConfig;
}

export interface Gateway {
  readonly port: number;
  readonly url: string;
  readonly pipeline: Pipeline;
  readonly breakers: Breakers;
  readonly methods: readonly GatewayMethod[];
  setConfig(c: GatewayConfig): void;
  /** Runs the overlay again over the last config set (after a live value changed). */
  reapplyConfig(): void;
  /**
   * Stops accepting connections, lets calls in flight finish for up to
   * `graceMs` (HTTP/2 clients get a GOAWAY, idle HTTP/1.1 connections are
   * closed), then cuts what is left.
   */
  close(graceMs?: number): Promise<void>;
}

const log = createLogger({ component: "gateway" });

/** "/package.Service/Method": the path of an RPC in every protocol. */
const rpcShaped = /^\/[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+\/[A-Za-z_]\w*$/;

export async function startGateway(o: GatewayOptions, port = 8080, host = "0.0.0.0"): Promise<Gateway> {
  const services: GatewayService[] = o.services.map(describeService).filter((s) => s.methods.length > 0);
  for (const s of services) {
    if (!o.upstreams[s.upstream]) {
      throw new Error(`no upstream address for "${s.upstream}" (${s.service.typeName}); set UPSTREAMS or UPSTREAM_${s.upstream.toUpperCase()}`);
    }
  }
  const methods = services.flatMap((s) => s.methods);
  const byPath = new Map(methods.map((m) => [m.grpcPath, m]));
  // The config as given (file or caller), and the one in force: `overlay` of it.
  let baseConfig = o.config ?? defaultConfig;
  let config = o.overlay ? o.overlay(baseConfig) : baseConfig;

  const breakers = new Breakers({
    onStateChange: (name, from, to) => log.warn({ upstream: name, from, to }, `circuit breaker ${name}: ${from} -> ${to}`),
    onCreate: (name, policy) => watchBreaker(name, policy),
  });
  const pipeline = new Pipeline(config, services, o.jwt ? createAuthenticator(o.jwt) : undefined, breakers, {
    onRateLimited: (m, shadow) => countRateLimitRejection(m.grpcPath, shadow ? "shadow" : "client"),
  });

  const sessions = new UpstreamSessions();
  // Canary routing and shadow traffic per upstream (gateway/traffic), from config.traffic.
  const traffic = createTrafficPolicy(config.traffic, {
    upstreams: o.upstreams,
    methods,
    transportFor:
      typeof o.transportFor === "function"
        ? o.transportFor
        : o.transportFor === "mesh"
          ? undefined
          : (_upstream, target) => createH2GrpcTransport(sessions, target),
  });
  pipeline.traffic = traffic;

  const transports = new Map<string, Transport & { close?: () => void }>();
  const transportFor = (upstream: string): Transport => {
    let t = transports.get(upstream);
    if (!t) {
      const target = o.upstreams[upstream];
      // Retries happen in the pipeline (under the retry budget), not in the transport.
      if (typeof o.transportFor === "function") t = o.transportFor(upstream, target);
      else if (o.transportFor === "mesh") t = createMeshTransport({ target, retry: { maxAttempts: 1 } });
      else t = createH2GrpcTransport(sessions, target);
      transports.set(upstream, t);
    }
    return t;
  };
  // Each HTTP/2 session's peer address, read once per connection (session.socket is a
  // Proxy, slow to read per request).
  const sessionIps = new WeakMap<http2.Http2Session, string>();
  const peerIp = (session: http2.Http2Session | undefined): string | undefined =>
    (session && sessionIps.get(session)) ?? session?.socket?.remoteAddress;
  /** The client: behind a trusted proxy the address it appended, else the peer. */
  const ipOf = (xff: string | string[] | undefined, session: http2.Http2Session | undefined, socketIp?: string): string =>
    (config.trustForwardedFor ? forwardedClient(xff) : undefined) ?? peerIp(session) ?? socketIp ?? "unknown";
  const clientIp = (req: AnyRequest): string =>
    ipOf(req.headers["x-forwarded-for"], (req as Http2ServerRequest).stream?.session, req.socket?.remoteAddress);

  const router = createRestRouter(methods);
  const rest = createRestHandler({ router, pipeline, transportFor, clientIp, config: () => config });
  let rpc = createRpcRoutes({ methods, pipeline, transportFor, clientIp, maxBodyBytes: config.limits.maxBodyBytes });
  const grpcProxy = createGrpcProxy({
    pipeline,
    sessions,
    targetFor: (u) => o.upstreams[u],
    limits: () => config.limits,
    // The same series as the other protocols (route = the RPC path; gRPC answers HTTP 200).
    onClosed: (m, seconds) => observeHttpRequest("POST", m.grpcPath, 200, seconds),
  });
  const openapi = JSON.stringify(buildOpenApi(methods));
  const readiness = createUpstreamReadiness(o.upstreams);
  let closing = false;

  const setConfig = (given: GatewayConfig) => {
    const c = o.overlay ? o.overlay(given) : given;
    traffic.update(c.traffic); // first: an unknown upstream rejects the whole config
    const bodyLimitChanged = c.limits.maxBodyBytes !== config.limits.maxBodyBytes;
    baseConfig = given;
    config = c;
    pipeline.setConfig(c);
    if (bodyLimitChanged) {
      rpc = createRpcRoutes({ methods, pipeline, transportFor, clientIp, maxBodyBytes: c.limits.maxBodyBytes });
    }
    log.info("gateway config applied");
  };

  const handle = async (req: AnyRequest, res: AnyResponse) => {
    const started = performance.now();
    let routeLabel = "other";
    res.once("finish", () => observeHttpRequest(req.method ?? "", routeLabel, res.statusCode, (performance.now() - started) / 1000));
    const origin = req.headers.origin;
    const base = corsResponseHeaders(config.cors, origin);
    try {
      // Node's HTTP parser lets through request targets the URL parser refuses ("//[",
      // "//a:99999999/"): inside the try, so they are a 400, not an unhandled rejection.
      const url = parseTarget(req.url);
      if (req.method === "OPTIONS" && req.headers["access-control-request-method"]) {
        const p = preflight(config.cors, origin);
        (res as ServerResponse).writeHead(p.status, p.headers);
        res.end();
        return;
      }
      if (url.pathname === "/healthz") return sendJson(res, 200, { status: "ok" });
      if (url.pathname === "/readyz") {
        if (closing) return sendJson(res, 503, { status: "draining" });
        const unreachable = await readiness.unreachable();
        return sendJson(res, unreachable.length ? 503 : 200, unreachable.length ? { status: "unready", unreachable } : { status: "ready" });
      }
      if (url.pathname === "/openapi.json") {
        (res as ServerResponse).writeHead(200, { ...base, "content-type": "application/json" });
        res.end(openapi);
        return;
      }
      if (url.pathname === "/metrics") {
        (res as ServerResponse).writeHead(200, { "content-type": metricsRegistry.contentType });
        res.end(await metricsRegistry.metrics());
        return;
      }
      const m = byPath.get(url.pathname);
      if (m) {
        routeLabel = m.grpcPath;
        for (const [k, v] of Object.entries(base)) res.setHeader(k, v);
        rpc(req as IncomingMessage, res as ServerResponse);
        return;
      }
      if (await rest(req, res, url, base)) {
        routeLabel = "rest";
        return;
      }
      if (rpcShaped.test(url.pathname) && req.method === "POST") {
        // An RPC the gateway does not expose: connect-node answers it per protocol (UNIMPLEMENTED).
        for (const [k, v] of Object.entries(base)) res.setHeader(k, v);
        rpc(req as IncomingMessage, res as ServerResponse);
        return;
      }
      if (o.staticDir && (req.method === "GET" || req.method === "HEAD") && serveStatic(o.staticDir, url.pathname, res)) return;
      writeRestError(res, new EdgeError(`no route for ${req.method} ${url.pathname}`, Code.NotFound, 404), base);
    } catch (e) {
      writeRestError(res, e, base);
    }
  };

  // handle answers its own errors; this is the net under it: whatever still escapes is logged
  // and the request answered or dropped, never an unhandled rejection that ends the process.
  const serve = (req: AnyRequest, res: AnyResponse) =>
    void handle(req, res).catch((e: unknown) => {
      log.error({ err: (e as Error)?.message, url: req.url }, "gateway request failed outside its handler");
      if (!res.headersSent) writeRestError(res, e, {});
      else res.destroy();
    });
  const h1 = http.createServer({ maxHeaderSize: config.limits.maxHeaderBytes, requestTimeout: 60_000 }, serve);
  h1.headersTimeout = 10_000;
  const h2 = http2.createServer(
    {
      maxSessionMemory: 32,
      settings: {
        maxConcurrentStreams: config.limits.maxConcurrentStreams,
        maxHeaderListSize: config.limits.maxHeaderBytes,
      },
      maxSendHeaderBlockLength: config.limits.maxHeaderBytes,
    },
    serve,
  );
  const fast = o.grpcFastPath ?? true;
  if (fast) {
    // Plain gRPC bypasses the compat layer and connect-node: frames go
    // straight through. The compat layer's own "stream" listener (installed
    // with the request handler) runs only for the other streams.
    const compat = h2.listeners("stream") as Array<(...args: unknown[]) => void>;
    h2.removeAllListeners("stream");
    h2.on("stream", (stream, headers, ...rest) => {
      const ct = headers["content-type"];
      const m = typeof ct === "string" && ct.startsWith("application/grpc") && !ct.startsWith("application/grpc-web")
        ? byPath.get(headers[":path"] ?? "")
        : undefined;
      if (m) {
        void grpcProxy(stream, headers, m, ipOf(headers["x-forwarded-for"], stream.session));
        return;
      }
      for (const l of compat) l(stream, headers, ...rest);
    });
  }

  const sockets = new Set<Socket>();
  const h2Sessions = new Set<http2.ServerHttp2Session>();
  // A broken client connection is that client's problem, not the process's.
  h2.on("sessionError", () => {});
  h2.on("session", (s) => {
    s.on("error", () => {});
    const ip = s.socket?.remoteAddress;
    if (ip) sessionIps.set(s, ip);
    h2Sessions.add(s);
    s.once("close", () => h2Sessions.delete(s));
  });
  const front = net.createServer((socket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
    socket.setNoDelay(true);
    let buf: Buffer = Buffer.alloc(0);
    const onData = (c: Buffer) => {
      buf = buf.length === 0 ? c : Buffer.concat([buf, c]);
      if (buf.length < 3) return;
      socket.off("data", onData);
      socket.pause();
      socket.unshift(buf);
      // The HTTP/2 connection preface starts with "PRI"; anything else is HTTP/1.x.
      if (buf[0] === 0x50 && buf[1] === 0x52 && buf[2] === 0x49) h2.emit("connection", socket);
      else {
        h1.emit("connection", socket);
        socket.resume();
      }
    };
    socket.on("data", onData);
    socket.on("error", () => socket.destroy());
  });

  let watcher: FSWatcher | undefined;
  if (o.configPath) {
    watcher = watchConfigFile(o.configPath, setConfig, (e) => log.error({ err: e.message }, "gateway config rejected; keeping the current one"), baseConfig);
  }

  await new Promise<void>((resolve, reject) => {
    front.once("error", reject);
    front.listen(port, host, () => resolve());
  });
  const actual = (front.address() as AddressInfo).port;
  log.info({ port: actual, methods: methods.length, upstreams: services.map((s) => s.upstream) }, "gateway listening");

  return {
    port: actual,
    url: `http://127.0.0.1:${actual}`,
    pipeline,
    breakers,
    methods,
    setConfig,
    reapplyConfig: () => setConfig(baseConfig),
    async close(graceMs = 0) {
      closing = true;
      watcher?.close();
      const closed = new Promise<void>((resolve) => front.close(() => resolve()));
      if (graceMs > 0) {
        for (const s of h2Sessions) s.close();
        h1.closeIdleConnections?.();
        const until = Date.now() + graceMs;
        while (sockets.size > 0 && Date.now() < until) {
          await new Promise((r) => setTimeout(r, 50));
          h1.closeIdleConnections?.();
        }
      }
      h1.closeAllConnections?.();
      for (const s of sockets) s.destroy();
      await closed;
      sessions.close();
      traffic.close();
      for (const t of transports.values()) t.close?.();
    },
  };
}

/**
 * The client behind the proxy in front of the gateway (trustForwardedFor): the address that
 * proxy appended, the last X-Forwarded-For entry. The entries before it are whatever the client
 * sent, so taking the first let a client pick its own rate-limit bucket and canary key.
 */
export function forwardedClient(xff: string | string[] | undefined): string | undefined {
  const all = Array.isArray(xff) ? xff.join(",") : xff;
  return all?.split(",").map((s) => s.trim()).filter(Boolean).pop();
}

/** The request target as a URL; a target the URL parser refuses is a 400. */
function parseTarget(target: string | undefined): URL {
  try {
    return new URL(target ?? "/", "http://gateway");
  } catch {
    throw new EdgeError("malformed request target", Code.InvalidArgument, 400);
  }
}

function sendJson(res: AnyResponse, status: number, body: unknown): void {
  (res as ServerResponse).writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify(body));
}

const contentTypes: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".json": "application/json",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".ico": "image/x-icon",
  ".map": "application/json",
};

function serveStatic(dir: string, pathname: string, res: AnyResponse): boolean {
  const root = resolvePath(dir);
  let rel: string;
  try {
    rel = normalize(decodeURIComponent(pathname)).replace(/^(\.\.[/\\])+/, "");
  } catch {
    return false;
  }
  let file = join(root, rel);
  if (!file.startsWith(root)) return false;
  try {
    if (statSync(file).isDirectory()) file = join(file, "index.html");
    statSync(file);
  } catch {
    // Client-side routes fall back to the page.
    if (extname(pathname) !== "") return false;
    file = join(root, "index.html");
    try {
      statSync(file);
    } catch {
      return false;
    }
  }
  (res as ServerResponse).writeHead(200, { "content-type": contentTypes[extname(file)] ?? "application/octet-stream" });
  createReadStream(file).pipe(res as ServerResponse);
  return true;
}

export type { Http2ServerResponse };
