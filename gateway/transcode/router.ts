// The REST route table: every HTTP binding of every public method.
import type { GatewayMethod, HttpBinding } from "../descriptors.js";
import { matchTemplate, specificity, splitRequestPath, type Bindings } from "./path-template.js";

export interface Route {
  readonly method: GatewayMethod;
  readonly binding: HttpBinding;
}

export type RouteResult =
  | { readonly kind: "match"; readonly route: Route; readonly vars: Bindings }
  | { readonly kind: "not_found" }
  | { readonly kind: "method_not_allowed"; readonly allow: readonly string[] };

export interface RestRouter {
  readonly routes: readonly Route[];
  match(httpMethod: string, path: string): RouteResult;
}

export function createRestRouter(methods: Iterable<GatewayMethod>): RestRouter {
  const routes: Route[] = [];
  const seen = new Map<string, string>();
  for (const m of methods) {
    for (const b of m.bindings) {
      // Two bindings with the same verb and the same shape would be ambiguous.
      const shape = `${b.httpMethod} ${b.template.segments
        .map((s) => (s.kind === "literal" ? s.value : s.kind === "single" ? "*" : "**"))
        .join("/")}:${b.template.verb ?? ""}`;
      const other = seen.get(shape);
      if (other) throw new Error(`route conflict: ${b.httpMethod} ${b.template.source} (${m.grpcPath}) vs ${other}`);
      seen.set(shape, `${b.template.source} (${m.grpcPath})`);
      routes.push({ method: m, binding: b });
    }
  }
  routes.sort((a, b) => specificity(b.binding.template) - specificity(a.binding.template));
  const byMethod = new Map<string, Route[]>();
  for (const r of routes) {
    const list = byMethod.get(r.binding.httpMethod) ?? [];
    list.push(r);
    byMethod.set(r.binding.httpMethod, list);
  }

  return {
    routes,
    match(httpMethod, path) {
      const split = splitRequestPath(path);
      if (!split) return { kind: "not_found" };
      const verb = httpMethod === "HEAD" ? "GET" : httpMethod;
      for (const r of byMethod.get(verb) ?? []) {
        const vars = matchTemplate(r.binding.template, split.segments, split.verb);
        if (vars) return { kind: "match", route: r, vars };
      }
      const allow = new Set<string>();
      for (const [m, list] of byMethod) {
        if (m === verb) continue;
        if (list.some((r) => matchTemplate(r.binding.template, split.segments, split.verb))) allow.add(m);
      }
      if (allow.size > 0) return { kind: "method_not_allowed", allow: [...allow].sort() };
      return { kind: "not_found" };
    },
  };
}
