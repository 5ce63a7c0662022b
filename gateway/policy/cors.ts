// CORS for browser clients: Connect, gRPC-Web and REST. The header lists are
// the ones Connect documents (exported by @connectrpc/connect as `cors`), plus
// what the gateway itself reads and sets.
import { cors as connectCors } from "@connectrpc/connect";

export interface CorsSettings {
  /** Exact origins, or "*" for any (credentials are then not allowed). */
  readonly allowedOrigins: readonly string[];
  readonly maxAgeSec?: number;
}

const allowMethods = [...new Set([...connectCors.allowedMethods, "GET", "POST", "PUT", "PATCH", "DELETE"])].join(", ");
const allowHeaders = [
  ...connectCors.allowedHeaders,
  "Authorization",
  "Idempotency-Key",
  "X-Request-Id",
  "X-Api-Key",
  "Traceparent",
  "Tracestate",
].join(", ");
const exposeHeaders = [
  ...connectCors.exposedHeaders,
  "RateLimit",
  "RateLimit-Policy",
  "Retry-After",
  "WWW-Authenticate",
  "X-Request-Id",
].join(", ");

/** The origin to echo, or undefined when it is not allowed. */
export function allowedOrigin(settings: CorsSettings, origin: string | undefined): string | undefined {
  if (!origin) return undefined;
  if (settings.allowedOrigins.includes("*")) return origin;
  return settings.allowedOrigins.includes(origin) ? origin : undefined;
}

/**
 * Credentials (cookies, HTTP auth) only for an origin the config names: an origin let in by "*"
 * is any site, and a browser sending it the user's credentials is what CORS exists to stop.
 */
function credentialsFor(settings: CorsSettings, origin: string): Record<string, string> {
  return settings.allowedOrigins.includes(origin) ? { "access-control-allow-credentials": "true" } : {};
}

/** Headers for an actual (non-preflight) cross-origin response. */
export function corsResponseHeaders(settings: CorsSettings, origin: string | undefined): Record<string, string> {
  const o = allowedOrigin(settings, origin);
  if (!o) return origin ? { vary: "Origin" } : {};
  return {
    "access-control-allow-origin": o,
    ...credentialsFor(settings, o),
    "access-control-expose-headers": exposeHeaders,
    vary: "Origin",
  };
}

/**
 * The answer to a preflight (OPTIONS with Access-Control-Request-Method):
 * 204 with the allow headers, or 403 for an origin not allowed.
 */
export function preflight(
  settings: CorsSettings,
  origin: string | undefined,
): { status: number; headers: Record<string, string> } {
  const o = allowedOrigin(settings, origin);
  if (!o) return { status: 403, headers: { vary: "Origin" } };
  return {
    status: 204,
    headers: {
      "access-control-allow-origin": o,
      ...credentialsFor(settings, o),
      "access-control-allow-methods": allowMethods,
      "access-control-allow-headers": allowHeaders,
      "access-control-max-age": String(settings.maxAgeSec ?? 7200),
      vary: "Origin",
    },
  };
}
