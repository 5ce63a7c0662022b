// Readiness of the gateway: ready when it is not draining and every upstream it
// exposes accepts a TCP connection. Probes are cached for a short while, so an
// orchestrator polling /readyz every second does not open a connection per
// upstream per poll. An upstream behind discovery (mesh:///) is resolved by the
// grpc-js resolver per call, so it is not probed here.
import { canConnect } from "../mesh/net.js";

export interface UpstreamReadiness {
  /** Names of the upstreams that did not accept a connection, [] when all did. */
  unreachable(): Promise<string[]>;
}

/** "host:port", "dns:///host:port", "dns:host:port" -> { host, port }; undefined for other schemes (mesh:///, unix:). */
export function probeTarget(target: string): { host: string; port: number } | undefined {
  let rest = target;
  if (rest.startsWith("dns:")) rest = rest.slice("dns:".length).replace(/^\/\/[^/]*\//, "");
  else if (/^[a-z][a-z0-9+.-]*:(?!\d)/i.test(rest)) return undefined; // a scheme, not "host:port"
  const m = /^\[?([^\]\s]+?)\]?:(\d+)$/.exec(rest);
  return m ? { host: m[1], port: Number(m[2]) } : undefined;
}

export function createUpstreamReadiness(
  upstreams: Readonly<Record<string, string>>,
  options: { cacheMs?: number; timeoutMs?: number } = {},
): UpstreamReadiness {
  const cacheMs = options.cacheMs ?? 1000;
  const timeoutMs = options.timeoutMs ?? 500;
  let last: { at: number; result: Promise<string[]> } | undefined;
  const probe = async (): Promise<string[]> => {
    const results = await Promise.all(
      Object.entries(upstreams).map(async ([name, target]) => {
        const t = probeTarget(target);
        return t && !(await canConnect(t.host, t.port, timeoutMs)) ? name : undefined;
      }),
    );
    return results.filter((n): n is string => n !== undefined);
  };
  return {
    unreachable() {
      if (!last || Date.now() - last.at > cacheMs) last = { at: Date.now(), result: probe() };
      return last.result;
    },
  };
}
