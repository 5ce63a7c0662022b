// The fast path for plain gRPC over HTTP/2: frames go upstream and back
// without decoding or re-encoding messages, yet every policy applies. The
// pipeline admits the call from its headers (auth, rate limit, deadline,
// breaker); the call runs inside the breaker, reports its grpc-status to it,
// and an idempotent unary call answered UNAVAILABLE before any response byte
// is retried with the buffered request.
import { lookup } from "node:dns/promises";
import net from "node:net";
import http2, { type ClientHttp2Session, type ClientHttp2Stream, type ServerHttp2Stream } from "node:http2";
import { Code, ConnectError } from "@connectrpc/connect";
import type { GatewayMethod } from "../descriptors.js";
import { EdgeError } from "../errors.js";
import type { Admission, Pipeline } from "../pipeline.js";
import { throughBreaker } from "../policy/circuit-breaker.js";
import { isRetryable } from "../policy/retry.js";
import { formatGrpcTimeout, parseGrpcTimeout } from "../policy/timeout.js";
import "../../mesh/async-bind.js"; // every upstream request binds an AsyncResource
import { encodeGrpcMessage } from "./grpc-status.js";
import { headerView } from "./header-view.js";
import { releaseListeners } from "./release-listeners.js";

const {
  HTTP2_HEADER_CONTENT_TYPE,
  HTTP2_HEADER_METHOD,
  HTTP2_HEADER_PATH,
  HTTP2_HEADER_STATUS,
  NGHTTP2_CANCEL,
  NGHTTP2_NO_ERROR,
} = http2.constants;

/** Request headers forwarded as they are (besides the pipeline's). */
const forwardRequest = ["grpc-encoding", "grpc-accept-encoding", "user-agent", "grpc-message-type"];
const failureCodes = new Set([Code.Unavailable, Code.DeadlineExceeded, Code.Internal, Code.Unknown]);

function splitTarget(target: string): { host: string; port: number } {
  const t = target.replace(/^dns:\/\/\//, "");
  const i = t.lastIndexOf(":");
  return { host: t.slice(0, i).replace(/^\[|\]$/g, ""), port: Number(t.slice(i + 1)) };
}

/** One HTTP/2 session per upstream target, reopened when it closes. */
export class UpstreamSessions {
  private readonly sessions = new Map<string, ClientHttp2Session>();
  private readonly pinger: NodeJS.Timeout;

  /**
   * A session whose peer vanished without closing TCP would swallow every
   * call until its deadline (and keep a half-open breaker failing forever):
   * each session is pinged, and one that does not answer in time is dropped.
   */
  constructor(pingIntervalMs = 10_000, pingTimeoutMs = 5_000) {
    this.pinger = setInterval(() => {
      for (const [target, s] of this.sessions) {
        if (s.connecting || s.closed || s.destroyed) continue;
        const timer = setTimeout(() => this.drop(target, s), pingTimeoutMs);
        const ok = s.ping((err) => {
          clearTimeout(timer);
          if (err) this.drop(target, s);
        });
        if (!ok) clearTimeout(timer); // too many pings in flight: try next round
      }
    }, pingIntervalMs);
    this.pinger.unref();
  }

  private drop(target: string, s: ClientHttp2Session): void {
    if (this.sessions.get(target) === s) this.sessions.delete(target);
    s.destroy();
  }

  /**
   * A session to one of the target's addresses, round-robin: a DNS name
   * with several addresses (a headless Kubernetes Service: one per replica)
   * spreads calls over every replica, re-resolved every 30 s.
   */
  get(target: string): ClientHttp2Session {
    const pool = this.poolOf(target);
    const n = pool.endpoints.length;
    const endpoint = n === 1 ? pool.endpoints[0] : n > 0 ? pool.endpoints[pool.next++ % n] : target;
    return this.session(endpoint);
  }

  private readonly pools = new Map<string, { endpoints: string[]; next: number; at: number; pending: boolean; fixed: boolean }>();

  private poolOf(target: string) {
    let p = this.pools.get(target);
    if (p?.fixed) return p; // an IP address: nothing to resolve, per call
    if (!p) this.pools.set(target, (p = { endpoints: [], next: 0, at: 0, pending: false, fixed: false }));
    const { host, port } = splitTarget(target);
    if (net.isIP(host)) {
      p.endpoints = [target];
      p.fixed = true;
      return p;
    }
    if (!p.pending && Date.now() - p.at > 30_000) {
      p.pending = true;
      const pool = p;
      lookup(host, { all: true }).then(
        (addrs) => {
          const eps = addrs.map((a) => (a.family === 6 ? `[${a.address}]:${port}` : `${a.address}:${port}`));
          if (eps.length > 0) pool.endpoints = eps;
          pool.at = Date.now();
          pool.pending = false;
        },
        () => {
          pool.at = Date.now();
          pool.pending = false; // keep the last good addresses
        },
      );
    }
    return p;
  }

  private session(endpoint: string): ClientHttp2Session {
    let s = this.sessions.get(endpoint);
    if (s && !s.closed && !s.destroyed) return s;
    // No Nagle: small frames (a unary request is one) must not wait for an ACK.
    s = http2.connect(`http://${endpoint}`, {
      createConnection: () => {
        const { host, port } = splitTarget(endpoint);
        return net.connect({ host, port, noDelay: true });
      },
    });
    const session = s;
    session.on("error", () => {});
    session.on("close", () => {
      if (this.sessions.get(endpoint) === session) this.sessions.delete(endpoint);
    });
    session.on("goaway", () => {
      if (this.sessions.get(endpoint) === session) this.sessions.delete(endpoint);
    });
    this.sessions.set(endpoint, session);
    return session;
  }

  close(): void {
    clearInterval(this.pinger);
    for (const s of this.sessions.values()) s.close();
    this.sessions.clear();
  }
}

export interface GrpcProxyOptions {
  readonly pipeline: Pipeline;
  readonly sessions: UpstreamSessions;
  readonly targetFor: (upstream: string) => string;
  /** Current limits (they follow config reloads). */
  readonly limits: () => { readonly maxBodyBytes: number; readonly bodyTimeoutMs: number };
  /** Called once per call when the client's stream closes (the HTTP request metrics). */
  readonly onClosed?: (m: GatewayMethod, seconds: number) => void;
}

type Outcome = { code: number; sentAnything: boolean };

/** Answers a gRPC error as a trailers-only response. */
function respondError(stream: ServerHttp2Stream, e: unknown, extra: Record<string, string> = {}): void {
  if (stream.destroyed || stream.closed) return;
  const err = e instanceof ConnectError ? e : new ConnectError("upstream failed", Code.Unavailable);
  const h: Record<string, string | number> = {
    ...extra,
    [HTTP2_HEADER_STATUS]: 200,
    [HTTP2_HEADER_CONTENT_TYPE]: "application/grpc",
    "grpc-status": err.code,
    "grpc-message": encodeGrpcMessage(err.rawMessage),
  };
  if (err instanceof EdgeError) Object.assign(h, err.httpHeaders);
  if (stream.headersSent) {
    // Mid-response: end the stream with the error in the trailers.
    if (stream.writableEnded) return;
    stream.once("wantTrailers", () =>
      stream.sendTrailers({ "grpc-status": err.code, "grpc-message": encodeGrpcMessage(err.rawMessage) }),
    );
    stream.end();
    return;
  }
  stream.respond(h, { endStream: true });
}

export function createGrpcProxy(o: GrpcProxyOptions) {
  return async function proxy(
    stream: ServerHttp2Stream,
    headers: http2.IncomingHttpHeaders,
    m: GatewayMethod,
    ip: string,
  ): Promise<void> {
    // A reset from the client surfaces as a stream error: it ends this call,
    // never the process (the close handlers below clean up).
    const started = performance.now();
    stream.on("error", ignore);
    stream.once("close", () => {
      o.onClosed?.(m, (performance.now() - started) / 1000);
      releaseListeners(stream);
    });
    // The pipeline only reads a few headers: look them up in place instead of
    // copying every header into a Headers object on this hot path.
    const h = headerView(headers);
    let a: Admission;
    try {
      const admitted = o.pipeline.admit(
        m,
        { headers: h, ip, clientTimeoutMs: parseGrpcTimeout(h.get("grpc-timeout")) },
        m.method.methodKind !== "unary",
      );
      // Only a token to verify makes admission asynchronous.
      a = admitted instanceof Promise ? await admitted : admitted;
    } catch (e) {
      respondError(stream, e);
      stream.resume();
      return;
    }
    const out: http2.OutgoingHttpHeaders = {
      [HTTP2_HEADER_METHOD]: "POST",
      [HTTP2_HEADER_PATH]: m.grpcPath,
      [HTTP2_HEADER_CONTENT_TYPE]: headers["content-type"],
      te: "trailers",
    };
    for (const k of forwardRequest) if (headers[k] !== undefined) out[k] = headers[k];
    const uh = a.upstreamHeaders;
    for (const k in uh) out[k] = uh[k];
    const target = a.route?.target ?? o.targetFor(m.upstream);
    const canRetry = a.policy.idempotent && m.method.methodKind === "unary";
    // A call sampled for shadowing (gateway/traffic) keeps its request bytes; a unary one its response bytes too.
    const traffic = a.route?.shadow ? o.pipeline.traffic : undefined;
    const mirrored: Buffer[] | undefined = traffic && m.method.methodKind === "unary" ? [] : undefined;

    // An idempotent unary request is buffered so it can be sent again.
    let buffered: Buffer | undefined;
    if (canRetry || traffic) {
      try {
        buffered = await readAll(stream, o.limits().maxBodyBytes, o.limits().bodyTimeoutMs);
      } catch (e) {
        respondError(stream, e);
        stream.resume();
        return;
      }
    }

    let timer: NodeJS.Timeout | undefined;
    let current: ClientHttp2Stream | undefined;
    const onClientClose = () => {
      if (current && !current.closed) current.close(NGHTTP2_CANCEL);
    };
    stream.once("close", onClientClose);
    // The upstream enforces grpc-timeout itself; this timer is the edge's own
    // guarantee, settling whichever attempt is running.
    let settleCurrent: ((o: Outcome) => void) | undefined;
    if (a.deadline !== undefined) {
      timer = setTimeout(() => {
        if (current && !current.closed) current.close(NGHTTP2_CANCEL);
        respondError(stream, new ConnectError("deadline exceeded", Code.DeadlineExceeded));
        settleCurrent?.({ code: Code.DeadlineExceeded, sentAnything: true });
      }, Math.max(1, a.deadline - Date.now()));
    }

    const attempt = (last: boolean): Promise<Outcome> =>
      new Promise<Outcome>((settle) => {
        let settled = false;
        const resolve = (r: Outcome) => {
          if (settled) return;
          settled = true;
          settle(r);
        };
        settleCurrent = resolve;
        if (a.deadline !== undefined) out["grpc-timeout"] = formatGrpcTimeout(a.deadline - Date.now());
        let up: ClientHttp2Stream;
        try {
          up = o.sessions.get(target).request(out);
        } catch {
          resolve({ code: Code.Unavailable, sentAnything: false });
          return;
        }
        current = up;
        if (mirrored) mirrored.length = 0;
        let responded = false;
        let heldHeaders: http2.OutgoingHttpHeaders | undefined;
        const respondHeld = () => {
          if (responded || stream.destroyed || stream.headersSent) return;
          responded = true;
          stream.respond(Object.assign(heldHeaders!, a.responseHeaders), { waitForTrailers: true });
        };
        up.on("response", (rh) => {
          // The edge's deadline may have answered the client already (and settled this
          // attempt) in the same turn the upstream's answer was read: never respond twice,
          // which throws from this listener and would end the process.
          if (settled || stream.headersSent) return;
          const status = Number(rh["grpc-status"] ?? NaN);
          if (!Number.isNaN(status)) {
            // Trailers-only answer.
            if (status === Code.Unavailable && !last) {
              resolve({ code: status, sentAnything: false });
              return;
            }
            if (!stream.destroyed) {
              responded = true;
              stream.respond(Object.assign(stripHop(rh), a.responseHeaders), { endStream: true });
            }
            resolve({ code: status, sentAnything: true });
            return;
          }
          heldHeaders = stripHop(rh);
          // Retryable calls hold their headers until a message shows the call succeeded.
          if (!canRetry) respondHeld();
          // A gRPC answer has begun (an HTTP error page from something in between has not).
          if (rh[":status"] === 200 && String(rh["content-type"] ?? "").startsWith("application/grpc")) onStreamStarted?.();
        });
        up.on("data", (chunk: Buffer) => {
          if (settled) return;
          mirrored?.push(chunk);
          respondHeld();
          if (stream.destroyed) return;
          if (!stream.write(chunk)) {
            up.pause();
            stream.once("drain", () => up.resume());
          }
        });
        let trailers: http2.IncomingHttpHeaders | undefined;
        up.on("trailers", (t) => (trailers = t));
        up.on("end", () => {
          if (settled) return; // answered already (trailers-only)
          if (!trailers && (stream.destroyed || stream.closed)) {
            // Ended because the client went away and we canceled upstream.
            resolve({ code: Code.Canceled, sentAnything: true });
            return;
          }
          const status = Number(trailers?.["grpc-status"] ?? Code.Unknown);
          if (!responded && status === Code.Unavailable && !last) {
            resolve({ code: status, sentAnything: false });
            return;
          }
          respondHeld();
          if (!stream.destroyed && !stream.closed) {
            stream.once("wantTrailers", () => {
              const t = trailers ? stripHop(trailers) : { "grpc-status": Code.Unknown, "grpc-message": "no trailers" };
              stream.sendTrailers(t);
            });
            stream.end();
          }
          resolve({ code: status, sentAnything: true });
        });
        up.on("error", () => {
          if (settled) return;
          if (stream.destroyed || stream.closed) {
            // The client went away and we canceled upstream: not an upstream failure.
            resolve({ code: Code.Canceled, sentAnything: true });
            return;
          }
          if (!responded && !last) {
            resolve({ code: Code.Unavailable, sentAnything: false });
            return;
          }
          respondError(stream, new ConnectError("upstream connection failed", Code.Unavailable));
          resolve({ code: Code.Unavailable, sentAnything: true });
        });
        up.on("close", () => {
          // Closed without end (reset): treat as a connection failure.
          if (!up.readableEnded) up.emit("error", new Error("upstream stream reset"));
          releaseListeners(up);
        });
        if (buffered) up.end(buffered);
        else pipeLimited(stream, up, o.limits().maxBodyBytes, () => {
          // Settled here, as the client's failure (not counted by the breaker): the upstream's
          // end or error from the cancel below then changes nothing.
          resolve({ code: Code.ResourceExhausted, sentAnything: true });
          up.close(NGHTTP2_CANCEL);
          respondError(stream, new ConnectError(`request exceeds ${o.limits().maxBodyBytes} bytes`, Code.ResourceExhausted));
          // The answer is complete; RST_STREAM(NO_ERROR) tells the client to stop sending
          // (RFC 9113, 8.1). Left open, the stream counts against the connection's
          // concurrent streams until the client has pushed the whole body into a paused read.
          if (!stream.closed) stream.close(NGHTTP2_NO_ERROR);
        });
      });

    const run = async (): Promise<Outcome> => {
      a.budget.deposit();
      for (let n = 1; ; n++) {
        const last = !canRetry || n >= 3;
        const r = await attempt(last);
        if (r.sentAnything || last) return r;
        if (!isRetryable(new ConnectError("", r.code as Code)) || !a.budget.tryWithdraw()) {
          // Out of budget: answer with the failure we have.
          respondError(stream, new ConnectError("upstream unavailable", Code.Unavailable));
          return { code: r.code, sentAnything: true };
        }
        const delay = Math.random() * Math.min(250, 25 * 2 ** (n - 1));
        if (a.deadline !== undefined && Date.now() + delay >= a.deadline) {
          respondError(stream, new ConnectError("upstream unavailable", Code.Unavailable));
          return { code: r.code, sentAnything: true };
        }
        await new Promise((r2) => setTimeout(r2, delay));
      }
    };

    // A stream is judged by the circuit breaker when the upstream starts answering (its response
    // headers), not when it ends: a watch stream can run for an hour, and as the one probe of a
    // half-open breaker it held every other call to the upstream waiting until it ended. It
    // ends in its own time after that; its end is not counted again.
    let onStreamStarted: (() => void) | undefined;
    let whole: Promise<Outcome> | undefined;
    const task =
      m.method.methodKind === "unary"
        ? run
        : () =>
            new Promise<Outcome>((resolve, reject) => {
              onStreamStarted = () => resolve({ code: 0 /* OK */, sentAnything: true });
              whole = run();
              whole.then(resolve, reject);
            });
    try {
      let result = await throughBreaker(a.breaker, a.breakerName, a.breakerRetryAfterSec, task, (r) => !failureCodes.has(r.code));
      if (whole) result = await whole;
      if (traffic && buffered) {
        traffic.shadow(a.route!, { kind: "raw", method: m.method, headers: out, body: buffered, code: result.code, response: mirrored && Buffer.concat(mirrored) });
      }
    } catch (e) {
      respondError(stream, e, a.responseHeaders);
      stream.resume();
    } finally {
      clearTimeout(timer);
      stream.off("close", onClientClose);
    }
  };
}

function stripHop(h: http2.IncomingHttpHeaders): http2.OutgoingHttpHeaders {
  const out: http2.OutgoingHttpHeaders = {};
  for (const k in h) {
    if (k.charCodeAt(0) === 58 /* ":" */ && k !== ":status") continue;
    if (k === "content-length" || k === "connection" || k === "keep-alive") continue;
    out[k] = h[k];
  }
  return out;
}

const ignore = () => {};


function readAll(stream: ServerHttp2Stream, max: number, timeoutMs: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    // A slow sender cannot hold a buffered request (and its memory) forever.
    // The caller answers the rejection; whatever the client still sends is discarded.
    const timer = setTimeout(() => {
      stream.off("data", onData);
      reject(new ConnectError("request not received in time", Code.DeadlineExceeded));
    }, timeoutMs);
    stream.once("close", () => clearTimeout(timer));
    const onData = (c: Buffer) => {
      size += c.length;
      if (size > max) {
        clearTimeout(timer);
        stream.off("data", onData);
        chunks.length = 0;
        reject(new ConnectError(`request exceeds ${max} bytes`, Code.ResourceExhausted));
        return;
      }
      chunks.push(c);
    };
    stream.on("data", onData);
    stream.on("end", () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks, size));
    });
    stream.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
}

function pipeLimited(from: ServerHttp2Stream, to: ClientHttp2Stream, max: number, onTooLarge: () => void): void {
  let size = 0;
  let refused = false;
  from.on("data", (c: Buffer) => {
    if (refused) return; // what the client still sends is dropped
    size += c.length;
    if (size > max) {
      refused = true;
      onTooLarge();
      return;
    }
    if (!to.write(c)) {
      from.pause();
      to.once("drain", () => from.resume());
    }
  });
  from.on("end", () => {
    if (!refused) to.end();
  });
}
