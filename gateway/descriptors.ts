// What the gateway knows about services: only their descriptors and options.
// Nothing here names a service; everything is read from gen/.
import { readdir } from "node:fs/promises";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { getOption, hasOption, type DescMethod, type DescService } from "@bufbuild/protobuf";
import { http as httpRuleExt } from "../gen/google/api/annotations_pb.js";
import type { HttpRule } from "../gen/google/api/http_pb.js";
import {
  AuthLevel,
  RateLimitKey,
  method as methodPolicyExt,
  service as servicePolicyExt,
} from "../gen/protomesh/v1/options_pb.js";
import { parsePathTemplate, type PathTemplate } from "./transcode/path-template.js";

/** A rate limit in plain numbers. */
export interface RateLimitSpec {
  /** Tokens added per period; 0 disables the limit. */
  requests: number;
  periodMs: number;
  burst: number;
  key: "ip" | "user" | "api_key";
}

/** Effective per-method policy (proto option, then config overrides). */
export interface MethodPolicySpec {
  auth: "none" | "user" | "admin";
  timeoutMs: number | undefined;
  idempotent: boolean;
  rateLimit: RateLimitSpec | undefined;
}

export interface BreakerSpec {
  windowMs: number;
  minRequests: number;
  errorPercent: number;
  openForMs: number;
  halfOpenProbes: number;
}

/** One HTTP binding of a method (the rule itself or one of its additional_bindings). */
export interface HttpBinding {
  readonly httpMethod: string;
  readonly template: PathTemplate;
  /** "" (no body), "*" or a top-level request field name. */
  readonly body: string;
  /** "" (whole response) or a top-level response field name. */
  readonly responseBody: string;
}

export interface GatewayMethod {
  readonly service: DescService;
  readonly method: DescMethod;
  /** The upstream name from (protomesh.v1.service).name. */
  readonly upstream: string;
  /** gRPC path "/pkg.Service/Method". */
  readonly grpcPath: string;
  /** Policy from the proto option, before config overrides. */
  readonly declaredPolicy: MethodPolicySpec;
  readonly bindings: readonly HttpBinding[];
}

export interface GatewayService {
  readonly service: DescService;
  readonly upstream: string;
  readonly breaker: BreakerSpec;
  /** Public methods only. */
  readonly methods: readonly GatewayMethod[];
}

const durationMs = (d: { seconds: bigint; nanos: number } | undefined): number | undefined =>
  d === undefined ? undefined : Number(d.seconds) * 1000 + Math.round(d.nanos / 1e6);

export const defaultBreaker: BreakerSpec = {
  windowMs: 10_000,
  minRequests: 20,
  errorPercent: 50,
  openForMs: 5_000,
  halfOpenProbes: 1,
};

/** The upstream name of a service: its option, else the last package component before the version. */
export function upstreamName(service: DescService): string {
  const declared = hasOption(service, servicePolicyExt) ? getOption(service, servicePolicyExt).name : "";
  if (declared) return declared;
  const parts = service.file.proto.package.split(".");
  return (/^v\d/.test(parts[parts.length - 1]) ? parts[parts.length - 2] : parts[parts.length - 1]) ?? service.name;
}

export function describeService(service: DescService): GatewayService {
  const upstream = upstreamName(service);
  const sp = hasOption(service, servicePolicyExt) ? getOption(service, servicePolicyExt) : undefined;
  const cb = sp?.circuitBreaker;
  const breaker: BreakerSpec = {
    windowMs: durationMs(cb?.window) ?? defaultBreaker.windowMs,
    minRequests: cb?.minRequests || defaultBreaker.minRequests,
    errorPercent: cb?.errorPercent || defaultBreaker.errorPercent,
    openForMs: durationMs(cb?.openFor) ?? defaultBreaker.openForMs,
    halfOpenProbes: cb?.halfOpenProbes || defaultBreaker.halfOpenProbes,
  };
  const methods: GatewayMethod[] = [];
  for (const m of service.methods) {
    if (!hasOption(m, methodPolicyExt)) continue;
    const p = getOption(m, methodPolicyExt);
    if (!p.public) continue;
    if (m.methodKind === "client_streaming" || m.methodKind === "bidi_streaming") {
      // The edge serves unary and server streaming only (browsers cannot do more).
      continue;
    }
    const rl = p.rateLimit;
    const declaredPolicy: MethodPolicySpec = {
      auth: p.auth === AuthLevel.NONE ? "none" : p.auth === AuthLevel.ADMIN ? "admin" : "user",
      timeoutMs: durationMs(p.timeout),
      idempotent: p.idempotent,
      rateLimit:
        rl && rl.requests > 0
          ? {
              requests: rl.requests,
              periodMs: durationMs(rl.period) || 1000,
              burst: rl.burst || rl.requests,
              key: rl.key === RateLimitKey.USER ? "user" : rl.key === RateLimitKey.API_KEY ? "api_key" : "ip",
            }
          : undefined,
    };
    const bindings = hasOption(m, httpRuleExt) ? httpBindings(m, getOption(m, httpRuleExt)) : [];
    methods.push({
      service,
      method: m,
      upstream,
      grpcPath: `/${service.typeName}/${m.name}`,
      declaredPolicy,
      bindings,
    });
  }
  return { service, upstream, breaker, methods };
}

function httpBindings(m: DescMethod, rule: HttpRule): HttpBinding[] {
  const out: HttpBinding[] = [];
  const one = (r: HttpRule, nested: boolean) => {
    const where = `${m.parent.typeName}.${m.name}`;
    let httpMethod: string;
    let path: string;
    switch (r.pattern.case) {
      case "get":
      case "put":
      case "post":
      case "delete":
      case "patch":
        httpMethod = r.pattern.case.toUpperCase();
        path = r.pattern.value;
        break;
      case "custom":
        httpMethod = r.pattern.value.kind.toUpperCase();
        path = r.pattern.value.path;
        break;
      default:
        throw new Error(`${where}: google.api.http rule without a pattern`);
    }
    const template = parsePathTemplate(path);
    if (r.body !== "" && r.body !== "*" && !m.input.fields.some((f) => f.name === r.body)) {
      throw new Error(`${where}: body "${r.body}" is not a field of ${m.input.typeName}`);
    }
    if (r.responseBody !== "" && !m.output.fields.some((f) => f.name === r.responseBody)) {
      throw new Error(`${where}: response_body "${r.responseBody}" is not a field of ${m.output.typeName}`);
    }
    for (const v of template.variables) {
      checkFieldPath(m, v.fieldPath, where);
    }
    out.push({ httpMethod, template, body: r.body, responseBody: r.responseBody });
    if (nested && r.additionalBindings.length > 0) {
      throw new Error(`${where}: additional_bindings must not nest`);
    }
    for (const b of r.additionalBindings) one(b, true);
  };
  one(rule, false);
  return out;
}

function checkFieldPath(m: DescMethod, path: readonly string[], where: string): void {
  let msg = m.input;
  path.forEach((name, i) => {
    const f = msg.fields.find((x) => x.name === name);
    if (!f) throw new Error(`${where}: path variable "${path.join(".")}" is not a field of ${m.input.typeName}`);
    if (i < path.length - 1) {
      if (f.fieldKind !== "message") throw new Error(`${where}: "${path.slice(0, i + 1).join(".")}" is not a message`);
      msg = f.message;
    } else if (f.fieldKind !== "scalar" && f.fieldKind !== "enum") {
      throw new Error(`${where}: path variable "${path.join(".")}" must be a scalar or enum field`);
    }
  });
}

/**
 * Imports every generated file under `genDir` and returns the services it
 * declares. `include` filters by fully-qualified service name.
 */
export async function loadServicesFromGen(
  genDir: string,
  include: (typeName: string) => boolean = () => true,
): Promise<DescService[]> {
  const files = (await readdir(genDir, { recursive: true }))
    .filter((f) => /_pb\.(ts|js)$/.test(f))
    .sort();
  const out = new Map<string, DescService>();
  for (const f of files) {
    const mod: Record<string, unknown> = await import(pathToFileURL(join(genDir, f)).href);
    for (const v of Object.values(mod)) {
      if (isServiceDesc(v) && include(v.typeName)) out.set(v.typeName, v);
    }
  }
  return [...out.values()];
}

function isServiceDesc(v: unknown): v is DescService {
  return typeof v === "object" && v !== null && (v as { kind?: unknown }).kind === "service";
}
